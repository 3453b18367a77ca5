"""The demo's model wrapper and visualization (detectron2's Visualizer / VideoVisualizer)."""
import logging
from dataclasses import dataclass
from typing import Any, Dict, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, VisImage, Visualizer

from dinat_m2f.checkpoint import SafeDetectionCheckpointer
from dinat_m2f.export import ExportedMaskFormer

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """The model's results for one image, in detectron2's format ("panoptic_seg", "instances", "sem_seg").

    `outputs` are at the size of `image_rgb`: the input's size, or the size the model saw when the test resize
    made the image smaller (so that post-processing memory is bounded by the test size, not the input's).
    `original_size` is the input's (height, width): the size the written results are upsampled to."""

    outputs: Dict[str, Any]
    image_rgb: np.ndarray
    original_size: Tuple[int, int]


class Predictor:
    """Runs the model on one RGB image (H, W, 3) uint8 the way detectron2's evaluation does: resize the
    shortest edge to INPUT.MIN_SIZE_TEST (0: no resize), channels in INPUT.FORMAT, outputs at the
    original size, except for an image the resize made smaller: its outputs stay at the resized size (see
    `Prediction`). With `exported` (an .onnx or .pt2 file of tools/export_model.py) that network runs instead
    of the PyTorch model (MODEL.WEIGHTS is then not read)."""

    def __init__(self, cfg: CfgNode, exported: str | None = None):
        self.cfg = cfg.clone()
        if exported:
            self.model = ExportedMaskFormer(exported, self.cfg)
        else:
            self.model = build_model(self.cfg).eval()
            SafeDetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.metadata = dataset_metadata(cfg)
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be RGB or BGR for the demo, got {cfg.INPUT.FORMAT!r}")
        self.input_format = cfg.INPUT.FORMAT
        min_size = cfg.INPUT.MIN_SIZE_TEST
        self.resize = T.ResizeShortestEdge([min_size, min_size], cfg.INPUT.MAX_SIZE_TEST) if min_size else None

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        """(height, width) of the outputs for an input of that size: the resized size if it is smaller."""
        if self.resize is None:
            return height, width
        resized = T.ResizeShortestEdge.get_output_shape(
            height, width, self.resize.short_edge_length[0], self.resize.max_size)
        return tuple(resized) if resized[0] * resized[1] < height * width else (height, width)

    def __call__(self, image_rgb: np.ndarray) -> Prediction:
        original_size = image_rgb.shape[:2]
        model_rgb = image_rgb
        if self.resize is not None:  # per-channel resize: RGB then channel flip equals flip then resize
            model_rgb = self.resize.get_transform(image_rgb).apply_image(image_rgb)
        output_rgb = image_rgb if self.output_size(*original_size) == original_size else model_rgb
        height, width = output_rgb.shape[:2]
        image = model_rgb[:, :, ::-1] if self.input_format == "BGR" else model_rgb
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        with torch.inference_mode():
            outputs = self.model([{"image": tensor, "height": height, "width": width}])[0]
        return Prediction(outputs, output_rgb, original_size)


def dataset_metadata(cfg: CfgNode) -> Metadata:
    """Class names and id maps of the dataset the model is evaluated on (DATASETS.TEST[0], else TRAIN[0])."""
    names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
    if not names:
        raise ValueError("The demo needs dataset metadata (class names): set DATASETS.TEST in the config")
    return MetadataCatalog.get(names[0])


def instances_to_show(outputs: Dict[str, Any], confidence_threshold: float) -> Instances:
    """Instances above the threshold on the CPU, with boxes taken from their masks (Mask2Former
    predicts masks only)."""
    instances = outputs["instances"].to("cpu")
    instances = instances[instances.scores >= confidence_threshold]
    instances.pred_boxes = BitMasks(instances.pred_masks > 0.5).get_bounding_boxes()
    return instances


def visualize(prediction: Prediction, metadata: Any, confidence_threshold: float) -> VisImage:
    """Draws the richest result the model returned (panoptic, else instances, else semantic) on the image
    at the outputs' size (the resized image when the test resize made it smaller)."""
    outputs = prediction.outputs
    visualizer = Visualizer(prediction.image_rgb, metadata, instance_mode=ColorMode.IMAGE)
    if "panoptic_seg" in outputs:
        panoptic_seg, segments_info = outputs["panoptic_seg"]
        return visualizer.draw_panoptic_seg(panoptic_seg.cpu(), segments_info)
    if "instances" in outputs:
        return visualizer.draw_instance_predictions(instances_to_show(outputs, confidence_threshold))
    return visualizer.draw_sem_seg(outputs["sem_seg"].argmax(dim=0).cpu())


def visualize_frame(video_visualizer: VideoVisualizer, prediction: Prediction,
                    confidence_threshold: float) -> VisImage:
    """Like `visualize`, with colours kept stable across the frames of a video."""
    outputs, frame_rgb = prediction.outputs, prediction.image_rgb
    if "panoptic_seg" in outputs:
        panoptic_seg, segments_info = outputs["panoptic_seg"]
        return video_visualizer.draw_panoptic_seg_predictions(frame_rgb, panoptic_seg.cpu(), segments_info)
    if "instances" in outputs:
        return video_visualizer.draw_instance_predictions(
            frame_rgb, instances_to_show(outputs, confidence_threshold))
    return video_visualizer.draw_sem_seg(frame_rgb, outputs["sem_seg"].argmax(dim=0).cpu())
