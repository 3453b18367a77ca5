#!/usr/bin/env python
"""Run a DiNAT + Mask2Former model on images or a video and write visualizations and results.

    python demo/demo.py --config-file configs/coco/panoptic/dinat_l.yaml \
        --input a.jpg b.png photos/ 'shots/*.jpg' --output out/ \
        --opts MODEL.WEIGHTS mask2former_dinat_large_coco_panoptic.pth

For each image, out/ receives the visualization (same file name as the input; _1, _2, ... added where two
inputs' files would get the same name) and the machine-readable results of every task the model has on
(MODEL.MASK_FORMER.TEST.*_ON): <name>_panoptic.png + .json (COCO panoptic format), <name>_instances.json
(COCO results, RLE masks), <name>_sem_seg.png (label ids).
Results are written at the input's size. An image larger than the model's test size (INPUT.MIN_SIZE_TEST /
MAX_SIZE_TEST, e.g. a 6000x6000 photo) is post-processed at the resized size the model saw, so that memory is
bounded by the test size: its visualization (and a video's frames) are drawn on that resized image, and only
the final maps are upsampled (nearest neighbour) to the input's size for the result files.
An --output with an image extension names the single visualization file (results are written beside it);
without --output the visualizations are shown in a window. An --output that would overwrite an input is
refused. Unreadable inputs, inputs that are not regular files (a FIFO, a device), images larger than an
exported network's size, and folders or patterns without images, are reported and skipped; the exit status
is 1 if any input was skipped (an error if no image is left). A video output that cannot be written is an
error; a video that ends before the frame count its header announces is reported.

--onnx model.onnx (run by ONNX Runtime) or --pt2 model.pt2 (torch.export or AOTInductor) runs a network exported
by tools/export_model.py from the same config instead of the PyTorch model, with the same post-processing.
"""
import argparse
import glob
import itertools
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import cv2
import numpy as np
import tqdm
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, also when it is not installed
# dinat_m2f before detectron2 (dinat_m2f/startup.py says why first); importing it registers the model and datasets
from dinat_m2f import Predictor  # noqa: E402
from detectron2.config import CfgNode  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from detectron2.utils.video_visualizer import VideoVisualizer  # noqa: E402
from detectron2.utils.visualizer import ColorMode  # noqa: E402

from dinat_m2f.app import add_config_arguments, app_config  # noqa: E402
from dinat_m2f.data.image_files import read_image_file  # noqa: E402
from dinat_m2f.engine import reuse_freed_memory  # noqa: E402
from dinat_m2f.export import ImageTooLargeError  # noqa: E402
from dinat_m2f.predictor import drawing_metadata  # noqa: E402
from dinat_m2f.results import CategoryIds, write_results  # noqa: E402
from dinat_m2f.special_files import special_file_kind  # noqa: E402

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# The files write_results writes beside a visualization <prefix><ext>: <prefix><suffix> for each task.
RESULT_SUFFIXES = ("_panoptic.png", "_panoptic.json", "_instances.json", "_sem_seg.png")
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
    add_config_arguments(parser)
    return parser


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    return app_config(args.config_file, opts=args.opts, dataset_files=args.dataset)


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


def result_files(prefix: Path) -> List[Path]:
    return [Path(f"{prefix}{suffix}") for suffix in RESULT_SUFFIXES]


def _refuse_overwriting_inputs(planned: List[Path], paths: List[Path], output: str) -> None:
    inputs = {}
    for path in paths:
        try:
            status = path.stat()
        except OSError:  # missing: reported when it is read
            continue
        inputs[(status.st_dev, status.st_ino)] = path
    for destination in planned:
        try:
            status = destination.stat()
        except OSError:
            continue
        overwritten = inputs.get((status.st_dev, status.st_ino))
        if overwritten is not None:
            raise SystemExit(f"--output {output} would overwrite the input {overwritten} (with {destination.name}): "
                             "give an output folder or file where no input is")


def _planned_outputs(paths: List[Path], output: str) -> Tuple[List[Path], List[Path], List[Tuple[Path, Path]]]:
    """(the visualization of each input, every file the run writes, the inputs whose name got a suffix)."""
    if Path(output).suffix.lower() in IMAGE_EXTENSIONS and not os.path.isdir(output):
        if len(paths) != 1:
            raise SystemExit(f"--output {output} is a single file, but there are {len(paths)} inputs: "
                             "give a folder instead")
        destination = Path(output)
        return [destination], [destination, *result_files(destination.with_suffix(""))], []
    taken: set = set()  # every file name this run writes, case-folded (case-insensitive file systems)
    names, planned, renamed = [], [], []
    for path in paths:
        for index in itertools.count():
            stem = path.stem if index == 0 else f"{path.stem}_{index}"
            files = [Path(output) / f"{stem}{path.suffix}", *result_files(Path(output) / stem)]
            if not taken & {f.name.casefold() for f in files}:
                break
        taken |= {f.name.casefold() for f in files}
        planned += files
        names.append(files[0])
        if index:
            renamed.append((path, files[0]))
    return names, planned, renamed


def check_outputs(paths: List[Path], output: str, video: Optional[str]) -> None:
    """Refuse, before any work, an --output that would overwrite an input image or the input video."""
    if paths:
        _refuse_overwriting_inputs(_planned_outputs(paths, output)[1], paths, output)
    if video:
        destination = video_destination(video, output)
        if os.path.exists(destination) and os.path.samefile(destination, video):
            raise SystemExit(f"--output {output} would overwrite the input video {video}: give another output")


def output_names(paths: List[Path], output: str) -> List[Path]:
    """Visualization path for every input. A folder output (an existing folder, or a name without an
    image extension) gets one file per input named like it; where names repeat (the same name in two folders,
    x.png and x.tif, or an input named like another's result file) a suffix _1, _2, ... makes every file this
    run writes unique. An output that would overwrite an input is refused."""
    names, planned, renamed = _planned_outputs(paths, output)
    _refuse_overwriting_inputs(planned, paths, output)
    for path, name in renamed:
        logger.warning("%s is written as %s (its name is taken by another input or its results)", path, name)
    for folder in {name.parent for name in names}:
        os.makedirs(folder, exist_ok=True)
    return names


def run_on_images(predictor: Predictor, paths: List[Path], output: Optional[str],
                  confidence_threshold: float) -> Tuple[int, int]:
    """Returns (number of images done, number skipped)."""
    destinations = output_names(paths, output) if output else [None] * len(paths)
    categories = CategoryIds(predictor.metadata)
    done = skipped = 0
    for path, destination in tqdm.tqdm(list(zip(paths, destinations)), disable=len(paths) < 2, unit="img"):
        kind = special_file_kind(path)
        if kind:  # a FIFO would block the reader forever, a device never end
            logger.warning("Skipping %s: it is %s; only regular files are read", path, kind)
            skipped += 1
            continue
        try:
            image = read_image_file(str(path), "RGB", apply_exif=True)  # 8-bit RGB of any image, upright
        except Exception as e:  # PIL raises several types for missing, truncated or non-image files
            logger.warning("Skipping %s: cannot read it as an image (%s)", path, e)
            skipped += 1
            continue
        try:
            outputs = predictor(image)
        except ImageTooLargeError as e:  # an exported network takes images up to its size
            logger.warning("Skipping %s: %s", path, e)
            skipped += 1
            continue
        vis = predictor.visualize(image, outputs, confidence_threshold)
        if destination is None:
            show(vis, wait_ms=0)
        else:
            Image.fromarray(vis).save(destination)
            prefix = destination.with_suffix("")
            write_results(outputs, prefix, path.stem, categories, confidence_threshold, size=image.shape[:2])
        done += 1
    return done, skipped


def video_destination(video: str, output: str) -> str:
    return output if Path(output).suffix else os.path.join(output, Path(video).stem + ".mp4")


def run_on_video(predictor: Predictor, video: str, output: Optional[str], confidence_threshold: float) -> None:
    destination = None
    if output:
        check_outputs([], output, video)
        destination = video_destination(video, output)
    capture = cv2.VideoCapture(video)
    if not capture.isOpened():
        raise SystemExit(f"Cannot open the video {video}")
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    height, width = predictor.output_size(height, width)  # frames are drawn at the outputs' size
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    writer = None
    if destination:
        os.makedirs(os.path.dirname(destination) or ".", exist_ok=True)
        writer = cv2.VideoWriter(destination, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():  # OpenCV does not raise: a folder, an unknown extension, no permission
            raise SystemExit(f"Cannot write the video {destination}: OpenCV could not open it for writing "
                             "(an .mp4 or .avi file in a writable folder is needed)")
    video_visualizer = VideoVisualizer(drawing_metadata(predictor.metadata), ColorMode.IMAGE)
    num_frames = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0) or None  # from the header; may be absent
    frames_read = 0
    with tqdm.tqdm(total=num_frames, unit="frame") as progress:
        while True:
            ok, frame_bgr = capture.read()
            if not ok:
                break
            frames_read += 1
            outputs = predictor(frame_bgr, format="BGR")
            vis = predictor.visualize(frame_bgr, outputs, confidence_threshold, format="BGR", video=video_visualizer)
            if writer is not None:
                writer.write(np.ascontiguousarray(vis[:, :, ::-1]))
            else:
                show(vis, wait_ms=1)
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
    if args.output:
        check_outputs(paths, args.output, args.video_input)
    reuse_freed_memory()
    predictor = Predictor(setup_cfg(args), exported=args.onnx or args.pt2)

    skipped = len(empty)
    if paths:
        done, unreadable = run_on_images(predictor, paths, args.output, args.confidence_threshold)
        logger.info("Processed %d images%s", done, f", skipped {unreadable} (named above)" if unreadable else "")
        skipped += unreadable
    if args.video_input:
        run_on_video(predictor, args.video_input, args.output, args.confidence_threshold)
    return 1 if skipped else 0


if __name__ == "__main__":
    setup_logger(name="fvcore")  # checkpoint loading messages
    setup_logger(name="dinat_m2f")
    sys.exit(main())
