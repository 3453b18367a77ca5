#!/usr/bin/env python
"""Write a tiny dataset and its description file, to try training on your own data (docs/CUSTOM_DATASETS.md).

    python datasets/make_example_dataset.py --format coco_panoptic --output my_data
    python train_net.py --config-file configs/synthetic/panoptic/dinat_mini.yaml --dataset my_data/shapes.yaml

--format coco_panoptic (COCO panoptic JSON + PNGs), coco_instances (COCO instance JSON, RLE) or semantic_masks
(label PNGs). The images are the synthetic dataset's shapes (circle 42, square 7, triangle 1001, sky 3, grass 500:
category ids need not be contiguous).
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, also when it is not installed
from dinat_m2f.data.datasets.description import FORMATS  # noqa: E402
from dinat_m2f.data.datasets.example_dataset import write_example_dataset  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=list(FORMATS))
    parser.add_argument("--output", required=True, help="folder to write (created)")
    parser.add_argument("--name", default="shapes", help="dataset name: registers <name>_train, <name>_val")
    parser.add_argument("--train", type=int, default=40, help="training images")
    parser.add_argument("--val", type=int, default=10, help="validation images")
    parser.add_argument("--min-size", type=int, default=128)
    parser.add_argument("--max-size", type=int, default=256)
    args = parser.parse_args(argv)
    if os.path.exists(args.output) and os.listdir(args.output):
        parser.error(f"--output {args.output} exists and is not empty")
    description = write_example_dataset(args.output, args.format, args.name, args.train, args.val,
                                        args.min_size, args.max_size)  # fmt: skip
    print(f"Wrote {args.train} + {args.val} images in {args.format} format and their description {description}")


if __name__ == "__main__":
    main()
