#!/usr/bin/env python
"""Export a DiNAT + Mask2Former network to ONNX or torch.export (pt2, optionally an AOTInductor package).

    python tools/export_model.py --config-file configs/ade20k/semantic/dinat_l.yaml --format onnx \\
        --size 640 640 --output dinat_l_ade20k.onnx MODEL.WEIGHTS mask2former_dinat_large_ade20k_semantic.pth
    python tools/export_model.py --config-file configs/coco/panoptic/dinat_l.yaml --format pt2 --aoti \\
        --size 640 640 --output dinat_l_coco.pt2 MODEL.WEIGHTS mask2former_dinat_large_coco_panoptic.pth

The file takes the normalized, padded image `image` (1, 3, H, W) float32 and returns `pred_logits` and
`pred_masks`; one file serves one --size (pad images up to it). Run it with the demo:
`python demo/demo.py --config-file <same config> --onnx FILE --input ...` (or --pt2 FILE). Trailing KEY VALUE
pairs override the config as in train_net.py; without MODEL.WEIGHTS the weights are random. After writing,
the file is run once on a random image and compared with the PyTorch network (printed; --no-check skips it).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dinat_m2f  # noqa: E402,F401  (registers the model)
import dinat_m2f.data  # noqa: E402,F401  (registers the datasets the configs name)
from dinat_m2f.checkpoint import SafeDetectionCheckpointer  # noqa: E402
from dinat_m2f.config import load_project_config  # noqa: E402
from dinat_m2f.export import ONNX_OPSET, MaskFormerNetwork, export_onnx, export_pt2, load_exported  # noqa: E402

logger = logging.getLogger("dinat_m2f.export_model")
# Exported sizes are test sizes: the released configs test at up to 2048 pixels a side.
MAX_SIDE = 8192


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", required=True, choices=["onnx", "pt2"])
    parser.add_argument("--size", required=True, type=int, nargs=2, metavar=("H", "W"),
                        help="input size of the exported network (the padded image size)")
    parser.add_argument("--output", required=True, metavar="FILE", help="a .onnx or .pt2 file")
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help="onnx: the ONNX opset (default: %(default)s)")
    parser.add_argument("--aoti", action="store_true", help="pt2: an AOTInductor package (compiled; minutes)")
    parser.add_argument("--no-check", action="store_true", help="do not compare the file with PyTorch")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def check_arguments(args: argparse.Namespace, size_divisibility: int) -> None:
    """Every argument before any work (building and tracing the model takes minutes)."""
    problems = []
    suffix = ".onnx" if args.format == "onnx" else ".pt2"
    if Path(args.output).suffix != suffix:
        problems.append(f"--output {args.output}: a {args.format} file must end in {suffix}")
    folder = Path(args.output).parent
    if not folder.is_dir():
        problems.append(f"--output {args.output}: the folder {folder} does not exist")
    elif not os.access(folder, os.W_OK):
        problems.append(f"--output {args.output}: the folder {folder} is not writable")
    if Path(args.output).is_dir():
        problems.append(f"--output {args.output} is a folder: name the {suffix} file to write")
    if args.aoti and args.format != "pt2":
        problems.append("--aoti packages a pt2 export: use it with --format pt2")
    height, width = args.size
    if min(args.size) <= 0:
        problems.append(f"--size {height} {width}: both sides must be positive")
    elif max(args.size) > MAX_SIDE:
        problems.append(f"--size {height} {width}: sides over {MAX_SIDE} are refused (tracing the network at that "
                        "size needs far more memory than a machine has; memory grows with H x W)")
    elif size_divisibility > 0 and any(s % size_divisibility for s in args.size):
        problems.append(f"--size {height} {width}: MaskFormer pads images to multiples of "
                        f"MODEL.MASK_FORMER.SIZE_DIVISIBILITY = {size_divisibility}; give such a size")
    if problems:
        raise SystemExit("\n".join(problems))


def main(argv: list[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    cfg = load_project_config(args.config_file, args.opts)  # MODEL.DEVICE cuda falls back to cpu
    cfg.freeze()
    check_arguments(args, cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY)

    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        SafeDetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    else:
        logger.warning("No MODEL.WEIGHTS: exporting random weights")
    size = tuple(args.size)
    start = time.perf_counter()
    if args.format == "onnx":
        path = export_onnx(model, size, args.output, args.opset)
    else:
        path = export_pt2(model, size, args.output, aoti=args.aoti)
    written = sorted(Path(path).parent.glob(Path(path).name + "*"))  # the file, and its .data if any
    logger.info("Wrote %s (%.0f MB) in %.0f s", ", ".join(map(str, written)),
                sum(p.stat().st_size for p in written) / 2**20, time.perf_counter() - start)

    if not args.no_check:
        network, _ = load_exported(path)
        image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = MaskFormerNetwork(model)(image.to(model.device))
            got = network(image)
        errors = {name: (g.float().cpu() - e.float().cpu()).abs().max().item()
                  for name, g, e in zip(("pred_logits", "pred_masks"), got, expected)}
        print(f"max |exported - PyTorch| on a random {size[0]}x{size[1]} input: "
              + ", ".join(f"{name} {error:.2e}" for name, error in errors.items()))
    return 0


if __name__ == "__main__":
    setup_logger(name="fvcore")
    setup_logger(name="dinat_m2f")
    sys.exit(main())
