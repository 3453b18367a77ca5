"""Dataset registration. Importing this package registers every dataset below under the datasets
root ($DETECTRON2_DATASETS, default ./datasets); nothing is read until a dataset is loaded."""
from .description import DatasetDescription, DatasetDescriptionError, load_dataset_description
from .description_content import DatasetContentError
from .paths import DatasetFileError, DatasetFileMissingError, datasets_root
from .register_ade20k import add_ade20k_sem_seg_checks, register_ade20k_instance, register_ade20k_panoptic
from .register_cityscapes import register_cityscapes_instances_and_checks
from .register_coco import add_coco_instance_path_checks, register_coco_panoptic_with_sem_seg
from .register_description import (
    apply_dataset_descriptions,
    prepare_dataset_descriptions,
    register_dataset_description,
)
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
    "DatasetContentError",
    "DatasetDescription",
    "DatasetDescriptionError",
    "DatasetFileError",
    "DatasetFileMissingError",
    "SyntheticSpec",
    "apply_dataset_descriptions",
    "datasets_root",
    "ensure_synthetic_files",
    "generate_synthetic_dataset",
    "is_synthetic",
    "load_dataset_description",
    "prepare_dataset_descriptions",
    "register_dataset_description",
    "register_synthetic",
]
