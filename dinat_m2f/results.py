"""Machine-readable results of a model's outputs (the demo's files), in the formats the COCO tools read.

- panoptic: a PNG whose RGB colour encodes the segment id (id = R + 256 G + 256^2 B, 0 = void) and a JSON
  annotation {"image_id", "file_name", "segments_info": [{"id", "category_id", "iscrowd", "bbox", "area"}]}
  with the dataset's category ids (COCO panoptic format);
- instances: a JSON list of COCO results {"image_id", "category_id", "bbox" (XYWH), "score",
  "segmentation" (RLE with a string "counts")};
- semantic: a PNG of per-pixel label ids (dataset ids where the metadata maps them, as detectron2's
  SemSegEvaluator writes them; 8-bit, or 16-bit when an id exceeds 255).

Results computed at a smaller size than the image's (the Predictor keeps outputs at the model's resolution for
images the test resize made smaller) are written at the image's size: only the final maps are upsampled,
with nearest neighbour (the panoptic id map, the semantic labels, each instance mask one at a time), and
areas and boxes are measured on the upsampled maps.
"""
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.structures import Instances
from panopticapi.utils import id2rgb
from PIL import Image


class CategoryIds:
    """Maps the model's contiguous class indices back to the dataset's category ids (identity if the
    metadata has no mapping, e.g. datasets whose ids already are contiguous)."""

    def __init__(self, metadata: Any):
        thing_map = getattr(metadata, "thing_dataset_id_to_contiguous_id", None) or {}
        stuff_map = getattr(metadata, "stuff_dataset_id_to_contiguous_id", None) or {}
        self._thing = {contiguous: dataset for dataset, contiguous in thing_map.items()}
        self._stuff = {contiguous: dataset for dataset, contiguous in stuff_map.items()}

    def thing(self, contiguous_id: int) -> int:
        return self._thing.get(contiguous_id, contiguous_id)

    def stuff(self, contiguous_id: int) -> int:
        return self._stuff.get(contiguous_id, contiguous_id)

    def semantic_label_map(self, labels: np.ndarray) -> np.ndarray:
        """Contiguous label ids (H, W) -> dataset ids."""
        if not self._stuff:
            return labels
        lookup = np.arange(max(max(self._stuff), int(labels.max(initial=0))) + 1)
        for contiguous, dataset in self._stuff.items():
            lookup[contiguous] = dataset
        return lookup[labels]


def resize_nearest(labels: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(h, w, ...) map -> (height, width, ...) with nearest neighbour at pixel centres (PyTorch's
    "nearest-exact"); the map itself when it already has that size."""
    if labels.shape[:2] == tuple(size):
        return labels
    rows, cols = (np.minimum(((np.arange(out) + 0.5) * (src / out)).astype(np.int64), src - 1)
                  for src, out in zip(labels.shape[:2], size))
    return labels[rows[:, None], cols[None, :]]


def encode_mask(mask: np.ndarray) -> Dict[str, Any]:
    """Binary (H, W) mask -> COCO RLE with "counts" as a str (JSON-serializable)."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _bbox_xywh(rle: Dict[str, Any]) -> List[float]:
    return [float(v) for v in mask_util.toBbox(rle)]


def panoptic_to_coco(
    panoptic_seg: torch.Tensor, segments_info: List[Dict[str, Any]], categories: CategoryIds,
    size: Optional[Tuple[int, int]] = None,
) -> tuple[np.ndarray, List[Dict[str, Any]]]:
    """Returns the RGB id image (H, W, 3) uint8 and COCO panoptic segments_info, at `size` if given. Colours
    and segment masks are per-pixel functions of the ids, so they are computed before upsampling (no id map
    at `size`, one segment mask at a time)."""
    ids = panoptic_seg.cpu().numpy().astype(np.int64)
    size = size or ids.shape
    segments = []
    for info in segments_info:
        mask = resize_nearest(ids == info["id"], size)
        rle = encode_mask(mask)
        category = int(info["category_id"])
        segments.append({
            "id": int(info["id"]),
            "category_id": categories.thing(category) if info["isthing"] else categories.stuff(category),
            "iscrowd": 0,
            "bbox": _bbox_xywh(rle),
            "area": int(mask.sum()),
        })
    return resize_nearest(id2rgb(ids), size), segments


def instances_to_coco(
    instances: Instances, image_id: str, categories: CategoryIds, size: Optional[Tuple[int, int]] = None,
) -> List[Dict[str, Any]]:
    """COCO result records for instances with "pred_masks", "scores", "pred_classes" (on the CPU), masks at
    `size` if given (one upsampled mask at a time)."""
    records = []
    for mask, score, category in zip(
        instances.pred_masks.numpy() > 0.5, instances.scores.tolist(), instances.pred_classes.tolist()
    ):
        rle = encode_mask(resize_nearest(mask, size or mask.shape))
        records.append({
            "image_id": image_id,
            "category_id": categories.thing(int(category)),
            "bbox": _bbox_xywh(rle),
            "score": float(score),
            "segmentation": rle,
        })
    return records


def semantic_labels(sem_seg: torch.Tensor, categories: CategoryIds,
                    size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Per-class scores (K, h, w) -> label ids (h, w), or (height, width) = `size` if given; uint8 or uint16."""
    labels = categories.semantic_label_map(sem_seg.argmax(dim=0).cpu().numpy())
    labels = labels.astype(np.uint8 if labels.max(initial=0) <= 255 else np.uint16)
    return resize_nearest(labels, size or labels.shape)


def write_results(
    outputs: Dict[str, Any], prefix: Path, image_id: str, categories: CategoryIds,
    confidence_threshold: float, size: Optional[Tuple[int, int]] = None,
) -> List[Path]:
    """Writes every result the model returned as `<prefix>_panoptic.png` + `<prefix>_panoptic.json`,
    `<prefix>_instances.json` (instances scoring >= confidence_threshold), `<prefix>_sem_seg.png`, at
    `size` (height, width) if given, else at the outputs' size; returns the paths written."""
    written = []
    if "panoptic_seg" in outputs:
        panoptic_seg, segments_info = outputs["panoptic_seg"]
        rgb, segments = panoptic_to_coco(panoptic_seg, segments_info, categories, size)
        png = Path(f"{prefix}_panoptic.png")
        Image.fromarray(rgb).save(png)
        annotation = {"image_id": image_id, "file_name": png.name, "segments_info": segments}
        written += [png, _write_json(Path(f"{prefix}_panoptic.json"), annotation)]
    if "instances" in outputs:
        instances = outputs["instances"].to("cpu")
        instances = instances[instances.scores >= confidence_threshold]
        records = instances_to_coco(instances, image_id, categories, size)
        written.append(_write_json(Path(f"{prefix}_instances.json"), records))
    if "sem_seg" in outputs:
        png = Path(f"{prefix}_sem_seg.png")
        Image.fromarray(semantic_labels(outputs["sem_seg"], categories, size)).save(png)
        written.append(png)
    return written


def _write_json(path: Path, data: Any) -> Path:
    with open(path, "w") as f:
        json.dump(data, f)
    return path
