"""Dataset description files: a YAML file beside a dataset saying where its splits are and in which format,
so that the dataset trains and evaluates through ``train_net.py --dataset FILE`` without any Python::

    name: shapes                 # registers shapes_train, shapes_val (one per split listed)
    format: coco_panoptic        # coco_panoptic | coco_instances | semantic_masks
    splits:
      train: {images: train/img, annotations: train/panoptic.json, masks: train/pan}
      val:   {images: val/img,   annotations: val/panoptic.json,   masks: val/pan}
    # semantic_masks only: class names in label-value order, and the label of unlabelled pixels (default 255)
    classes: [water, sand, rock, star]
    ignore_label: 255

- ``coco_panoptic``: a COCO panoptic JSON (``annotations``) and its PNG folder (``masks``).
- ``coco_instances``: a COCO instance JSON (polygons or RLE); no ``masks``.
- ``semantic_masks``: an image folder and a label PNG folder (same relative path and stem); no ``annotations``.

Paths are relative to the file's folder (absolute ones are allowed). The COCO formats take their classes from
the JSON's ``categories`` (any ids, e.g. 7, 42, 1001): contiguous ids follow the JSON's order, with a panoptic
JSON's things before its stuff classes (COCO's layout, which detectron2's Visualizer and COCOEvaluator rely on);
colours are the JSON's ``color`` or generated. Loading reads the file as plain YAML (no Python tags), checks every field
and, for the COCO formats, everything the annotation JSONs alone can tell (:mod:`.coco_json`), and reports
every problem at once, naming the file and key.
"""
import colorsys
import os
import re
import reprlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from .coco_json import instances_json_problems, panoptic_json_problems
from .paths import DatasetFileError, load_json_file
from .problems import DatasetProblems

__all__ = [
    "FORMATS",
    "DatasetClass",
    "DatasetDescription",
    "DatasetDescriptionError",
    "SplitFiles",
    "load_dataset_description",
]

# The files each format's splits name: (required keys, and what each must be).
FORMATS: Dict[str, Dict[str, str]] = {
    "coco_panoptic": {"images": "folder", "annotations": "file", "masks": "folder"},
    "coco_instances": {"images": "folder", "annotations": "file"},
    "semantic_masks": {"images": "folder", "masks": "folder"},
}
TOP_LEVEL_KEYS = ("name", "format", "splits", "classes", "ignore_label")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SPLIT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
MAX_FILE_BYTES = 1 << 20  # a description is a few lines; anything this large is not one
DEFAULT_IGNORE_LABEL = 255
_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict, _short.maxlevel = 60, 60, 6, 6, 2


class DatasetDescriptionError(DatasetFileError):
    """A dataset description file (or an annotation JSON it names) cannot be used; the message lists why."""


@dataclass(frozen=True)
class DatasetClass:
    """One class: its name, colour (RGB), whether it has instances, and its id in the annotations (the JSON's
    category id; the label value for semantic_masks)."""

    name: str
    color: Tuple[int, int, int]
    isthing: bool
    dataset_id: int


@dataclass(frozen=True)
class SplitFiles:
    """Absolute paths of one split's files (None where the format has no such file)."""

    images: str
    annotations: Optional[str] = None
    masks: Optional[str] = None


@dataclass(frozen=True)
class DatasetDescription:
    """A loaded and checked description file."""

    file: str  # absolute path of the YAML file
    name: str
    format: str
    splits: Dict[str, SplitFiles]
    classes: Tuple[DatasetClass, ...]  # in contiguous-id order
    ignore_label: int  # of the semantic labels (given for semantic_masks; 255, or 65535 past 255 classes)

    def dataset_name(self, split: str) -> str:
        """The name the split is registered under in detectron2's catalogs."""
        return f"{self.name}_{split}"

    @property
    def folder(self) -> str:
        return os.path.dirname(self.file)


def distinct_colors(count: int) -> List[Tuple[int, int, int]]:
    """``count`` well separated RGB colours (golden-ratio hues, alternating brightness), the same every run."""
    colors = []
    for i in range(count):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95 if i % 2 == 0 else 0.7)
        colors.append((round(255 * r), round(255 * g), round(255 * b)))
    return colors


def _read_yaml(file: str) -> Any:
    if os.path.getsize(file) > MAX_FILE_BYTES:
        raise DatasetDescriptionError(f"Dataset description {file} is larger than {MAX_FILE_BYTES} bytes")
    try:
        with open(file, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as error:
        python_tag = "python/" in str(error)
        why = "a Python tag is refused: description files are plain YAML" if python_tag else f"invalid YAML: {error}"
        raise DatasetDescriptionError(f"Dataset description {file}: {why}") from error
    except UnicodeDecodeError as error:
        raise DatasetDescriptionError(f"Dataset description {file} is not UTF-8 text ({error})") from error


def _split_files(
    key: str, value: Any, format_name: str, folder: str, problems: DatasetProblems
) -> Optional[SplitFiles]:
    if not isinstance(value, dict):
        problems.add(f"splits.{key}: expected a mapping of {', '.join(FORMATS[format_name])} to paths, "
                     f"got {_short.repr(value)}")  # fmt: skip
        return None
    expected = FORMATS[format_name]
    for extra in sorted(set(map(str, value)) - set(expected)):
        problems.add(f"splits.{key}.{extra}: not a key of format {format_name} (its splits have "
                     f"{', '.join(expected)})")  # fmt: skip
    paths = {}
    for field, kind in expected.items():
        path = value.get(field)
        if not isinstance(path, str) or not path:
            problems.add(f"splits.{key}.{field}: missing (the {kind} of the split's {field})")
            continue
        full = os.path.normpath(os.path.join(folder, path))
        exists = os.path.isdir(full) if kind == "folder" else os.path.isfile(full)
        if not exists:
            problems.add(f"splits.{key}.{field}: {kind} {full} does not exist")
        paths[field] = full
    return SplitFiles(**paths) if len(paths) == len(expected) else None


def _semantic_classes(content: Dict, problems: DatasetProblems) -> Tuple[Tuple[DatasetClass, ...], int]:
    names = content.get("classes")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        problems.add(f"classes: expected a list of class names in label-value order, got {_short.repr(names)}")
        names = []
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.add(f"classes: {name!r} is listed twice")
    ignore_label = content.get("ignore_label", DEFAULT_IGNORE_LABEL)
    if not isinstance(ignore_label, int) or isinstance(ignore_label, bool) or not 0 <= ignore_label <= 65535:
        problems.add(f"ignore_label: expected an integer label value 0..65535, got {_short.repr(ignore_label)}")
        ignore_label = DEFAULT_IGNORE_LABEL
    elif ignore_label < len(names):
        problems.add(f"ignore_label: {ignore_label} is the label of class {names[ignore_label]!r}; unlabelled "
                     f"pixels need a value of {len(names)} or more")  # fmt: skip
    colors = distinct_colors(len(names))
    return tuple(DatasetClass(n, colors[i], False, i) for i, n in enumerate(names)), ignore_label


def _json_classes(
    format_name: str, splits: Dict[str, SplitFiles], problems: DatasetProblems
) -> Tuple[DatasetClass, ...]:
    """The classes of the splits' JSONs (which must all list the same categories), after checking each JSON."""
    panoptic = format_name == "coco_panoptic"
    check = panoptic_json_problems if panoptic else instances_json_problems
    first: Optional[Tuple[str, List]] = None
    classes: Tuple[DatasetClass, ...] = ()
    for split in sorted(splits, key=lambda s: s != "train"):  # the train split's JSON first
        json_file = splits[split].annotations
        try:
            content = load_json_file(json_file)
        except DatasetFileError as error:
            problems.add(str(error))
            continue
        json_problems = check(content, json_file)
        problems.extend(json_problems)
        if json_problems:
            continue
        categories = [(c["id"], c["name"], bool(c.get("isthing", 1)), c.get("color")) for c in content["categories"]]
        if first is None:
            first = (json_file, categories)
            colors = distinct_colors(len(categories))
            classes = tuple(
                DatasetClass(name, tuple(color) if color else colors[i], isthing if panoptic else True, category_id)
                for i, (category_id, name, isthing, color) in enumerate(categories)
            )
            classes = tuple(sorted(classes, key=lambda c: not c.isthing))  # things first, as in COCO's layout
        elif [c[:3] for c in categories] != [c[:3] for c in first[1]]:
            problems.add(f"{json_file} lists other categories than {first[0]} (ids, names, isthing or order "
                         "differ): every split needs the same classes")  # fmt: skip
    return classes


def load_dataset_description(path: str) -> DatasetDescription:
    """Read and check a description file (see the module docstring); a DatasetDescriptionError lists every
    problem found, each with the key it is about."""
    file = os.path.abspath(path)
    if not os.path.isfile(file):
        raise DatasetDescriptionError(f"Dataset description {file} does not exist")
    content = _read_yaml(file)
    if not isinstance(content, dict):
        raise DatasetDescriptionError(f"Dataset description {file}: expected a mapping (name, format, splits, ...), "
                                      f"got {_short.repr(content)}")  # fmt: skip
    problems = DatasetProblems()
    for key in sorted(set(map(str, content)) - set(TOP_LEVEL_KEYS)):
        problems.add(f"{key}: unknown key (a description has {', '.join(TOP_LEVEL_KEYS)})")
    name = content.get("name")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        problems.add(f"name: expected letters, digits, '_', '-' or '.' (e.g. shapes), got {_short.repr(name)}")
    format_name = content.get("format")
    if format_name not in FORMATS:
        problems.add(f"format: expected one of {', '.join(FORMATS)}, got {_short.repr(format_name)}")
    splits_value = content.get("splits")
    splits: Dict[str, SplitFiles] = {}
    if not isinstance(splits_value, dict) or not splits_value:
        problems.add(f"splits: expected a mapping of split names (train, val, ...) to files, got "
                     f"{_short.repr(splits_value)}")  # fmt: skip
    elif format_name in FORMATS:
        for key, value in splits_value.items():
            if not isinstance(key, str) or not SPLIT_PATTERN.match(key):
                problems.add(f"splits: {_short.repr(key)} is not a split name (letters, digits, '_', '-')")
                continue
            files = _split_files(key, value, format_name, os.path.dirname(file), problems)
            if files is not None:
                splits[key] = files
    if format_name in ("coco_panoptic", "coco_instances"):
        for key in ("classes", "ignore_label"):
            if key in content:
                problems.add(f"{key}: not used by format {format_name} (its classes are the JSON's 'categories')")
    classes: Tuple[DatasetClass, ...] = ()
    ignore_label = DEFAULT_IGNORE_LABEL
    if format_name == "semantic_masks":
        classes, ignore_label = _semantic_classes(content, problems)
    problems.raise_if_any(f"Dataset description {file}", DatasetDescriptionError)
    if format_name != "semantic_masks":
        classes = _json_classes(format_name, splits, problems)
        problems.raise_if_any(f"Dataset description {file}", DatasetDescriptionError)
        ignore_label = 255 if len(classes) <= 255 else 65535  # of the semantic labels derived from panoptic PNGs
    return DatasetDescription(file, name, format_name, splits, classes, ignore_label)


def write_dataset_description(path: str, name: str, format_name: str, splits: Dict[str, Dict[str, str]],
                              classes: Sequence[str] = (), ignore_label: Optional[int] = None) -> None:
    """Write a description file (paths relative to its folder) in the layout :func:`load_dataset_description` reads."""
    content: Dict[str, Any] = {"name": name, "format": format_name, "splits": splits}
    if classes:
        content["classes"] = list(classes)
    if ignore_label is not None:
        content["ignore_label"] = ignore_label
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(content, f, sort_keys=False, allow_unicode=True, default_flow_style=None)
