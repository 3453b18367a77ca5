#!/usr/bin/env python
"""Convert a timm CoAtNet checkpoint (as published, e.g. coatnet_0_rw_224.sw_in1k's model.safetensors) into
weights for the D2CoAtNet backbone.

    python tools/convert-timm-coatnet-to-d2.py model.safetensors coatnet_0_rw_224.sw_in1k.pkl

Input: .safetensors or a torch file (.pth/.bin, read with weights_only=True) holding the classifier's
state_dict, possibly wrapped in "model" or "state_dict" (keys stem.*, stages.i.*, norm.*, head.*).
Output, by extension: .pkl, .pth or .safetensors, every key under "backbone." so MODEL.WEIGHTS loads it by
exact names. The classifier head and the final norm are dropped; D2CoAtNet's output norms (norm0..norm3)
are not in ImageNet checkpoints and keep their initialization. The relative-position tables stay as trained
(the backbone resizes them to each feature map's grid); set MODEL.COATNET.PRETRAIN_IMG_SIZE to the size the
checkpoint was trained at (224 for the *_224 models).
"""
import argparse
import importlib.util
import logging
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

logger = logging.getLogger("convert-timm-coatnet-to-d2")

# Reading and writing checkpoints is the backbone converter's (same formats, same safe readers).
_spec = importlib.util.spec_from_file_location(
    "convert_pretrained_model_to_d2", Path(__file__).with_name("convert-pretrained-model-to-d2.py"))
_backbone_tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_backbone_tool)
load_state_dict, save = _backbone_tool.load_state_dict, _backbone_tool.save

BACKBONE_PREFIX = "backbone."
OUTPUT_NORMS = [f"norm{i}" for i in range(4)]
_BACKBONE_KEY = re.compile(r"^(stem|stages\.\d+)\.")
_CLASSIFIER_KEY = re.compile(r"^(head|norm)\.")  # classifier, and the norm before its pooling
_DERIVED_KEY = re.compile(r"\.(relative_position_index|rel_coords_log)$")  # recomputed per grid


def convert(state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[str]]]:
    """Map a timm CoAtNet classifier state_dict to D2CoAtNet's keys (under "backbone.").

    Returns the converted state_dict and a report: "dropped" (classifier keys and buffers the backbone
    derives from the grid) and "initialized_by_backbone" (output norms the checkpoint does not have)."""
    unknown = [k for k in state_dict if not (_BACKBONE_KEY.match(k) or _CLASSIFIER_KEY.match(k))]
    if unknown:
        raise ValueError(f"Not a timm CoAtNet state_dict: unexpected keys {sorted(unknown)[:10]}")
    if not any(k.startswith("stages.") for k in state_dict):
        raise ValueError("Not a timm CoAtNet state_dict: no stages.* keys")
    converted, report = {}, {"dropped": [], "initialized_by_backbone": list(OUTPUT_NORMS)}
    for key, value in state_dict.items():
        if _CLASSIFIER_KEY.match(key) or _DERIVED_KEY.search(key):
            report["dropped"].append(key)
        else:
            converted[BACKBONE_PREFIX + key] = value
    return converted, report


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="timm CoAtNet checkpoint (.safetensors/.pth/.bin)")
    parser.add_argument("output", type=Path, help="detectron2 weights to write (.pkl/.pth/.safetensors)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    state_dict = load_state_dict(args.input)
    try:
        converted, report = convert(state_dict)
    except ValueError as e:
        raise SystemExit(f"{args.input}: {e}") from e
    save(args.output, converted, author=f"converted from {args.input.name} by {Path(__file__).name}")
    logger.info("Wrote %d tensors to %s (keys under '%s')", len(converted), args.output, BACKBONE_PREFIX)
    logger.info("Dropped (ImageNet classifier): %s", ", ".join(report["dropped"]) or "nothing")
    logger.info("Not in the checkpoint, initialized by D2CoAtNet itself: %s",
                ", ".join(report["initialized_by_backbone"]))


if __name__ == "__main__":
    main(sys.argv[1:])
