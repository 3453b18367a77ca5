#!/usr/bin/env python
"""Convert an ImageNet DiNAT checkpoint (as published) into weights for the D2DiNAT backbone.

    python tools/convert-pretrained-dinat-model-to-d2.py dinat_large_in22k_224.pth \
        dinat_large_in22k_224_k11.pkl --kernel-size 11

Input: a torch file (.pth/.pt, read with weights_only=True) or .safetensors holding the classifier's
state_dict, possibly wrapped in "model" or "state_dict" (keys patch_embed.*, levels.i.*, norm.*, head.*).
Output, by extension: .pkl (detectron2 model-zoo style, numpy arrays), .pth (torch.save) or .safetensors,
with every key under "backbone." so MODEL.WEIGHTS loads it by exact names (no matching heuristics).
The classifier head and its final norm are dropped; D2DiNAT's per-level output norms (norm0..norm3) are
not in ImageNet checkpoints and keep their initialization. --kernel-size resizes every relative positional
bias table (heads, 2k-1, 2k-1) bicubically, e.g. from the 7x7 ImageNet models to DiNAT-L's 11x11.
"""
import argparse
import logging
import pickle
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

logger = logging.getLogger("convert-pretrained-dinat-model-to-d2")

BACKBONE_PREFIX = "backbone."
OUTPUT_NORMS = [f"norm{i}" for i in range(4)]  # D2DiNAT's norms on res2..res5
_BACKBONE_KEY = re.compile(r"^(patch_embed|levels\.\d+)\.")
_CLASSIFIER_KEY = re.compile(r"^(head|norm)\.")  # classifier and the norm before its pooling


def load_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    """Read the classifier's state_dict without executing pickled code."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    # timm-style training checkpoints also store their argparse arguments: allow that plain record
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise SystemExit(f"Refusing to load {path}: it holds objects that are not tensors.\n{e}") from e
    for wrapper in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
            break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise SystemExit(f"{path}: expected a state_dict of tensors (possibly under 'model' or 'state_dict').")
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def resize_rpb(rpb: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Bicubically resize a (heads, 2k-1, 2k-1) relative positional bias table to 2*kernel_size-1."""
    size = 2 * kernel_size - 1
    resized = F.interpolate(rpb[None].float(), size=(size, size), mode="bicubic", align_corners=False)
    return resized[0].to(rpb.dtype)


def convert(
    state_dict: Dict[str, torch.Tensor], kernel_size: Optional[int] = None
) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[str]]]:
    """Map an ImageNet DiNAT state_dict to D2DiNAT's keys (under "backbone.").

    Returns the converted state_dict and a report: "dropped" (classifier keys), "resized" (rpb tables),
    "initialized_by_backbone" (output norms the backbone keeps from its own initialization).
    """
    unknown = [k for k in state_dict if not (_BACKBONE_KEY.match(k) or _CLASSIFIER_KEY.match(k))]
    if unknown:
        raise ValueError(f"Not a DiNAT classifier state_dict: unexpected keys {sorted(unknown)[:10]}")
    if not any(_BACKBONE_KEY.match(k) for k in state_dict):
        raise ValueError("Not a DiNAT state_dict: no patch_embed.* or levels.* keys")

    converted = {}
    report = {"dropped": [], "resized": [], "initialized_by_backbone": list(OUTPUT_NORMS)}
    for key, value in state_dict.items():
        if _CLASSIFIER_KEY.match(key):
            report["dropped"].append(key)
            continue
        if key.endswith(".rpb") and kernel_size is not None and value.shape[-1] != 2 * kernel_size - 1:
            old = value.shape[-1]
            value = resize_rpb(value, kernel_size)
            report["resized"].append(f"{key}: {old}x{old} -> {value.shape[-1]}x{value.shape[-1]}")
        converted[BACKBONE_PREFIX + key] = value
    return converted, report


def save(path: Path, state_dict: Dict[str, torch.Tensor], author: str) -> None:
    if path.suffix == ".pkl":
        # numpy has no bfloat16: floating tensors are stored as float32, the model's dtype
        model = {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in state_dict.items()}
        with open(path, "wb") as f:
            pickle.dump({"model": model, "__author__": author}, f)
    elif path.suffix in (".pth", ".pt"):
        torch.save({"model": state_dict, "__author__": author}, path)
    elif path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path), metadata={"__author__": author})
    else:
        raise SystemExit(f"{path}: unknown output format; use .pkl, .pth or .safetensors")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="ImageNet DiNAT checkpoint (.pth/.pt/.safetensors)")
    parser.add_argument("output", type=Path, help="detectron2 weights to write (.pkl/.pth/.safetensors)")
    parser.add_argument("--kernel-size", type=int, default=None,
                        help="resize relative positional biases to this kernel size (11 for DiNAT-L)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    state_dict = load_state_dict(args.input)
    try:
        converted, report = convert(state_dict, args.kernel_size)
    except ValueError as e:
        raise SystemExit(f"{args.input}: {e}") from e
    save(args.output, converted, author=f"converted from {args.input.name} by {Path(__file__).name}")

    logger.info("Wrote %d tensors to %s (keys under '%s')", len(converted), args.output, BACKBONE_PREFIX)
    logger.info("Dropped (ImageNet classifier): %s", ", ".join(report["dropped"]) or "nothing")
    if report["resized"]:
        logger.info("Resized %d relative positional bias tables bicubically, e.g. %s",
                    len(report["resized"]), report["resized"][0])
    if report["initialized_by_backbone"]:
        logger.info("Not in the checkpoint, initialized by D2DiNAT itself: %s",
                    ", ".join(report["initialized_by_backbone"]))


if __name__ == "__main__":
    main(sys.argv[1:])
