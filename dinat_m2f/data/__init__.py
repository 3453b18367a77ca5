"""Datasets (registered on import), Mask2Former's dataset mappers and ``build_mapper``."""
from . import dataset_mappers, datasets  # noqa: F401  (datasets: registers them)
from .build import TRAIN_MAPPERS, build_mapper, build_train_mapper
from .dataset_mappers import *  # noqa: F401,F403  (the mapper classes, listed in dataset_mappers.__all__)

__all__ = dataset_mappers.__all__ + ["TRAIN_MAPPERS", "build_mapper", "build_train_mapper"]
