"""`Predictor`: a model on images in a few lines, and the drawing of its results (detectron2's Visualizer).

    from dinat_m2f import Predictor
    predictor = Predictor.from_zoo("coco/panoptic/dinat_l")
    outputs = predictor("photo.jpg")
    vis_rgb = predictor.visualize("photo.jpg", outputs)
"""
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances
from PIL import Image

from . import model_zoo
from .checkpoint import SafeDetectionCheckpointer
from .config import INPUT_FORMATS
from .data.image_files import read_image_file
from .export import ExportedMaskFormer
from .modeling.postprocessing import config_tasks, dataset_metadata, select_tasks
from .special_files import special_file_kind

__all__ = ["Predictor", "draw_outputs"]

logger = logging.getLogger(__name__)

# A path, a PIL image or an (H, W, 3) uint8 array.
ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]


class Predictor:
    """Runs a model on images the way detectron2's evaluation does (the shortest edge resized to
    INPUT.MIN_SIZE_TEST, at most INPUT.MAX_SIZE_TEST; 0: no resize) and returns detectron2's output dicts
    ("panoptic_seg", "instances", "sem_seg") at the image's size. An image larger than the test size keeps its
    outputs at the size the model saw (`output_size`), so that memory is bounded by the test size and not by the
    photo's; `dinat_m2f.results.write_results(..., size=original size)` writes them at full size.

    Images: a file path (EXIF rotation, grayscale, RGBA and 16-bit files handled), a PIL image, or an (H, W, 3)
    uint8 array in RGB order (BGR with ``format="BGR"``, as OpenCV reads them); one image gives one dict, a list
    a list.
    `tasks` (some of "panoptic", "instance", "semantic") computes only those results; each is the same as when
    all are computed. With `exported` (an .onnx or .pt2 file of tools/export_model.py) that network runs instead
    of the PyTorch model (MODEL.WEIGHTS is then not read)."""

    def __init__(self, cfg: CfgNode, tasks: Optional[Sequence[str]] = None, exported: Optional[str] = None):
        self.cfg = cfg.clone()
        if cfg.INPUT.FORMAT not in INPUT_FORMATS:
            raise ValueError(f"INPUT.FORMAT must be RGB or BGR for the Predictor, got {cfg.INPUT.FORMAT!r}")
        if tasks is not None:
            select_tasks(tasks, config_tasks(cfg))  # refused before the model is built and its weights read
        self.metadata = dataset_metadata(self.cfg)
        if exported:
            self.model = ExportedMaskFormer(exported, self.cfg)
        else:
            self.model = build_model(self.cfg).eval()
            if cfg.MODEL.WEIGHTS:
                SafeDetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
            else:
                logger.warning("MODEL.WEIGHTS is empty: the Predictor runs a randomly initialized model")
        self.tasks = tasks
        self.input_format = cfg.INPUT.FORMAT
        min_size = cfg.INPUT.MIN_SIZE_TEST
        self.resize = T.ResizeShortestEdge([min_size, min_size], cfg.INPUT.MAX_SIZE_TEST) if min_size else None

    @classmethod
    def from_zoo(cls, name: str, weights: Optional[str] = None, device: Optional[str] = None,
                 tasks: Optional[Sequence[str]] = None) -> "Predictor":
        """The model zoo's `name` (e.g. "coco/panoptic/dinat_l", see dinat_m2f.model_zoo.list_models()) with
        `weights` (a path or URL; default: the released checkpoint, downloaded once into the cache), on `device`
        (default: CUDA if available, else the CPU)."""
        cfg = model_zoo.get_config(name, trained=weights is None)
        if weights is not None:
            cfg.MODEL.WEIGHTS = weights
        cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(cfg, tasks=tasks)

    @property
    def tasks(self) -> Tuple[str, ...]:
        """The tasks whose results the Predictor computes (settable; None: all the model has)."""
        return self.model.postprocessor.tasks

    @tasks.setter
    def tasks(self, tasks: Optional[Sequence[str]]) -> None:
        self.model.postprocessor.tasks = tasks

    @property
    def class_names(self) -> List[str]:
        """The name of each class index of the outputs (sem_seg channels, segments' and instances' classes)."""
        field = "stuff_classes" if {"panoptic", "semantic"} & set(self.model.postprocessor.available_tasks) \
            else "thing_classes"
        names = self.metadata.get(field)
        if names is None:
            raise ValueError(f"Dataset {self.metadata.name!r} lists no {field}: register its metadata")
        return list(names)

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        """(height, width) of the outputs for an input of that size: the resized size if it is smaller."""
        if self.resize is None:
            return height, width
        resized = T.ResizeShortestEdge.get_output_shape(
            height, width, self.resize.short_edge_length[0], self.resize.max_size)
        return tuple(resized) if resized[0] * resized[1] < height * width else (height, width)

    def read(self, image: ImageInput, format: str = "RGB") -> np.ndarray:
        """The image as an (H, W, 3) uint8 RGB array (`format` is the channel order of an array input)."""
        if isinstance(image, (str, os.PathLike)):
            kind = special_file_kind(image)
            if kind:  # a FIFO would block the reader forever, a device never end
                raise ValueError(f"{image} is {kind}; only regular files are read as images")
            return read_image_file(str(image), "RGB", apply_exif=True)  # 8-bit RGB of any image, upright
        if isinstance(image, Image.Image):
            return np.asarray(image.convert("RGB"))
        if not isinstance(image, np.ndarray):
            raise TypeError(f"An image must be a path, a PIL image or a numpy array, got {type(image).__name__}")
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"An image array must be (H, W, 3) uint8 ({' or '.join(INPUT_FORMATS)}), got shape "
                             f"{image.shape} and dtype {image.dtype}")
        if format not in INPUT_FORMATS:
            raise ValueError(f"format must be one of {', '.join(INPUT_FORMATS)}, got {format!r}")
        return np.ascontiguousarray(image[:, :, ::-1]) if format == "BGR" else image

    def __call__(self, images: Union[ImageInput, List[ImageInput]],
                 format: str = "RGB") -> Union[Dict[str, Any], List[Dict[str, Any]]]:
        """The outputs of one image, or a list of them for a list (run one image at a time)."""
        if isinstance(images, list):
            return [self._predict(self.read(image, format)) for image in images]
        return self._predict(self.read(images, format))

    def _predict(self, image_rgb: np.ndarray) -> Dict[str, Any]:
        height, width = self.output_size(*image_rgb.shape[:2])
        if self.resize is not None:  # per-channel resize: RGB then channel flip equals flip then resize
            image_rgb = self.resize.get_transform(image_rgb).apply_image(image_rgb)
        image = image_rgb[:, :, ::-1] if self.input_format == "BGR" else image_rgb
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        with torch.inference_mode():
            return self.model([{"image": tensor, "height": height, "width": width}])[0]

    def visualize(self, image: ImageInput, outputs: Dict[str, Any], confidence_threshold: float = 0.5,
                  format: str = "RGB", video: Optional[Any] = None) -> np.ndarray:
        """The richest result in `outputs` (panoptic, else instances scoring at least `confidence_threshold`,
        else semantic) drawn on `image`, as an (h, w, 3) uint8 RGB array at the outputs' size (the resized image
        when the test resize made it smaller). `video`: a detectron2 VideoVisualizer, which keeps the colours of
        a video's segments stable from frame to frame."""
        image_rgb = self.read(image, format)
        size = _outputs_size(outputs)
        if image_rgb.shape[:2] != size and self.output_size(*image_rgb.shape[:2]) == size:
            image_rgb = self.resize.get_transform(image_rgb).apply_image(image_rgb)
        if image_rgb.shape[:2] != size:
            raise ValueError(f"The outputs are for an image of {size[0]}x{size[1]}, not for this "
                             f"{image_rgb.shape[0]}x{image_rgb.shape[1]} image")
        return draw_outputs(image_rgb, outputs, self.metadata, confidence_threshold, video)


def _outputs_size(outputs: Dict[str, Any]) -> Tuple[int, int]:
    if "panoptic_seg" in outputs:
        return tuple(outputs["panoptic_seg"][0].shape)
    if "instances" in outputs:
        return tuple(outputs["instances"].image_size)
    return tuple(outputs["sem_seg"].shape[-2:])


def _instances_to_show(outputs: Dict[str, Any], confidence_threshold: float) -> Instances:
    """Instances above the threshold on the CPU, with boxes taken from their masks (Mask2Former predicts masks
    only)."""
    instances = outputs["instances"].to("cpu")
    instances = instances[instances.scores >= confidence_threshold]
    instances.pred_boxes = BitMasks(instances.pred_masks > 0.5).get_bounding_boxes()
    return instances


def drawing_metadata(metadata: Metadata) -> Metadata:
    """`metadata` with `thing_classes` and `thing_colors` indexable by the model's class index, as detectron2's
    Visualizer indexes them. Datasets whose thing classes are not the first indices (ADE20K panoptic: every class
    keeps its 150-class index, things among stuff) list their things in index order; they get lists with each
    thing's name and colour at its index."""
    indices = sorted((metadata.get("thing_dataset_id_to_contiguous_id") or {}).values())
    names, colors = metadata.get("thing_classes"), metadata.get("thing_colors")
    if not names or indices == list(range(len(indices))) or len(indices) != len(names):
        return metadata
    by_index = {"thing_classes": [""] * (indices[-1] + 1)}
    for index, name in zip(indices, names):
        by_index["thing_classes"][index] = name
    if colors is not None:
        by_index["thing_colors"] = [[0, 0, 0]] * (indices[-1] + 1)
        for index, color in zip(indices, colors):
            by_index["thing_colors"][index] = color
    return Metadata(**{**metadata.as_dict(), **by_index})


def draw_outputs(image_rgb: np.ndarray, outputs: Dict[str, Any], metadata: Metadata, confidence_threshold: float,
                 video: Optional[Any] = None) -> np.ndarray:
    """Draws the richest result (panoptic, else instances, else semantic) on `image_rgb` (at the outputs' size)
    with detectron2's Visualizer (classes named by `drawing_metadata`), or with `video` (a VideoVisualizer, made
    with that metadata) for a video's frames; returns RGB."""
    from detectron2.utils.visualizer import ColorMode, Visualizer  # matplotlib: imported only to draw

    metadata = drawing_metadata(metadata)
    if video is None:
        visualizer = Visualizer(image_rgb, metadata, instance_mode=ColorMode.IMAGE)
        draw_panoptic, draw_instances, draw_semantic = (
            visualizer.draw_panoptic_seg, visualizer.draw_instance_predictions, visualizer.draw_sem_seg)
    else:
        def draw_panoptic(panoptic_seg, segments_info):
            return video.draw_panoptic_seg_predictions(image_rgb, panoptic_seg, segments_info)

        def draw_instances(instances):
            return video.draw_instance_predictions(image_rgb, instances)

        def draw_semantic(sem_seg):
            return video.draw_sem_seg(image_rgb, sem_seg)

    if "panoptic_seg" in outputs:
        panoptic_seg, segments_info = outputs["panoptic_seg"]
        drawn = draw_panoptic(panoptic_seg.cpu(), segments_info)
    elif "instances" in outputs:
        drawn = draw_instances(_instances_to_show(outputs, confidence_threshold))
    else:
        drawn = draw_semantic(outputs["sem_seg"].argmax(dim=0).cpu())
    return drawn.get_image()
