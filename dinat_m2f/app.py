"""The web demo (demo/app.py): a Gradio page, and its API endpoint /segment, that segment an uploaded image.

`WebDemo.segment` is what the page runs: it reads the upload as the command-line demo reads files, runs the one
task asked for with a `Predictor`, draws it with the demo's drawing and writes the demo's result files
(dinat_m2f.results), named after the uploaded file, so that they equal demo/demo.py's files for that image. The
segments table describes those files. Only `build_page` imports Gradio (the optional extra `pip install .[app]`).
"""
import argparse
import html
import json
import logging
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
from detectron2.config import CfgNode

from . import model_zoo
from .config import load_project_config
from .data.image_files import read_label_map
from .modeling.postprocessing import config_tasks
from .predictor import Predictor
from .results import CategoryIds, write_results

__all__ = ["PAGE_CSS", "SEGMENT_COLUMNS", "RequestError", "Segmentation", "WebDemo", "app_config", "build_page",
           "segment_rows"]

logger = logging.getLogger(__name__)

# The segments table: the segment's id in the result files (panoptic: its id in the PNG and JSON; instance: its
# index in the JSON list; semantic: its label in the PNG), class name, score (instances only), area at the
# image's size.
SEGMENT_COLUMNS = ("Id", "Class", "Score", "Area (pixels)", "Area (%)")
# Height in pixels of the page's images (the input and the visualization, side by side); small images are
# enlarged to it (PAGE_CSS), so that a visualization at the model's test size shows as large as its input.
IMAGE_HEIGHT = 360
PAGE_CSS = "#image img, #visualization img {width: 100%; height: 100%; object-fit: contain}"


class RequestError(ValueError):
    """A request the demo refuses (an upload that is not a readable image, a task the model lacks, a threshold
    outside [0, 1]); the page shows its message."""


class Segmentation(NamedTuple):
    """One request's results."""

    visualization: np.ndarray  # (h, w, 3) uint8 RGB, at the outputs' size
    rows: List[List[Any]]  # SEGMENT_COLUMNS
    files: List[Path]  # the demo's result files of the task
    summary: str  # task, segment count, inference time, sizes


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--dataset and --opts, the inputs of `app_config` besides the model, as demo/demo.py and demo/app.py take
    them."""
    parser.add_argument("--dataset", action="append", default=[], metavar="FILE",
                        help="the dataset description file the model was trained on (its class names)")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth")


def app_config(config_file: Optional[str] = None, model: Optional[str] = None, opts: Sequence[str] = (),
               dataset_files: Sequence[str] = ()) -> CfgNode:
    """The frozen config of `config_file`, or of the model zoo's `model` (its released checkpoint as
    MODEL.WEIGHTS unless `opts` set them), with the KEY VALUE `opts` and the dataset description files
    `dataset_files` (class names) applied: the config of demo/demo.py and demo/app.py."""
    if (config_file is None) == (model is None):
        raise ValueError("Give either a config file or a model zoo name")
    if model is not None:
        config_file = model_zoo.get_config_file(model)
        if "MODEL.WEIGHTS" not in list(opts)[::2]:
            opts = ["MODEL.WEIGHTS", model_zoo.get_checkpoint_url(model), *opts]
    cfg = load_project_config(config_file, opts, dataset_files=dataset_files)
    cfg.freeze()
    return cfg


def _image_pixels(size: Tuple[int, int]) -> int:
    return max(size[0] * size[1], 1)


def _row(segment_id: int, class_name: str, score: Optional[float], area: int, pixels: int) -> List[Any]:
    return [segment_id, class_name, None if score is None else round(score, 3), area, round(100 * area / pixels, 2)]


def segment_rows(task: str, files: Sequence[Path], outputs: Dict[str, Any], class_names: Sequence[str],
                 categories: CategoryIds, size: Tuple[int, int], confidence_threshold: float) -> List[List[Any]]:
    """The SEGMENT_COLUMNS rows of `task`'s result files (`files`, written by write_results for `outputs` at
    `size`), so that ids and areas are those of the files; class names from the outputs' class indices."""
    def written(suffix: str) -> Path:
        return next(path for path in files if path.name.endswith(suffix))

    pixels = _image_pixels(size)
    if task == "panoptic":
        classes = {info["id"]: info["category_id"] for info in outputs["panoptic_seg"][1]}
        segments = json.loads(written("_panoptic.json").read_text())["segments_info"]
        return [_row(s["id"], class_names[classes[s["id"]]], None, s["area"], pixels) for s in segments]
    if task == "instance":
        instances = outputs["instances"].to("cpu")
        classes = instances.pred_classes[instances.scores >= confidence_threshold].tolist()
        records = json.loads(written("_instances.json").read_text())
        return [_row(index, class_names[category], record["score"], int(mask_util.area(record["segmentation"])),
                     pixels) for index, (record, category) in enumerate(zip(records, classes))]
    labels = read_label_map(str(written("_sem_seg.png")))
    areas = np.bincount(labels.ravel())
    rows = []
    for index, name in enumerate(class_names):
        label = categories.stuff(index)
        if label < len(areas) and areas[label]:
            rows.append(_row(label, name, None, int(areas[label]), pixels))
    return rows


class WebDemo:
    """A Predictor behind the page: `segment` runs one request. Result files go into a folder of their own under
    `results_root` (default: the system's temporary folder), removed when the demo ends; each request's folder
    replaces the previous one (the page copies the files it serves, and runs one request at a time)."""

    def __init__(self, predictor: Predictor, results_root: Optional[str] = None):
        self.predictor = predictor
        self.tasks = config_tasks(predictor.cfg)
        self.categories = CategoryIds(predictor.metadata)
        self.results_root = Path(tempfile.mkdtemp(prefix="dinat_m2f_app_", dir=results_root))
        weakref.finalize(self, shutil.rmtree, self.results_root, ignore_errors=True)  # also at the process's exit
        self._folder: Optional[Path] = None

    def _new_folder(self) -> Path:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
        self._folder = Path(tempfile.mkdtemp(dir=self.results_root))
        return self._folder

    def _read(self, path: str, name: str) -> np.ndarray:
        try:
            return self.predictor.read(path)
        except (OSError, ValueError) as error:  # the reader's errors (ImageFileError is an OSError) name the file
            # by its path on the server, which means nothing to the user: the uploaded file's name replaces it
            raise RequestError(str(error).replace(str(path), name)) from error

    def segment(self, path: str, task: str, confidence_threshold: float = 0.5,
                name: Optional[str] = None) -> Segmentation:
        """Segments the image file at `path` for `task` (one of `tasks`). `name` is the uploaded file's name
        (default: the path's), which names the result files and their image_id as demo/demo.py names them.
        Instances scoring below `confidence_threshold` are neither drawn nor written."""
        if task not in self.tasks:
            raise RequestError(f"Task {task!r}: this model offers {', '.join(self.tasks)}")
        if not isinstance(confidence_threshold, (int, float)) or not 0 <= confidence_threshold <= 1:
            raise RequestError(f"The score threshold must be a number in [0, 1], got {confidence_threshold!r}")
        name = Path(name or path).name
        image = self._read(path, name)
        self.predictor.tasks = (task,)
        start = time.perf_counter()
        outputs = self.predictor(image)
        seconds = time.perf_counter() - start
        visualization = self.predictor.visualize(image, outputs, confidence_threshold)

        stem = Path(name).stem or "image"
        size = image.shape[:2]
        files = write_results(outputs, self._new_folder() / stem, stem, self.categories, confidence_threshold, size)
        rows = segment_rows(task, files, outputs, self.predictor.class_names, self.categories, size,
                            confidence_threshold)
        processed = self.predictor.output_size(*size)
        at = f", processed at {processed[1]}x{processed[0]} (the model's test size)" if processed != size else ""
        summary = (f"**{task}**: {len(rows)} segments in {seconds:.2f} s on {self.predictor.cfg.MODEL.DEVICE}; "
                   f"{name}, {size[1]}x{size[0]}{at}")
        logger.info("%s: %s, %d segments, %.2f s", name, task, len(rows), seconds)
        return Segmentation(visualization, rows, files, summary)


def build_page(demo: WebDemo, model_name: str, confidence_threshold: float = 0.5, examples: Sequence[str] = ()):
    """The Gradio page (a gr.Blocks, not launched) of `demo`: an image, a task and a score threshold in; the
    visualization, the segments table, the result files and a summary out. Its event is the API endpoint
    /segment (image, task, confidence_threshold), one request at a time."""
    import gradio as gr

    def segment(image: Optional[Dict[str, Any]], task: str, confidence_threshold: float = confidence_threshold):
        # The upload arrives as Gradio's file record (preprocess=False): the project's reader, not Gradio's
        # image conversion, reads it, as demo/demo.py reads files (16-bit, RGBA, EXIF), and a file it cannot
        # read gets a message naming it.
        if not image or not image.get("path"):
            raise gr.Error("Upload an image first")
        try:
            result = demo.segment(image["path"], task, confidence_threshold, name=image.get("orig_name"))
        except RequestError as error:
            logger.warning("Refused a request: %s", error)
            raise gr.Error(html.escape(str(error), quote=False), print_exception=False) from error  # shown as HTML
        return result.visualization, result.rows, [str(path) for path in result.files], result.summary

    classes = demo.predictor.class_names
    with gr.Blocks(title=f"dinat-m2f: {model_name}", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        gr.Markdown(f"## dinat-m2f: {model_name}\n{len(classes)} classes ({', '.join(classes[:8])}"
                    f"{', ...' if len(classes) > 8 else ''}), running on {demo.predictor.cfg.MODEL.DEVICE}. Upload "
                    "or drop an image, pick a task and press **Segment**.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"], height=IMAGE_HEIGHT,
                                 elem_id="image")
                task = gr.Radio(list(demo.tasks), value=demo.tasks[0], label="Task", elem_id="task")
                threshold = gr.Slider(0, 1, value=confidence_threshold, step=0.05, elem_id="threshold",
                                      label="Score threshold (instances below it are neither drawn nor written)")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
                if examples:
                    gr.Examples([[str(path)] for path in examples], inputs=[image], label="Examples")
            with gr.Column():
                visualization = gr.Image(label="Segmentation", type="numpy", format="png", interactive=False,
                                         height=IMAGE_HEIGHT, elem_id="visualization")
                summary = gr.Markdown(elem_id="summary")
                table = gr.Dataframe(headers=list(SEGMENT_COLUMNS), label="Segments", interactive=False,
                                     elem_id="segments")
                files = gr.File(label="Result files", file_count="multiple", interactive=False, elem_id="files")
        results = [visualization, table, files, summary]
        button.click(segment, [image, task, threshold], results, api_name="segment", preprocess=False,
                     concurrency_limit=1)
        # results stay only beside the image they are of
        image.change(lambda: (None, None, None, ""), None, results, api_visibility="private", queue=False)
    return page
