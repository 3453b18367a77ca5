"""Released ImageNet classifier checkpoints as weights of this project's backbones.

`ARCHS` names each checkpoint layout this converts (the command line's --arch):

arch      backbone            checkpoint layout (reference)              dropped
nat       D2DiNAT             plain state_dict (SHI-Labs NAT)            norm.*, head.*
dinat     D2DiNAT             plain state_dict (SHI-Labs DiNAT)          norm.*, head.*
swin      D2SwinTransformer   {"model": sd} (microsoft/Swin)             norm.*, head.*, the attn_mask buffers
shiftvit  D2ShiftViT          {"model": sd} (microsoft/SPACH)            norm.*, head.*
coatnet   D2CoAtNet           timm's model.safetensors (coatnet_*_rw)    norm.*, head.*, relative_position_index,
                                                                         rel_coords_log (derived from the grid)

`load_state_dict` reads a torch file (.pth/.pt/.bin, weights only) or .safetensors holding the classifier's
state_dict, bare or under "model" or "state_dict", through the project's safe readers. `convert` keeps every
backbone key under "backbone." (so detectron2's checkpointer maps each key to itself), drops the classifier
head, the final norm before its pooling and buffers the backbone does not use, and refuses a checkpoint of
another architecture by naming its keys. The backbones' per-level output norms (norm0..norm3) are not in
ImageNet checkpoints and keep their initialization. Relative-position tables are resized bicubically per head
(align_corners=False), as the references' own fine-tuning code did: `kernel_size` (nat, dinat) every `rpb`
(heads, 2k-1, 2k-1), e.g. from the 7x7 ImageNet models to 11; `window_size` (swin) every
`relative_position_bias_table` ((2M-1)^2, heads) on its (2M-1) x (2M-1) grid, with `relative_position_index`
rebuilt for the new window. CoAtNet's tables stay as trained: D2CoAtNet resizes them to each feature map's grid
(MODEL.COATNET.PRETRAIN_IMG_SIZE is the size the checkpoint was trained at, 224 for the *_224 models).
`save` writes, by extension, .pkl (detectron2 model-zoo style: {"model": numpy arrays, "__author__",
"matching_heuristics": True}), .pth (the same dict, tensors) or .safetensors (metadata "__author__",
"matching_heuristics"), atomically.
"""
from __future__ import annotations

import argparse
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..modeling.backbone.swin import relative_position_index
from .files import atomic_write
from .readers import read_safetensors_file, read_torch_file

__all__ = ["ARCHS", "Arch", "BACKBONE_PREFIX", "OUTPUT_FORMATS", "convert", "load_state_dict", "save"]

BACKBONE_PREFIX = "backbone."
OUTPUT_NORMS = [f"norm{i}" for i in range(4)]  # the D2 backbones' norms on res2..res5
OUTPUT_FORMATS = (".pkl", ".pth", ".pt", ".safetensors")

StateDict = Dict[str, torch.Tensor]


def load_state_dict(path: str | Path) -> StateDict:
    """The classifier's state_dict in `path`, read without running pickled code (CheckpointFileError names the
    file otherwise); a DataParallel "module." prefix is removed."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors_file(str(path))["model"]
    # timm-style training checkpoints also store their argparse arguments: allow that plain record
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = read_torch_file(str(path))
    for wrapper in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
            break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path}: expected a state_dict of tensors (possibly under 'model' or 'state_dict')")
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def resize_grid(grid: torch.Tensor, side: int) -> torch.Tensor:
    """Bicubically resize per-head square tables (heads, S, S) to (heads, side, side)."""
    resized = F.interpolate(grid[None].float(), size=(side, side), mode="bicubic", align_corners=False)
    return resized[0].to(grid.dtype)


def resize_rpb(state_dict: StateDict, kernel_size: int) -> List[str]:
    """NAT/DiNAT: every `*.rpb` (heads, 2k-1, 2k-1) to 2 * kernel_size - 1, in place."""
    side, notes = 2 * kernel_size - 1, []
    for key, value in state_dict.items():
        if key.endswith(".rpb") and value.shape[-1] != side:
            state_dict[key] = resize_grid(value, side)
            notes.append(f"{key}: {value.shape[-1]}x{value.shape[-1]} -> {side}x{side}")
    return notes


def resize_swin_tables(state_dict: StateDict, window: int) -> List[str]:
    """Swin: every `relative_position_bias_table` ((2M-1)^2, heads) to window `window`, its index rebuilt."""
    side, notes = 2 * window - 1, []
    for key in [k for k in state_dict if k.endswith("relative_position_bias_table")]:
        table = state_dict[key]
        old_side = round(table.shape[0] ** 0.5)
        if old_side ** 2 != table.shape[0]:
            raise ValueError(f"{key}: {tuple(table.shape)} is not a ((2M-1)^2, heads) table")
        if old_side == side:
            continue
        heads = table.shape[1]
        grid = table.permute(1, 0).reshape(heads, old_side, old_side)
        state_dict[key] = resize_grid(grid, side).reshape(heads, side * side).permute(1, 0).contiguous()
        state_dict[key.replace("relative_position_bias_table", "relative_position_index")] = \
            relative_position_index(window)
        notes.append(f"{key}: window {(old_side + 1) // 2} -> {window}, relative_position_index rebuilt")
    return notes


@dataclass(frozen=True)
class Arch:
    backbone: str  # the registered D2 backbone the output is for
    kept: re.Pattern  # backbone keys
    dropped: re.Pattern  # classifier keys and buffers the backbone does not use (or derives itself)
    size_option: Optional[str] = None  # "kernel_size" / "window_size": the table resize's target
    resize: Optional[Callable[[StateDict, int], List[str]]] = None


# Every key of each backbone, spelled out, so that a checkpoint of another architecture is refused by name.
_AFFINE = r"\.(weight|bias)"
_NORM = r"\.(weight|bias|running_mean|running_var|num_batches_tracked)"  # LayerNorm/GroupNorm or BatchNorm
_CLASSIFIER = r"^(head|norm)\."  # the classifier and the norm before its pooling (not norm0..norm3)
_NAT = Arch(
    "D2DiNAT",
    re.compile(rf"^patch_embed\.(proj\.[01]|norm){_AFFINE}$|^levels\.\d+\.("
               rf"blocks\.\d+\.((norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1|mlp\.fc2){_AFFINE}|attn\.rpb|gamma[12])"
               rf"|downsample\.(reduction\.weight|norm{_AFFINE}))$"),
    re.compile(_CLASSIFIER), "kernel_size", resize_rpb)
ARCHS: Dict[str, Arch] = {
    "nat": _NAT,
    "dinat": _NAT,
    "swin": Arch(
        "D2SwinTransformer",
        re.compile(rf"^patch_embed\.(proj|norm){_AFFINE}$|^layers\.\d+\.("
                   rf"blocks\.\d+\.((norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1|mlp\.fc2){_AFFINE}"
                   rf"|attn\.relative_position_(bias_table|index))|downsample\.(reduction\.weight|norm{_AFFINE}))$"),
        re.compile(_CLASSIFIER + r"|\.attn_mask$"), "window_size", resize_swin_tables),
    "shiftvit": Arch(
        "D2ShiftViT",
        re.compile(rf"^patch_embed\.(proj{_AFFINE}|norm{_NORM})$|^layers\.\d+\.("
                   rf"blocks\.\d+\.(norm2{_NORM}|mlp\.fc[12]{_AFFINE})|downsample\.(reduction\.weight|norm{_NORM}))$"),
        re.compile(_CLASSIFIER)),
    # timm's MaxxVit names (stem.*, stages.i.*), loaded by D2CoAtNet under the same names
    "coatnet": Arch(
        "D2CoAtNet",
        re.compile(r"^(stem|stages\.\d+)\."),
        re.compile(_CLASSIFIER + r"|\.(relative_position_index|rel_coords_log)$")),
}


def convert(state_dict: StateDict, arch: str = "dinat", kernel_size: Optional[int] = None,
            window_size: Optional[int] = None) -> Tuple[StateDict, Dict[str, List[str]]]:
    """Map an ImageNet classifier's state_dict to the D2 backbone's keys (under "backbone.").

    Returns the converted state_dict and a report: "dropped" (classifier keys, unused or derived buffers),
    "resized" (position tables), "initialized_by_backbone" (output norms the backbone keeps from its init).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown --arch {arch!r}; known: {sorted(ARCHS)}")
    spec = ARCHS[arch]
    sizes = {"kernel_size": kernel_size, "window_size": window_size}
    for option, value in sizes.items():
        if value is not None and option != spec.size_option:
            raise ValueError(f"--{option.replace('_', '-')} does not apply to --arch {arch}")
    unknown = [k for k in state_dict if not (spec.kept.match(k) or spec.dropped.search(k))]
    if unknown:
        raise ValueError(f"Not a {arch} classifier state_dict: unexpected keys {sorted(unknown)[:10]}")
    if not any(spec.kept.match(k) and not spec.dropped.search(k) for k in state_dict):
        raise ValueError(f"Not a {arch} state_dict: none of its keys belongs to {spec.backbone}")

    report = {"dropped": [k for k in state_dict if spec.dropped.search(k)], "resized": [],
              "initialized_by_backbone": list(OUTPUT_NORMS)}
    kept = {k: v for k, v in state_dict.items() if not spec.dropped.search(k)}
    size = sizes[spec.size_option] if spec.size_option else None
    if size is not None:
        report["resized"] = spec.resize(kept, size)
    return {BACKBONE_PREFIX + k: v for k, v in kept.items()}, report


def save(path: str | Path, state_dict: StateDict, author: str) -> None:
    """Write converted weights atomically (a temporary file renamed), in the format of the extension."""
    path = Path(path)
    if path.suffix == ".pkl":
        # numpy has no bfloat16: floating tensors are stored as float32, the model's dtype
        model = {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in state_dict.items()}
        atomic_write(str(path), lambda f: pickle.dump(
            {"model": model, "__author__": author, "matching_heuristics": True}, f))
    elif path.suffix in (".pth", ".pt"):
        atomic_write(str(path), lambda f: torch.save(
            {"model": state_dict, "__author__": author, "matching_heuristics": True}, f))
    elif path.suffix == ".safetensors":
        from safetensors.torch import save

        data = save({k: v.contiguous() for k, v in state_dict.items()},
                    metadata={"__author__": author, "matching_heuristics": "True"})
        atomic_write(str(path), lambda f: f.write(data))
    else:
        raise ValueError(f"{path}: unknown output format; use one of {', '.join(OUTPUT_FORMATS)}")
