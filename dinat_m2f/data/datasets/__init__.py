"""Dataset registration. Importing this package registers every dataset below under the datasets
root ($DETECTRON2_DATASETS, default ./datasets); nothing is read until a dataset is loaded."""
from .paths import DatasetFileError, DatasetFileMissingError, datasets_root
from .register_ade20k import add_ade20k_sem_seg_checks, register_ade20k_instance, register_ade20k_panoptic
from .register_cityscapes import register_cityscapes_instances_and_checks
from .register_coco import add_coco_instance_path_checks, register_coco_panoptic_with_sem_seg
from .register_synthetic import ensure_synthetic_files, is_synthetic, register_synthetic
from .synthetic import SyntheticSpec, generate_synthetic_dataset


def register_all(root: str) -> None:
    """Register this project's datasets and add missing-path errors to detectron2's builtin ones."""
    register_coco_panoptic_with_sem_seg(root)
    add_coco_instance_path_checks()
    register_ade20k_panoptic(root)
    register_ade20k_instance(root)
    add_ade20k_sem_seg_checks()
    register_cityscapes_instances_and_checks()
    register_synthetic(root)


register_all(datasets_root())

__all__ = [
    "DatasetFileError",
    "DatasetFileMissingError",
    "SyntheticSpec",
    "datasets_root",
    "ensure_synthetic_files",
    "generate_synthetic_dataset",
    "is_synthetic",
    "register_synthetic",
]
