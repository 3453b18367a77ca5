"""Datasets (registered on import) and the dataset mappers of Mask2Former."""
from . import datasets  # noqa: F401  (registers the datasets)
