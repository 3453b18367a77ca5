"""Registration of the synthetic dataset under the same shapes as COCO's:
"<prefix>_{train,val}_panoptic" (panoptic + semantic, evaluator "coco_panoptic_seg"),
"<prefix>_{train,val}" (instances, evaluator "coco") and "<prefix>_{train,val}_sem_seg" (evaluator
"sem_seg"); prefix "synthetic" by default. The files are generated when a loader first runs."""
import os
from dataclasses import asdict
from typing import Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog

from .panoptic_json import load_panoptic_json
from .coco_json import load_coco_instances
from .synthetic import IGNORE_LABEL, LABEL_DIVISOR, SyntheticSpec, generate_synthetic_dataset
from .synthetic import split_paths, synthetic_metadata


def synthetic_dataset_names(prefix: str = "synthetic") -> List[str]:
    return [f"{prefix}_{split}{suffix}" for split in ("train", "val") for suffix in ("_panoptic", "", "_sem_seg")]


def ensure_synthetic_files(dataset_name: str) -> None:
    """Generate the files behind a registered synthetic dataset if they are not there yet."""
    meta = MetadataCatalog.get(dataset_name)
    generate_synthetic_dataset(meta.synthetic_dir, SyntheticSpec(**meta.synthetic_spec))


def is_synthetic(dataset_name: str) -> bool:
    return MetadataCatalog.get(dataset_name).get("synthetic_dir") is not None


def _load_panoptic(name: str, paths: Dict[str, str], meta: Dict) -> List[Dict]:
    ensure_synthetic_files(name)
    return load_panoptic_json(
        paths["panoptic_json"], paths["image_root"], paths["panoptic_root"], paths["sem_seg_root"], meta
    )


def _load_instances(name: str, paths: Dict[str, str], meta: Dict) -> List[Dict]:
    ensure_synthetic_files(name)
    return load_coco_instances(paths["instances_json"], paths["image_root"], meta["thing_dataset_id_to_contiguous_id"])


def _load_semantic(name: str, paths: Dict[str, str], meta: Dict) -> List[Dict]:
    keys = ("file_name", "sem_seg_file_name", "image_id", "height", "width")
    return [{k: d[k] for k in keys} for d in _load_panoptic(name, paths, meta)]


def register_synthetic(root: str, spec: SyntheticSpec = SyntheticSpec(), prefix: str = "synthetic") -> None:
    """(Re-)register the six synthetic datasets for files in ``<root>/synthetic``.

    Registering again with another root, spec or prefix replaces earlier registrations of the same names.
    """
    directory = os.path.join(root, "synthetic")
    meta = synthetic_metadata()
    common = {"synthetic_dir": directory, "synthetic_spec": asdict(spec)}
    for split in ("train", "val"):
        paths = split_paths(directory, split)
        datasets = {
            f"{prefix}_{split}_panoptic": (
                _load_panoptic,
                dict(
                    image_root=paths["image_root"],
                    panoptic_root=paths["panoptic_root"],
                    panoptic_json=paths["panoptic_json"],
                    sem_seg_root=paths["sem_seg_root"],
                    json_file=paths["instances_json"],
                    evaluator_type="coco_panoptic_seg",
                    ignore_label=IGNORE_LABEL,
                    label_divisor=LABEL_DIVISOR,
                    **meta,
                ),
            ),
            f"{prefix}_{split}": (
                _load_instances,
                dict(
                    image_root=paths["image_root"],
                    json_file=paths["instances_json"],
                    evaluator_type="coco",
                    thing_classes=meta["thing_classes"],
                    thing_colors=meta["thing_colors"],
                    thing_dataset_id_to_contiguous_id=meta["thing_dataset_id_to_contiguous_id"],
                ),
            ),
            f"{prefix}_{split}_sem_seg": (
                _load_semantic,
                dict(
                    image_root=paths["image_root"],
                    sem_seg_root=paths["sem_seg_root"],
                    evaluator_type="sem_seg",
                    ignore_label=IGNORE_LABEL,
                    stuff_classes=meta["stuff_classes"],
                    stuff_colors=meta["stuff_colors"],
                    stuff_dataset_id_to_contiguous_id=meta["stuff_dataset_id_to_contiguous_id"],
                ),
            ),
        }
        for name, (loader, fields) in datasets.items():
            if name in DatasetCatalog:
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
            DatasetCatalog.register(name, lambda n=name, f=loader, p=paths: f(n, p, meta))
            MetadataCatalog.get(name).set(**fields, **common)
