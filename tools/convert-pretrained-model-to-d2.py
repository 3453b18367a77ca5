#!/usr/bin/env python
"""Convert an ImageNet classifier checkpoint (as published) into weights for this project's backbones.

    python tools/convert-pretrained-model-to-d2.py --arch dinat dinat_large_in22k_224.pth \
        dinat_large_in22k_11x11.pkl --kernel-size 11
    python tools/convert-pretrained-model-to-d2.py --arch nat nat_small_in1k_224.pth nat_small_in1k.pkl
    python tools/convert-pretrained-model-to-d2.py --arch swin swin_tiny_patch4_window7_224.pth swin_tiny.pkl
    python tools/convert-pretrained-model-to-d2.py --arch swin swin_base_patch4_window7_224_22k.pth \
        swin_base_22k_window12.pkl --window-size 12
    python tools/convert-pretrained-model-to-d2.py --arch shiftvit shiftvit_r2_tiny.pth shiftvit_r2_tiny.pkl

--arch   backbone            checkpoint layout (reference)          dropped
nat      D2DiNAT             plain state_dict (SHI-Labs NAT)        norm.*, head.*
dinat    D2DiNAT             plain state_dict (SHI-Labs DiNAT)      norm.*, head.*
swin     D2SwinTransformer   {"model": sd} (microsoft/Swin)         norm.*, head.*, the attn_mask buffers
shiftvit D2ShiftViT          {"model": sd} (microsoft/SPACH)        norm.*, head.*

Input: a torch file (.pth/.pt, read with weights_only=True) or .safetensors holding the classifier's
state_dict, bare or under "model" or "state_dict". Output, by extension: .pkl (detectron2 model-zoo style:
{"model": numpy arrays, "__author__", "matching_heuristics": True}), .pth (the same dict, tensors) or
.safetensors (metadata "__author__", "matching_heuristics"), with every key under "backbone.", so the
heuristic matching of detectron2's checkpointer maps each key to itself.
The classifier head, the final norm before its pooling and buffers the backbone does not use are dropped;
the backbones' per-level output norms (norm0..norm3) are not in ImageNet checkpoints and keep their
initialization. Relative-position tables are resized bicubically per head (align_corners=False), as the
references' own fine-tuning code did:
--kernel-size (nat, dinat): every `rpb` (heads, 2k-1, 2k-1), e.g. from the 7x7 ImageNet models to 11;
--window-size (swin): every `relative_position_bias_table` ((2M-1)^2, heads) on its (2M-1) x (2M-1) grid,
e.g. 7 -> 12, and `relative_position_index` rebuilt for the new window.
"""
import argparse
import logging
import pickle
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dinat_m2f.checkpoint import CheckpointFileError, atomic_write, read_safetensors_file, read_torch_file  # noqa: E402
from dinat_m2f.modeling.backbone.swin import relative_position_index  # noqa: E402

logger = logging.getLogger("convert-pretrained-model-to-d2")

BACKBONE_PREFIX = "backbone."
OUTPUT_NORMS = [f"norm{i}" for i in range(4)]  # the D2 backbones' norms on res2..res5


def load_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """Read the classifier's state_dict through the project's safe readers (no pickled code runs)."""
    if path.suffix == ".safetensors":
        return read_safetensors_file(str(path))["model"]
    # timm-style training checkpoints also store their argparse arguments: allow that plain record
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            checkpoint = read_torch_file(str(path))
        except CheckpointFileError as e:
            raise SystemExit(str(e)) from e
    for wrapper in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
            break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise SystemExit(f"{path}: expected a state_dict of tensors (possibly under 'model' or 'state_dict').")
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def resize_grid(grid: torch.Tensor, side: int) -> torch.Tensor:
    """Bicubically resize per-head square tables (heads, S, S) to (heads, side, side)."""
    resized = F.interpolate(grid[None].float(), size=(side, side), mode="bicubic", align_corners=False)
    return resized[0].to(grid.dtype)


def resize_rpb(state_dict: Dict[str, torch.Tensor], kernel_size: int) -> List[str]:
    """NAT/DiNAT: every `*.rpb` (heads, 2k-1, 2k-1) to 2 * kernel_size - 1, in place."""
    side, notes = 2 * kernel_size - 1, []
    for key, value in state_dict.items():
        if key.endswith(".rpb") and value.shape[-1] != side:
            state_dict[key] = resize_grid(value, side)
            notes.append(f"{key}: {value.shape[-1]}x{value.shape[-1]} -> {side}x{side}")
    return notes


def resize_swin_tables(state_dict: Dict[str, torch.Tensor], window: int) -> List[str]:
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
    dropped: re.Pattern  # classifier keys and buffers the backbone does not use
    size_option: Optional[str] = None  # "kernel_size" / "window_size": the table resize's target
    resize: Optional[Callable[[Dict[str, torch.Tensor], int], List[str]]] = None


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
}


def convert(
    state_dict: Dict[str, torch.Tensor], arch: str = "dinat", kernel_size: Optional[int] = None,
    window_size: Optional[int] = None,
) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[str]]]:
    """Map an ImageNet classifier's state_dict to the D2 backbone's keys (under "backbone.").

    Returns the converted state_dict and a report: "dropped" (classifier keys, unused buffers), "resized"
    (position tables), "initialized_by_backbone" (output norms the backbone keeps from its own init).
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
    if not any(spec.kept.match(k) for k in state_dict):
        raise ValueError(f"Not a {arch} state_dict: none of its keys belongs to {spec.backbone}")

    report = {"dropped": [k for k in state_dict if spec.dropped.search(k)], "resized": [],
              "initialized_by_backbone": list(OUTPUT_NORMS)}
    kept = {k: v for k, v in state_dict.items() if not spec.dropped.search(k)}
    size = sizes[spec.size_option] if spec.size_option else None
    if size is not None:
        report["resized"] = spec.resize(kept, size)
    return {BACKBONE_PREFIX + k: v for k, v in kept.items()}, report


def save(path: Path, state_dict: Dict[str, torch.Tensor], author: str) -> None:
    """Write the converted file atomically (a temporary file renamed), in the format of its extension."""
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
        raise SystemExit(f"{path}: unknown output format; use .pkl, .pth or .safetensors")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="ImageNet checkpoint (.pth/.pt/.safetensors)")
    parser.add_argument("output", type=Path, help="detectron2 weights to write (.pkl/.pth/.safetensors)")
    parser.add_argument("--arch", required=True, choices=sorted(ARCHS), help="the checkpoint's architecture")
    parser.add_argument("--kernel-size", type=int, default=None,
                        help="nat/dinat: resize relative positional biases to this kernel size (11 for DiNAT-L)")
    parser.add_argument("--window-size", type=int, default=None,
                        help="swin: resize relative position bias tables to this window (e.g. 12)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    state_dict = load_state_dict(args.input)
    try:
        converted, report = convert(state_dict, args.arch, args.kernel_size, args.window_size)
    except ValueError as e:
        raise SystemExit(f"{args.input}: {e}") from e
    save(args.output, converted, author=f"converted from {args.input.name} by {Path(__file__).name}")

    backbone = ARCHS[args.arch].backbone
    logger.info("Wrote %d tensors for %s to %s (keys under '%s')", len(converted), backbone, args.output,
                BACKBONE_PREFIX)
    logger.info("Dropped (classifier head, final norm, unused buffers): %s", ", ".join(report["dropped"]) or "nothing")
    if report["resized"]:
        logger.info("Resized %d relative position tables bicubically, e.g. %s", len(report["resized"]),
                    report["resized"][0])
    logger.info("Not in the checkpoint, initialized by %s itself: %s", backbone,
                ", ".join(report["initialized_by_backbone"]))


if __name__ == "__main__":
    main(sys.argv[1:])
