"""Where datasets live, and the error raised when a file that a dataset needs is missing."""
import os
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

from detectron2.data import DatasetCatalog

README_HINT = "See datasets/README.md for the expected layout."


def datasets_root() -> str:
    """The datasets root: $DETECTRON2_DATASETS, or ./datasets (detectron2's convention)."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


class DatasetFileMissingError(FileNotFoundError):
    """A file or folder of a registered dataset does not exist; the message says what makes it."""


def require_paths(dataset_name: str, paths_and_remedies: Iterable[Tuple[str, str]]) -> None:
    """Raise DatasetFileMissingError for the first path that does not exist.

    ``paths_and_remedies`` pairs each path with how to create it (a prepare script or a download).
    """
    for path, remedy in paths_and_remedies:
        if not os.path.exists(path):
            raise DatasetFileMissingError(
                f"Dataset '{dataset_name}': '{path}' does not exist. {remedy} {README_HINT}"
            )


def register_checked(name: str, loader: Callable[[], List[Dict]], required: Sequence[Tuple[str, str]]):
    """Register ``loader`` under ``name``; when detectron2 calls it (lazily), first check ``required``."""

    def load_after_check() -> List[Dict]:
        require_paths(name, required)
        return loader()

    DatasetCatalog.register(name, load_after_check)


def add_path_check(name: str, required: Sequence[Tuple[str, str]]) -> None:
    """Give a dataset registered by detectron2 itself the same missing-path errors as ours."""
    loader = DatasetCatalog[name]
    DatasetCatalog.remove(name)
    register_checked(name, loader, required)
