#!/usr/bin/env python
"""Convert an ImageNet classifier checkpoint (as published) into weights for this project's backbones.

    python tools/convert-pretrained-model-to-d2.py --arch dinat dinat_large_in22k_224.pth \
        dinat_large_in22k_11x11.pkl --kernel-size 11
    python tools/convert-pretrained-model-to-d2.py --arch nat nat_small_in1k_224.pth nat_small_in1k.pkl
    python tools/convert-pretrained-model-to-d2.py --arch swin swin_tiny_patch4_window7_224.pth swin_tiny.pkl
    python tools/convert-pretrained-model-to-d2.py --arch swin swin_base_patch4_window7_224_22k.pth \
        swin_base_22k_window12.pkl --window-size 12
    python tools/convert-pretrained-model-to-d2.py --arch shiftvit shiftvit_r2_tiny.pth shiftvit_r2_tiny.pkl
    python tools/convert-pretrained-model-to-d2.py --arch coatnet model.safetensors coatnet_0_rw_224.sw_in1k.pkl

The layouts (--arch), what is kept, dropped and resized, and the output formats (.pkl, .pth, .safetensors by
the output's extension) are those of dinat_m2f.checkpoint.convert (its docstring has the table).
"""
import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dinat_m2f.checkpoint import CheckpointFileError  # noqa: E402
from dinat_m2f.checkpoint.convert import ARCHS, BACKBONE_PREFIX, OUTPUT_FORMATS, convert, load_state_dict, save  # noqa: E402

logger = logging.getLogger("convert-pretrained-model-to-d2")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="ImageNet checkpoint (.pth/.pt/.bin/.safetensors)")
    parser.add_argument("output", type=Path, help=f"detectron2 weights to write ({'/'.join(OUTPUT_FORMATS)})")
    parser.add_argument("--arch", required=True, choices=sorted(ARCHS), help="the checkpoint's architecture")
    parser.add_argument("--kernel-size", type=int, default=None,
                        help="nat/dinat: resize relative positional biases to this kernel size (11 for DiNAT-L)")
    parser.add_argument("--window-size", type=int, default=None,
                        help="swin: resize relative position bias tables to this window (e.g. 12)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.output.suffix not in OUTPUT_FORMATS:
        raise SystemExit(f"{args.output}: unknown output format; use one of {', '.join(OUTPUT_FORMATS)}")

    try:
        state_dict = load_state_dict(args.input)
    except (CheckpointFileError, ValueError) as e:
        raise SystemExit(str(e)) from e
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
