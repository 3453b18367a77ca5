"""Datasets (registered on import), Mask2Former's dataset mappers and ``build_mapper``."""
from . import datasets  # noqa: F401  (registers the datasets)
from .build import TRAIN_MAPPERS, build_mapper, build_train_mapper
from .dataset_mappers import (
    COCOInstanceLSJDatasetMapper,
    COCOPanopticLSJDatasetMapper,
    ColorAugSSDTransform,
    ImageFileError,
    InferenceDatasetMapper,
    MaskFormerInstanceDatasetMapper,
    MaskFormerPanopticDatasetMapper,
    MaskFormerSemanticDatasetMapper,
)

__all__ = [
    "COCOInstanceLSJDatasetMapper",
    "COCOPanopticLSJDatasetMapper",
    "ColorAugSSDTransform",
    "ImageFileError",
    "InferenceDatasetMapper",
    "MaskFormerInstanceDatasetMapper",
    "MaskFormerPanopticDatasetMapper",
    "MaskFormerSemanticDatasetMapper",
    "TRAIN_MAPPERS",
    "build_mapper",
    "build_train_mapper",
]
