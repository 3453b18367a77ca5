"""Where datasets live, and the errors raised when a file that a dataset needs is missing or malformed."""
import json
import os
from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple

from detectron2.data import DatasetCatalog

README_HINT = "See datasets/README.md for the expected layout."


def datasets_root() -> str:
    """The datasets root: $DETECTRON2_DATASETS, or ./datasets (detectron2's convention)."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


class DatasetFileMissingError(FileNotFoundError):
    """A file or folder of a registered dataset does not exist; the message says what makes it."""


class DatasetFileError(ValueError):
    """A file of a registered dataset cannot be parsed; the message names the file."""


# What json (and pycocotools, which calls it) raise on a file that is not JSON, or not the expected layout.
JSON_SYNTAX_ERRORS = (json.JSONDecodeError, UnicodeDecodeError)
JSON_LAYOUT_ERRORS = (KeyError, TypeError, AssertionError)  # pycocotools asserts the top level is a dict


def malformed_json(json_file: str, error: Exception, layout: str) -> DatasetFileError:
    """The error for ``json_file`` when parsing it raised ``error`` (syntax) or reading it as ``layout``
    did (a key or type the layout needs is missing)."""
    if isinstance(error, JSON_SYNTAX_ERRORS):
        return DatasetFileError(f"{json_file} is not valid JSON ({error}); re-download or re-create it")
    return DatasetFileError(f"{json_file} does not have the layout of {layout} ({type(error).__name__}: {error})")


def require_object(content: Any, json_file: str, layout: str) -> None:
    """A DatasetFileError naming ``json_file`` when its top level is not a JSON object."""
    if not isinstance(content, dict):
        raise DatasetFileError(
            f"{json_file} does not have the layout of {layout} (its top level is a {type(content).__name__}, "
            "not an object)"
        )


def load_json_file(json_file: str) -> Any:
    """The parsed JSON of a dataset annotation file (a DatasetFileError naming it when it is malformed)."""
    with open(json_file) as f:
        try:
            return json.load(f)
        except JSON_SYNTAX_ERRORS as error:
            raise malformed_json(json_file, error, "a JSON file") from error


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
