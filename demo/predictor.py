"""The demo's model wrapper and visualization (detectron2's Visualizer / VideoVisualizer)."""
import logging
from typing import Any, Dict

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


class Predictor:
    """Runs the model on one RGB image (H, W, 3) uint8 the way detectron2's evaluation does: resize the
    shortest edge to INPUT.MIN_SIZE_TEST (0: no resize), channels in INPUT.FORMAT, outputs at the
    original size. With `exported` (an .onnx or .pt2 file of tools/export_model.py) that network runs instead
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

    def __call__(self, image_rgb: np.ndarray) -> Dict[str, Any]:
        height, width = image_rgb.shape[:2]
        image = image_rgb[:, :, ::-1] if self.input_format == "BGR" else image_rgb
        if self.resize is not None:
            image = self.resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        with torch.inference_mode():
            return self.model([{"image": tensor, "height": height, "width": width}])[0]


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


def visualize(image_rgb: np.ndarray, outputs: Dict[str, Any], metadata: Any,
              confidence_threshold: float) -> VisImage:
    """Draws the richest result the model returned: panoptic, else instances, else semantic."""
    visualizer = Visualizer(image_rgb, metadata, instance_mode=ColorMode.IMAGE)
    if "panoptic_seg" in outputs:
        panoptic_seg, segments_info = outputs["panoptic_seg"]
        return visualizer.draw_panoptic_seg(panoptic_seg.cpu(), segments_info)
    if "instances" in outputs:
        return visualizer.draw_instance_predictions(instances_to_show(outputs, confidence_threshold))
    return visualizer.draw_sem_seg(outputs["sem_seg"].argmax(dim=0).cpu())


def visualize_frame(video_visualizer: VideoVisualizer, frame_rgb: np.ndarray, outputs: Dict[str, Any],
                    confidence_threshold: float) -> VisImage:
    """Like `visualize`, with colours kept stable across the frames of a video."""
    if "panoptic_seg" in outputs:
        panoptic_seg, segments_info = outputs["panoptic_seg"]
        return video_visualizer.draw_panoptic_seg_predictions(frame_rgb, panoptic_seg.cpu(), segments_info)
    if "instances" in outputs:
        return video_visualizer.draw_instance_predictions(
            frame_rgb, instances_to_show(outputs, confidence_threshold))
    return video_visualizer.draw_sem_seg(frame_rgb, outputs["sem_seg"].argmax(dim=0).cpu())
