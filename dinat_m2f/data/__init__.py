"""Datasets (registered on import), Mask2Former's dataset mappers, ``build_mapper`` and the resumable
training loader."""
from . import dataset_mappers, datasets  # noqa: F401  (datasets: registers them)
from .build import TRAIN_MAPPERS, build_mapper, build_train_mapper
from .dataset_mappers import *  # noqa: F401,F403  (the mapper classes, listed in dataset_mappers.__all__)
from .train_loader import ResumableTrainLoader, build_train_loader

__all__ = dataset_mappers.__all__ + [
    "ResumableTrainLoader",
    "TRAIN_MAPPERS",
    "build_mapper",
    "build_train_loader",
    "build_train_mapper",
]
