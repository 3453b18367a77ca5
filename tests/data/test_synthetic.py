"""The synthetic dataset: deterministic, valid COCO panoptic / instance / semantic files, safe to
generate from two processes at once, registered lazily under the datasets root."""
import filecmp
import json
import multiprocessing
import os

import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from dinat_m2f.data.datasets import SyntheticSpec, generate_synthetic_dataset, register_synthetic
from dinat_m2f.data.datasets.synthetic import CONTIGUOUS_ID, SYNTHETIC_CATEGORIES, split_paths

SMALL = SyntheticSpec(num_train=12, num_val=6, min_size=128, max_size=192, seed=3)


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("synthetic_root") / "synthetic")
    generate_synthetic_dataset(directory, SMALL)
    return directory


def _files(directory):
    return sorted(
        os.path.relpath(os.path.join(d, f), directory) for d, _, names in os.walk(directory) for f in names
    )


def test_generation_is_deterministic(synthetic_dir, tmp_path):
    again = str(tmp_path / "synthetic")
    generate_synthetic_dataset(again, SMALL)
    files = _files(synthetic_dir)
    assert files == _files(again)
    _, mismatch, errors = filecmp.cmpfiles(synthetic_dir, again, files, shallow=False)
    assert not mismatch and not errors

    other_seed = str(tmp_path / "other_seed")
    generate_synthetic_dataset(other_seed, SyntheticSpec(num_train=12, num_val=6, min_size=128, max_size=192, seed=4))
    assert not filecmp.cmp(
        os.path.join(synthetic_dir, "train", "000000.jpg"), os.path.join(other_seed, "train", "000000.jpg"), shallow=False
    )


def test_layout_counts_and_sizes(synthetic_dir):
    for split in ("train", "val"):
        paths = split_paths(synthetic_dir, split)
        with open(paths["panoptic_json"]) as f:
            panoptic = json.load(f)
        assert len(panoptic["images"]) == SMALL.num_images(split)
        for image in panoptic["images"]:
            assert SMALL.min_size <= image["height"] <= SMALL.max_size
            assert SMALL.min_size <= image["width"] <= SMALL.max_size
            with Image.open(os.path.join(paths["image_root"], image["file_name"])) as im:
                assert im.format == "JPEG" and im.mode == "RGB" and im.size == (image["width"], image["height"])
        assert {c["id"] for c in panoptic["categories"]} == {1, 2, 3, 21, 22}
        assert sum(c["isthing"] for c in panoptic["categories"]) == 3


def test_panoptic_files_are_valid_for_panopticapi(synthetic_dir, tmp_path):
    """panopticapi reads every PNG/JSON pair: evaluating the ground truth against itself gives PQ 1,
    and JSON areas/bboxes/ids agree with the PNGs."""
    from panopticapi.evaluation import pq_compute
    from panopticapi.utils import rgb2id

    paths = split_paths(synthetic_dir, "val")
    with open(paths["panoptic_json"]) as f:
        gt = json.load(f)
    for ann in gt["annotations"]:
        ids = rgb2id(np.asarray(Image.open(os.path.join(paths["panoptic_root"], ann["file_name"])), dtype=np.uint32))
        present = set(np.unique(ids).tolist()) - {0}
        assert present == {s["id"] for s in ann["segments_info"]}
        for segment in ann["segments_info"]:
            mask = ids == segment["id"]
            ys, xs = np.nonzero(mask)
            assert segment["area"] == mask.sum()
            assert segment["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    result = pq_compute(paths["panoptic_json"], paths["panoptic_json"], paths["panoptic_root"], paths["panoptic_root"])
    assert result["All"]["pq"] == pytest.approx(1.0)
    assert result["Things"]["n"] == 3 and result["Stuff"]["n"] == 2


def test_instance_json_loads_in_pycocotools_and_matches_panoptic(synthetic_dir):
    from panopticapi.utils import rgb2id
    from pycocotools.coco import COCO

    paths = split_paths(synthetic_dir, "train")
    coco = COCO(paths["instances_json"])
    assert sorted(coco.getCatIds()) == [1, 2, 3]
    with open(paths["panoptic_json"]) as f:
        panoptic = json.load(f)
    touching = 0
    for ann in panoptic["annotations"]:
        ids = rgb2id(np.asarray(Image.open(os.path.join(paths["panoptic_root"], ann["file_name"])), dtype=np.uint32))
        things = [s for s in ann["segments_info"] if s["category_id"] in (1, 2, 3)]
        instances = coco.loadAnns(coco.getAnnIds(imgIds=[ann["image_id"]]))
        assert len(instances) == len(things) >= 1
        for inst, segment in zip(sorted(instances, key=lambda a: a["bbox"]), sorted(things, key=lambda s: s["bbox"])):
            mask = coco.annToMask(inst).astype(bool)
            assert np.array_equal(mask, ids == segment["id"])
            assert inst["area"] == mask.sum() and inst["iscrowd"] == 0
            assert inst["category_id"] == segment["category_id"]
            assert 20 * 20 * 0.3 <= inst["area"]  # things are reasonably large
        # instances touching one another (4-neighbours with two different thing ids)
        thing_ids = np.where(ids % 1000 > 0, ids, 0)
        horizontal = (thing_ids[:, 1:] != thing_ids[:, :-1]) & (thing_ids[:, 1:] > 0) & (thing_ids[:, :-1] > 0)
        touching += int(horizontal.any())
    assert touching >= 1
    counts = np.bincount([a["category_id"] for a in coco.dataset["annotations"]], minlength=4)[1:]
    assert (counts > 0).all()


def test_semantic_png_follows_panoptic(synthetic_dir):
    from panopticapi.utils import rgb2id

    paths = split_paths(synthetic_dir, "train")
    with open(paths["panoptic_json"]) as f:
        panoptic = json.load(f)
    saw_void = False
    for ann in panoptic["annotations"]:
        ids = rgb2id(np.asarray(Image.open(os.path.join(paths["panoptic_root"], ann["file_name"])), dtype=np.uint32))
        semantic = np.asarray(Image.open(os.path.join(paths["sem_seg_root"], ann["file_name"])))
        assert semantic.dtype == np.uint8 and semantic.ndim == 2
        expected = np.full(ids.shape, 255, np.uint8)
        for segment in ann["segments_info"]:
            expected[ids == segment["id"]] = CONTIGUOUS_ID[segment["category_id"]]
        assert np.array_equal(semantic, expected)
        saw_void |= bool((semantic == 255).any())
    assert saw_void


def test_colours_separate_the_classes(synthetic_dir):
    """Mean image colour inside each class is closest to that class's colour (the data is learnable)."""
    paths = split_paths(synthetic_dir, "val")
    colors = np.array([c["color"] for c in SYNTHETIC_CATEGORIES], np.float32)
    for name in sorted(os.listdir(paths["sem_seg_root"]))[:4]:
        semantic = np.asarray(Image.open(os.path.join(paths["sem_seg_root"], name)))
        image = np.asarray(Image.open(os.path.join(paths["image_root"], name[:-4] + ".jpg")), np.float32)
        for label in set(np.unique(semantic).tolist()) - {255}:
            mean = image[semantic == label].mean(0)
            assert np.argmin(np.linalg.norm(colors - mean, axis=1)) == label


def _generate(directory):
    generate_synthetic_dataset(directory, SMALL)


def test_two_processes_generating_at_once(tmp_path, synthetic_dir):
    directory = str(tmp_path / "synthetic")
    context = multiprocessing.get_context("fork")  # no re-import: quick
    workers = [context.Process(target=_generate, args=(directory,)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    assert os.listdir(tmp_path) == ["synthetic"]  # no staging folder left behind
    files = _files(synthetic_dir)
    assert _files(directory) == files
    assert not filecmp.cmpfiles(synthetic_dir, directory, files, shallow=False)[1]


def test_losing_the_rename_race_keeps_the_winner(tmp_path, synthetic_dir):
    """The second process to finish finds the folder installed and discards its own copy."""
    from dinat_m2f.data.datasets.synthetic import _move_into_place

    directory = str(tmp_path / "synthetic")
    generate_synthetic_dataset(directory, SMALL)
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "partial.txt").write_text("a copy that lost the race")
    _move_into_place(str(staging), directory, SMALL)
    assert not (tmp_path / "synthetic" / "partial.txt").exists()
    assert _files(directory) == _files(synthetic_dir)


def test_other_spec_replaces_outdated_folder(tmp_path):
    directory = str(tmp_path / "synthetic")
    generate_synthetic_dataset(directory, SyntheticSpec(num_train=2, num_val=1, seed=1))
    generate_synthetic_dataset(directory, SyntheticSpec(num_train=3, num_val=2, seed=1))
    assert len(os.listdir(os.path.join(directory, "train"))) == 3
    assert sorted(os.listdir(tmp_path)) == ["synthetic"]


def test_registration_is_lazy_and_complete(tmp_path):
    register_synthetic(str(tmp_path), SMALL, prefix="lazy_synthetic")
    assert not (tmp_path / "synthetic").exists()  # nothing written at registration

    panoptic = DatasetCatalog.get("lazy_synthetic_val_panoptic")
    assert len(panoptic) == SMALL.num_val and (tmp_path / "synthetic" / "spec.json").exists()
    record = panoptic[0]
    for key in ("file_name", "pan_seg_file_name", "sem_seg_file_name"):
        assert os.path.isfile(record[key])
    assert all(s["isthing"] == (s["category_id"] < 3) for s in record["segments_info"])

    meta = MetadataCatalog.get("lazy_synthetic_val_panoptic")
    assert meta.evaluator_type == "coco_panoptic_seg" and meta.ignore_label == 255
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
    assert meta.stuff_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 21: 3, 22: 4}
    assert meta.thing_classes == ["circle", "square", "triangle"] and meta.stuff_classes[3:] == ["sky", "grass"]
    assert os.path.isfile(meta.json_file) and os.path.isfile(meta.panoptic_json) and os.path.isdir(meta.sem_seg_root)

    instances = DatasetCatalog.get("lazy_synthetic_train")
    assert len(instances) == SMALL.num_train
    assert {a["category_id"] for r in instances for a in r["annotations"]} <= {0, 1, 2}
    assert MetadataCatalog.get("lazy_synthetic_train").evaluator_type == "coco"

    semantic = DatasetCatalog.get("lazy_synthetic_train_sem_seg")
    assert set(semantic[0]) == {"file_name", "sem_seg_file_name", "image_id", "height", "width"}
    meta = MetadataCatalog.get("lazy_synthetic_train_sem_seg")
    assert meta.evaluator_type == "sem_seg" and len(meta.stuff_classes) == 5 and meta.ignore_label == 255


def test_default_names_registered():
    for name in ("synthetic_train_panoptic", "synthetic_val_panoptic", "synthetic_train", "synthetic_val",
                 "synthetic_train_sem_seg", "synthetic_val_sem_seg"):  # fmt: skip
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).synthetic_spec == {
            "num_train": 300, "num_val": 50, "min_size": 128, "max_size": 256, "seed": 0
        }  # fmt: skip
