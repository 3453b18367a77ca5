#!/usr/bin/env python
"""Run a DiNAT + Mask2Former model on images or a video and write visualizations and results.

    python demo/demo.py --config-file configs/coco/panoptic/dinat_l.yaml \
        --input a.jpg b.png photos/ 'shots/*.jpg' --output out/ \
        --opts MODEL.WEIGHTS mask2former_dinat_large_coco_panoptic.pth

For each image, out/ receives the visualization (same file name as the input) and the machine-readable
results of every task the model has on (MODEL.MASK_FORMER.TEST.*_ON): <name>_panoptic.png + .json (COCO
panoptic format), <name>_instances.json (COCO results, RLE masks), <name>_sem_seg.png (label ids).
Results are written at the input's size. An image larger than the model's test size (INPUT.MIN_SIZE_TEST /
MAX_SIZE_TEST, e.g. a 6000x6000 photo) is post-processed at the resized size the model saw, so that memory is
bounded by the test size: its visualization (and a video's frames) are drawn on that resized image, and only
the final maps are upsampled (nearest neighbour) to the input's size for the result files.
An --output with an image extension names the single visualization file (results are written beside it);
without --output the visualizations are shown in a window. Unreadable inputs, and folders or patterns
without images, are reported and skipped; the exit status is 1 if any input was skipped (an error if no image
is left). A video output that cannot be written is an error; a video that ends before the frame count its
header announces is reported.

--onnx model.onnx (run by ONNX Runtime) or --pt2 model.pt2 (torch.export or AOTInductor) runs a network exported
by tools/export_model.py from the same config instead of the PyTorch model, with the same post-processing.
"""
import argparse
import glob
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import List, Optional, Tuple

import cv2
import numpy as np
import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # demo/ modules, also when imported elsewhere
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the project, also when it is not installed
import dinat_m2f  # noqa: E402,F401  (before detectron2: registers the model; dinat_m2f/startup.py says why first)
import dinat_m2f.data  # noqa: E402,F401  (registers the datasets)
from detectron2.config import CfgNode  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from detectron2.utils.video_visualizer import VideoVisualizer  # noqa: E402
from detectron2.utils.visualizer import ColorMode  # noqa: E402
from results import CategoryIds, write_results  # noqa: E402
from predictor import Predictor, visualize, visualize_frame  # noqa: E402

from dinat_m2f.config import load_project_config  # noqa: E402
from dinat_m2f.data.image_files import read_image_file  # noqa: E402
from dinat_m2f.engine import reuse_freed_memory  # noqa: E402

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
WINDOW_NAME = "dinat-m2f"
logger = logging.getLogger("dinat_m2f.demo")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to the model's config")
    parser.add_argument("--input", nargs="+", default=[],
                        help="images, folders of images or quoted glob patterns ('photos/*.jpg')")
    parser.add_argument("--video-input", help="a video file to run on, frame by frame")
    parser.add_argument("--output", help="folder for results, or one image file for a single input")
    exported = parser.add_mutually_exclusive_group()
    exported.add_argument("--onnx", metavar="FILE", help="run this exported ONNX network (ONNX Runtime, CPU)")
    exported.add_argument("--pt2", metavar="FILE", help="run this exported torch.export / AOTInductor network")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="minimum score of the instances drawn and written (instance results)")
    parser.add_argument("--dataset", action="append", default=[], metavar="FILE",
                        help="the dataset description file the model was trained on (its class names)")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth")
    return parser


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    cfg = load_project_config(args.config_file, args.opts, dataset_files=args.dataset)
    cfg.freeze()
    return cfg


def expand_inputs(patterns: List[str]) -> Tuple[List[Path], List[str]]:
    """Files as given (even missing ones, so they get reported), folders' images sorted, glob matches.
    Also returns the folders and patterns that gave no file (reported; they make the exit status 1)."""
    paths: List[Path] = []
    empty: List[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(p for p in Path(pattern).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif glob.has_magic(pattern):
            found = [Path(m) for m in sorted(glob.glob(pattern)) if not os.path.isdir(m)]
        else:
            found = [Path(pattern)]
        if not found:
            logger.warning("No image in %s", pattern)
            empty.append(pattern)
        paths += found
    return paths, empty


def output_names(paths: List[Path], output: str) -> List[Path]:
    """Visualization path for every input. A folder output (an existing folder, or a name without an
    image extension) gets one file per input named like it (made unique if names repeat)."""
    if Path(output).suffix.lower() in IMAGE_EXTENSIONS and not os.path.isdir(output):
        if len(paths) != 1:
            raise SystemExit(f"--output {output} is a single file, but there are {len(paths)} inputs: "
                             "give a folder instead")
        os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
        return [Path(output)]
    os.makedirs(output, exist_ok=True)
    seen: Counter = Counter()
    names = []
    for path in paths:
        seen[path.name] += 1
        suffix = "" if seen[path.name] == 1 else f"_{seen[path.name] - 1}"
        names.append(Path(output) / f"{path.stem}{suffix}{path.suffix}")
    return names


def run_on_images(predictor: Predictor, paths: List[Path], output: Optional[str],
                  confidence_threshold: float) -> Tuple[int, int]:
    """Returns (number of images done, number skipped)."""
    destinations = output_names(paths, output) if output else [None] * len(paths)
    categories = CategoryIds(predictor.metadata)
    done = skipped = 0
    for path, destination in tqdm.tqdm(list(zip(paths, destinations)), disable=len(paths) < 2, unit="img"):
        try:
            image = read_image_file(str(path), "RGB", apply_exif=True)  # 8-bit RGB of any image, upright
        except Exception as e:  # PIL raises several types for missing, truncated or non-image files
            logger.warning("Skipping %s: cannot read it as an image (%s)", path, e)
            skipped += 1
            continue
        prediction = predictor(image)
        vis = visualize(prediction, predictor.metadata, confidence_threshold)
        if destination is None:
            show(vis.get_image(), wait_ms=0)
        else:
            vis.save(str(destination))
            prefix = destination.with_suffix("")
            write_results(prediction.outputs, prefix, path.stem, categories, confidence_threshold,
                          size=prediction.original_size)
        done += 1
    return done, skipped


def run_on_video(predictor: Predictor, video: str, output: Optional[str], confidence_threshold: float) -> None:
    capture = cv2.VideoCapture(video)
    if not capture.isOpened():
        raise SystemExit(f"Cannot open the video {video}")
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    height, width = predictor.output_size(height, width)  # frames are drawn at the outputs' size
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    writer = None
    if output:
        destination = output if Path(output).suffix else os.path.join(output, Path(video).stem + ".mp4")
        os.makedirs(os.path.dirname(destination) or ".", exist_ok=True)
        writer = cv2.VideoWriter(destination, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():  # OpenCV does not raise: a folder, an unknown extension, no permission
            raise SystemExit(f"Cannot write the video {destination}: OpenCV could not open it for writing "
                             "(an .mp4 or .avi file in a writable folder is needed)")
    video_visualizer = VideoVisualizer(predictor.metadata, ColorMode.IMAGE)
    num_frames = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0) or None  # from the header; may be absent
    frames_read = 0
    with tqdm.tqdm(total=num_frames, unit="frame") as progress:
        while True:
            ok, frame_bgr = capture.read()
            if not ok:
                break
            frames_read += 1
            frame_rgb = np.ascontiguousarray(frame_bgr[:, :, ::-1])
            vis = visualize_frame(video_visualizer, predictor(frame_rgb), confidence_threshold)
            vis_bgr = vis.get_image()[:, :, ::-1]
            if writer is not None:
                writer.write(np.ascontiguousarray(vis_bgr))
            else:
                show(vis.get_image(), wait_ms=1)
            progress.update()
    capture.release()
    if frames_read == 0 or (num_frames and frames_read < num_frames):
        logger.warning("%s: read %d frames%s: the file is truncated or damaged", video, frames_read,
                       f" of the {num_frames} its header announces" if num_frames else "")
    if writer is not None:
        writer.release()
        logger.info("Wrote %s (%d frames)", destination, frames_read)


def show(image_rgb: np.ndarray, wait_ms: int) -> None:
    """Shows the image in a window; waits `wait_ms` for a key (0: until one is pressed), Esc quits."""
    try:
        cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
        cv2.imshow(WINDOW_NAME, image_rgb[:, :, ::-1])
    except cv2.error as e:
        raise SystemExit(f"Cannot open a window to show results ({e.err}); pass --output instead") from e
    if cv2.waitKey(wait_ms) == 27:
        raise SystemExit(0)


def main(argv: Optional[List[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if not args.input and not args.video_input:
        raise SystemExit("Nothing to do: give --input images or --video-input")
    paths, empty = expand_inputs(args.input)
    if not paths and not args.video_input:
        raise SystemExit(f"No image in {' '.join(args.input)}")
    reuse_freed_memory()
    predictor = Predictor(setup_cfg(args), exported=args.onnx or args.pt2)

    skipped = len(empty)
    if paths:
        done, unreadable = run_on_images(predictor, paths, args.output, args.confidence_threshold)
        logger.info("Processed %d images%s", done, f", skipped {unreadable} unreadable" if unreadable else "")
        skipped += unreadable
    if args.video_input:
        run_on_video(predictor, args.video_input, args.output, args.confidence_threshold)
    return 1 if skipped else 0


if __name__ == "__main__":
    setup_logger(name="fvcore")  # checkpoint loading messages
    setup_logger(name="dinat_m2f")
    sys.exit(main())
