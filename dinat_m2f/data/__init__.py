"""Datasets (registered on import), Mask2Former's dataset mappers and ``build_mapper``."""
from . import datasets  # noqa: F401  (registers the datasets)
from .build import TRAIN_MAPPERS, build_mapper, build_train_mapper
from .dataset_mappers import *  # noqa: F401,F403
from .dataset_mappers import __all__ as _mapper_names

__all__ = ["TRAIN_MAPPERS", "build_mapper", "build_train_mapper", *_mapper_names]
