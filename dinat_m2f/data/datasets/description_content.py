"""The files of a described dataset (:mod:`.description`), checked before anything trains on them.

Every image is decoded (missing, unreadable, a decompression bomb, another size than its JSON entry or its
mask), every mask read: a panoptic PNG must be 8-bit RGB of its image's size, every ``segments_info`` id in
it and every id in it in ``segments_info``; a semantic label map must be single-channel, of its image's size,
with values that are classes or the ignore label. All problems of all splits are reported at once (the
first 20 and the count).

For ``coco_panoptic`` the same pass writes what Mask2Former's semantic training and the evaluators need
beside the panoptic PNGs: semantic label PNGs (contiguous ids, ignore label for void) and a COCO instance
JSON of the things (RLE masks, for mask AP). They, and the fact that a split passed, are kept in a cache
folder beside the description (``.dinat_m2f/<name>/<split>/``; under the datasets root when that cannot be
written) with a manifest of the source files' sizes and modification times: a split is checked and derived
again only when one of its files, or the description, changes.
"""
import hashlib
import json
import logging
import multiprocessing
import os
import time
from dataclasses import asdict
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from panopticapi.utils import rgb2id
from PIL import Image

from ...checkpoint.files import atomic_write
from ..dataset_mappers.mapper_utils import panoptic_to_semantic, unmatched_segments
from ..image_files import IMAGE_EXTENSIONS, ImageFileError, read_image_file, read_label_map, read_panoptic_png
from .coco_json import mask_annotation
from .description import DatasetDescription, SplitFiles
from .paths import DatasetFileError, datasets_root, load_json_file
from .prepare import run_jobs
from .problems import DatasetProblems

__all__ = [
    "DatasetContentError",
    "cache_folder",
    "derived_instances_json",
    "derived_semantic_folder",
    "prepare_description",
    "prepare_split",
    "semantic_mask_pairs",
]

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when what is derived, or how a split is checked, changes
CACHE_DIRNAME = ".dinat_m2f"
MANIFEST = "manifest.json"
_PARALLEL_FROM = 64  # samples; fewer are checked in this process
_MAX_WORKERS = 8


class DatasetContentError(DatasetFileError):
    """Files of a described dataset cannot be trained or evaluated on; the message lists every problem."""


# ---------------------------------------------------------------------------------------------
# where derived files live


def _writable_folder(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


def cache_folder(description: DatasetDescription, split: str) -> str:
    """The split's cache folder (created): beside the description, else under the datasets root."""
    beside = os.path.join(description.folder, CACHE_DIRNAME, description.name, split)
    if _writable_folder(beside):
        return beside
    key = hashlib.sha1(description.file.encode()).hexdigest()[:8]
    fallback = os.path.join(os.path.abspath(datasets_root()), CACHE_DIRNAME, f"{description.name}-{key}", split)
    if not _writable_folder(fallback):
        raise DatasetContentError(
            f"Cannot write the derived files of {description.file}: neither {beside} nor {fallback} is writable"
        )
    return fallback


def derived_semantic_folder(description: DatasetDescription, split: str) -> str:
    return os.path.join(cache_folder(description, split), "semantic")


def derived_instances_json(description: DatasetDescription, split: str) -> str:
    return os.path.join(cache_folder(description, split), "instances.json")


# ---------------------------------------------------------------------------------------------
# the samples of a split


def semantic_mask_pairs(files: SplitFiles) -> Tuple[List[Tuple[str, str]], List[str], List[str]]:
    """(image, label PNG) pairs of a semantic_masks split, matched by relative folder and stem, sorted; and
    the problems (an image without label file, two images with one stem, no image) and warnings (label files
    without image) found while matching."""
    problems, warnings = [], []
    pairs, stems = [], {}
    for folder, _, names in sorted(os.walk(files.images)):
        for name in sorted(names):
            stem, extension = os.path.splitext(name)
            if extension.lower() not in IMAGE_EXTENSIONS:
                continue
            image = os.path.join(folder, name)
            relative_stem = os.path.relpath(os.path.join(folder, stem), files.images)
            if relative_stem in stems:
                problems.append(f"{image} and {stems[relative_stem]} would share the label file {relative_stem}.png")
                continue
            stems[relative_stem] = image
            mask = os.path.join(files.masks, relative_stem + ".png")
            if not os.path.isfile(mask):
                problems.append(f"{image}: its label file {mask} does not exist")
            pairs.append((image, mask))
    if not stems:
        problems.append(f"{files.images} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))}): an empty split")
    for folder, _, names in sorted(os.walk(files.masks)):
        for name in sorted(names):
            relative_stem = os.path.relpath(os.path.join(folder, os.path.splitext(name)[0]), files.masks)
            if name.lower().endswith(".png") and relative_stem not in stems:
                warnings.append(os.path.join(folder, name))
    return pairs, problems, warnings


def _size_problem(what: str, path: str, actual: Tuple[int, int], expected: Tuple[int, int], of: str) -> List[str]:
    if tuple(actual) == tuple(expected):
        return []
    return [f"{what} {path} is {actual[1]}x{actual[0]} (width x height) but {of} is {expected[1]}x{expected[0]}"]


def _decoded_size(image: str, problems: List[str]) -> Optional[Tuple[int, int]]:
    try:
        return read_image_file(image, "RGB").shape[:2]
    except ImageFileError as error:
        problems.append(str(error))
        return None


def _check_instances_sample(job: Tuple) -> Tuple[List[str], Any]:
    image, size, image_id = job
    problems: List[str] = []
    decoded = _decoded_size(image, problems)
    if decoded is not None:
        problems += _size_problem("Image", image, decoded, size, f"its JSON entry (image id {image_id})")
    return problems, None


def _check_semantic_sample(job: Tuple) -> Tuple[List[str], Any]:
    image, mask, num_classes, ignore_label = job
    problems: List[str] = []
    decoded = _decoded_size(image, problems)
    if not os.path.isfile(mask):
        return problems, None  # named when the split was listed
    try:
        labels = read_label_map(mask, num_classes, ignore_label)
    except ImageFileError as error:
        return problems + [str(error)], None
    if decoded is not None:
        problems += _size_problem("Label file", mask, labels.shape, decoded, f"its image {image}")
    return problems, None


def _check_panoptic_sample(job: Tuple) -> Tuple[List[str], Any]:
    """Checks one image and its panoptic PNG; when both are right, writes the semantic PNG and returns the
    things' COCO instance annotations."""
    image, size, image_id, png, segments, semantic_file, ignore_label = job
    problems: List[str] = []
    decoded = _decoded_size(image, problems)
    if decoded is not None:
        problems += _size_problem("Image", image, decoded, size, f"its JSON entry (image id {image_id})")
    try:
        ids = rgb2id(read_panoptic_png(png).astype(np.uint32))
    except ImageFileError as error:
        return problems + [str(error)], None
    problems += _size_problem("Panoptic PNG", png, ids.shape, size, f"its image (image id {image_id})")
    absent, unlisted = unmatched_segments(ids, segments)
    if absent:
        problems.append(f"Panoptic PNG {png}: segments_info ids {absent[:10]} of image id {image_id} are absent "
                        "from it")  # fmt: skip
    if unlisted:
        problems.append(f"Panoptic PNG {png}: its ids {unlisted[:10]} have no segment in segments_info "
                        f"(image id {image_id})")  # fmt: skip
    if problems:
        return problems, None
    semantic = panoptic_to_semantic(ids, segments, ignore_label).astype(np.uint8 if ignore_label <= 255 else np.uint16)
    os.makedirs(os.path.dirname(semantic_file), exist_ok=True)
    atomic_write(semantic_file, lambda f: Image.fromarray(semantic).save(f, format="PNG"))
    return [], [
        mask_annotation(ids == s["id"], image_id, s["dataset_category_id"], int(s.get("iscrowd", 0)))
        for s in segments
        if s["isthing"]
    ]


def _panoptic_jobs(description: DatasetDescription, split: str, content: Dict) -> Tuple[List[Tuple], List[str]]:
    files = description.splits[split]
    contiguous = {c.dataset_id: i for i, c in enumerate(description.classes)}
    isthing = {c.dataset_id: c.isthing for c in description.classes}
    images = {image["id"]: image for image in content["images"]}
    semantic_folder = derived_semantic_folder(description, split)
    jobs = []
    for annotation in content["annotations"]:
        image = images[annotation["image_id"]]
        segments = [
            dict(s, category_id=contiguous[s["category_id"]], isthing=isthing[s["category_id"]],
                 dataset_category_id=s["category_id"])
            for s in annotation["segments_info"]
        ]  # fmt: skip
        jobs.append((
            os.path.join(files.images, image["file_name"]), (image["height"], image["width"]), image["id"],
            os.path.join(files.masks, annotation["file_name"]), segments,
            os.path.join(semantic_folder, annotation["file_name"]), description.ignore_label,
        ))  # fmt: skip
    annotated = {a["image_id"] for a in content["annotations"]}
    unannotated = [(i, image) for i, image in images.items() if i not in annotated]
    warnings = [f"{image['file_name']} (image id {i}) has no annotation" for i, image in unannotated]
    return jobs, warnings


def _basename_clashes(jobs: List[Tuple]) -> List[str]:
    """COCOPanopticEvaluator names each prediction PNG by its image's file name without folder and extension."""
    seen: Dict[str, str] = {}
    problems = []
    for job in jobs:
        stem = os.path.splitext(os.path.basename(job[0]))[0]
        if stem in seen:
            problems.append(f"{job[0]} and {seen[stem]} share the name {stem!r}, so their panoptic predictions "
                            "would overwrite each other: rename one")  # fmt: skip
        seen[stem] = job[0]
    return problems


class SplitSamples(NamedTuple):
    """A split's samples to check: the function checking one, its argument per sample, the problems and warnings
    found while listing them, and the source files a change of which makes the split checked again."""

    check: Callable[[Tuple], Tuple[List[str], Any]]
    jobs: List[Tuple]
    problems: List[str]
    warnings: List[str]
    sources: List[str]


def _split_samples(description: DatasetDescription, split: str) -> SplitSamples:
    files = description.splits[split]
    if description.format == "semantic_masks":
        pairs, problems, warnings = semantic_mask_pairs(files)
        jobs = [(image, mask, len(description.classes), description.ignore_label) for image, mask in pairs]
        sources = [path for pair in pairs for path in pair]
        warnings = [f"label file without image: {w}" for w in warnings]
        return SplitSamples(_check_semantic_sample, jobs, problems, warnings, sources)
    content = load_json_file(files.annotations)  # checked when the description was loaded
    if description.format == "coco_instances":
        images = content["images"]
        jobs = [(os.path.join(files.images, i["file_name"]), (i["height"], i["width"]), i["id"]) for i in images]
        return SplitSamples(_check_instances_sample, jobs, [], [], [files.annotations] + [job[0] for job in jobs])
    jobs, warnings = _panoptic_jobs(description, split, content)
    sources = [files.annotations] + [path for job in jobs for path in (job[0], job[3])]
    clashes = _basename_clashes(jobs)
    if split == "val":  # the split evaluated after training
        return SplitSamples(_check_panoptic_sample, jobs, clashes, warnings, sources)
    return SplitSamples(_check_panoptic_sample, jobs, [], warnings + clashes, sources)


# ---------------------------------------------------------------------------------------------
# the manifest


def _stats(paths: Sequence[str]) -> Dict[str, List[int]]:
    stats = {}
    for path in paths:
        try:
            status = os.stat(path)
            stats[path] = [status.st_size, status.st_mtime_ns]
        except OSError:
            stats[path] = [-1, -1]
    return stats


def _fingerprint(description: DatasetDescription, split: str) -> Dict[str, Any]:
    """What the check and the derived files depend on besides the files, as it reads back from JSON."""
    return json.loads(json.dumps({
        "version": CACHE_VERSION,
        "format": description.format,
        "files": asdict(description.splits[split]),
        "classes": [asdict(c) for c in description.classes],
        "ignore_label": description.ignore_label,
    }))  # fmt: skip


def _manifest_is_fresh(manifest_file: str, fingerprint: Dict, sources: Sequence[str]) -> bool:
    try:
        with open(manifest_file, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return (
        manifest.get("description") == fingerprint
        and manifest.get("sources") == _stats(sources)
        and manifest.get("outputs") == _stats(list(manifest.get("outputs", {})))
    )


def _write_manifest(manifest_file: str, fingerprint: Dict, sources: Sequence[str], outputs: Sequence[str]) -> None:
    text = json.dumps({"description": fingerprint, "sources": _stats(sources), "outputs": _stats(outputs)})
    atomic_write(manifest_file, lambda f: f.write(text.encode("utf-8")))


# ---------------------------------------------------------------------------------------------
# checking and deriving


def _workers(num_jobs: int) -> int:
    if num_jobs < _PARALLEL_FROM or multiprocessing.current_process().daemon:  # daemons cannot start a pool
        return 1
    return max(1, min(_MAX_WORKERS, os.cpu_count() or 1))


def _write_instances_json(description: DatasetDescription, split: str, annotations: List[Dict]) -> str:
    content = load_json_file(description.splits[split].annotations)
    for index, annotation in enumerate(annotations):
        annotation["id"] = index + 1
    things = [{"id": c.dataset_id, "name": c.name} for c in description.classes if c.isthing]
    text = json.dumps({"images": content["images"], "annotations": annotations, "categories": things})
    path = derived_instances_json(description, split)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path


def _check_split(description: DatasetDescription, split: str) -> Tuple[List[str], List[str], bool]:
    """(problems, warnings, whether the split was checked now rather than found unchanged)."""
    check, jobs, problems, warnings, sources = _split_samples(description, split)
    fingerprint = _fingerprint(description, split)
    manifest_file = os.path.join(cache_folder(description, split), MANIFEST)
    if not problems and _manifest_is_fresh(manifest_file, fingerprint, sources):
        return [], warnings, False
    started = time.perf_counter()
    logger.info("Checking dataset %s, split %s: %d samples ...", description.name, split, len(jobs))
    results = run_jobs(check, jobs, _workers(len(jobs)))
    problems = problems + [p for sample_problems, _ in results for p in sample_problems]
    if problems:
        return problems, warnings, True
    outputs = []
    if description.format == "coco_panoptic":
        outputs = [job[5] for job in jobs]
        outputs.append(_write_instances_json(description, split, [a for _, found in results for a in found]))
    _write_manifest(manifest_file, fingerprint, sources, outputs)
    derived = f"; semantic labels and instance JSON derived into {os.path.dirname(manifest_file)}" if outputs else ""
    logger.info("Dataset %s, split %s: %d samples checked in %.1f s%s", description.name, split, len(jobs),
                time.perf_counter() - started, derived)  # fmt: skip
    return [], warnings, True


def prepare_description(description: DatasetDescription, splits: Optional[Sequence[str]] = None) -> None:
    """Check every split (or those named) unless unchanged since it passed, deriving coco_panoptic's files;
    one DatasetContentError lists every problem of every split."""
    problems = DatasetProblems()
    for split in splits if splits is not None else description.splits:
        split_problems, warnings, checked_now = _check_split(description, split)
        problems.extend([f"[{split}] {p}" for p in split_problems])
        if warnings and checked_now:
            logger.warning("Dataset %s, split %s: %d warning(s), e.g. %s", description.name, split, len(warnings),
                           "; ".join(warnings[:3]))  # fmt: skip
    problems.raise_if_any(
        f"Dataset {description.name} ({description.file}) cannot be trained or evaluated on; nothing was run",
        DatasetContentError,
    )


def prepare_split(description: DatasetDescription, split: str) -> None:
    """:func:`prepare_description` for one split (what a split's loader runs before returning its dicts)."""
    prepare_description(description, [split])

