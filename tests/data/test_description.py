"""Dataset description files on generated data in each format (non-contiguous, unsorted category ids 42, 7,
1001, 3, 500; grayscale, RGBA and 16-bit images; non-ASCII names and names with spaces): the description's
checks, registration and metadata, the mappers on its splits, the cache of derived files, the config keys
(DATASETS.DESCRIPTIONS, NUM_CLASSES), every broken case named at once before training, and the synthetic
dataset's own description giving the same training data as its registered names."""
import json
import logging
import os
import time

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from custom_dataset_files import AWKWARD_IMAGES, cache_folder, make_awkward, make_dataset, split_paths
from detectron2.data import DatasetCatalog, MetadataCatalog
from dinat_m2f.config import get_project_cfg, load_project_config
from dinat_m2f.data import build_mapper
from dinat_m2f.data.datasets import (
    DatasetContentError,
    DatasetDescriptionError,
    SyntheticSpec,
    generate_synthetic_dataset,
    load_dataset_description,
    register_dataset_description,
    register_synthetic,
)
from dinat_m2f.data.datasets.description_content import prepare_description
from dinat_m2f.data.datasets.example_dataset import EXAMPLE_CATEGORIES
from log_capture import RecordLogs
from project_paths import CONFIGS
from test_image_files import write_decompression_bomb

CLASS_NAMES = [c["name"] for c in EXAMPLE_CATEGORIES]
MAPPERS = {"coco_panoptic": "mask_former_panoptic", "coco_instances": "mask_former_instance",
           "semantic_masks": "mask_former_semantic"}  # fmt: skip
CONFIG_OF = {"coco_panoptic": "panoptic", "coco_instances": "instance", "semantic_masks": "semantic"}
CONTENT_LOG = "dinat_m2f.data.datasets.description_content"


def registered(description_file):
    description = load_dataset_description(str(description_file))
    register_dataset_description(description)
    return description


def mapper_cfg(format_name, dataset_name, num_classes):
    cfg = get_project_cfg()
    cfg.INPUT.DATASET_MAPPER_NAME = MAPPERS[format_name]
    cfg.DATASETS.TRAIN = (dataset_name,)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 256
    return cfg


# ------------------------------------------------------------------------------------------------
# each format: registration, metadata, loading, mapping


@pytest.mark.parametrize("format_name", list(MAPPERS))
def test_each_format_registers_loads_and_maps_awkward_images(tmp_path, format_name):
    description_file = make_dataset(tmp_path / format_name, format_name, name=f"awkward_{format_name}")
    description = registered(description_file)
    train = DatasetCatalog.get(f"awkward_{format_name}_train")
    assert len(train) == 6 and len(DatasetCatalog.get(f"awkward_{format_name}_val")) == 3
    names = {os.path.basename(r["file_name"]) for r in train}
    assert {name for name, _ in AWKWARD_IMAGES} <= names

    meta = MetadataCatalog.get(f"awkward_{format_name}_val")
    if format_name == "coco_panoptic":
        assert meta.evaluator_type == "coco_panoptic_seg" and meta.ignore_label == 255
        assert meta.stuff_classes == CLASS_NAMES and meta.thing_classes == CLASS_NAMES[:3]
        assert meta.thing_dataset_id_to_contiguous_id == {42: 0, 7: 1, 1001: 2}
        assert meta.stuff_dataset_id_to_contiguous_id == {42: 0, 7: 1, 1001: 2, 3: 3, 500: 4}
        assert meta.stuff_colors[3] == [110, 170, 235]  # the JSON's colour
        assert os.path.isfile(meta.json_file) and os.path.isdir(meta.sem_seg_root) and os.path.isfile(meta.panoptic_json)
    elif format_name == "coco_instances":
        assert meta.evaluator_type == "coco" and meta.thing_classes == CLASS_NAMES[:3]
        assert meta.thing_dataset_id_to_contiguous_id == {42: 0, 7: 1, 1001: 2}
    else:
        assert meta.evaluator_type == "sem_seg" and meta.stuff_classes == CLASS_NAMES and meta.ignore_label == 255
        assert len({tuple(c) for c in meta.stuff_colors}) == 5  # generated, distinct

    mapper = build_mapper(mapper_cfg(format_name, f"awkward_{format_name}_train", len(description.classes)), True)
    awkward = {name for name, _ in AWKWARD_IMAGES}
    for record in train:
        sample = mapper(record)
        assert sample["image"].shape[0] == 3 and sample["image"].dtype == torch.uint8
        assert len(sample["instances"]) > 0
        assert sample["instances"].gt_classes.max() < len(description.classes)
        name = os.path.basename(record["file_name"])
        if name in awkward:
            assert 30 < sample["image"].float().mean() < 225, name  # a 16-bit image was read all white


def test_16bit_image_reads_as_its_8bit_pixels(tmp_path):
    description_file = make_dataset(tmp_path, "semantic_masks", name="deep_images", awkward=False)
    originals = make_awkward(description_file)
    deep = next(path for path in originals if "sixteen" in path.name)
    registered(description_file)
    record = next(r for r in DatasetCatalog.get("deep_images_train") if r["file_name"] == str(deep))
    cfg = mapper_cfg("semantic_masks", "deep_images_train", 5)
    cfg.INPUT.MIN_SIZE_TRAIN = (min(originals[deep].shape[:2]),)
    sample = build_mapper(cfg, True)(record)
    np.testing.assert_array_equal(sample["image"].permute(1, 2, 0).numpy(), originals[deep])


# ------------------------------------------------------------------------------------------------
# the description file itself


def write_yaml(path, content):
    path.write_text(yaml.safe_dump(content) if not isinstance(content, str) else content, encoding="utf-8")
    return path


def test_every_problem_of_a_description_is_named_at_once(tmp_path):
    (tmp_path / "train" / "images").mkdir(parents=True)
    description = write_yaml(tmp_path / "bad.yaml", {
        "name": "has space", "format": "semantic_masks", "colour": "red",
        "splits": {"train": {"images": "train/images", "masks": "train/labels", "annotations": "x.json"},
                   "val": "val/images"},
        "classes": ["water", "sand", "water"], "ignore_label": 1,
    })  # fmt: skip
    with pytest.raises(DatasetDescriptionError) as error:
        load_dataset_description(str(description))
    message = str(error.value)
    assert message.startswith(f"Dataset description {description}: 7 problems")
    for part in ("colour: unknown key", "name: expected letters", "splits.train.annotations: not a key of format "
                 "semantic_masks", f"splits.train.masks: folder {tmp_path / 'train' / 'labels'} does not exist",
                 "splits.val: expected a mapping", "classes: 'water' is listed twice",
                 "ignore_label: 1 is the label of class 'sand'"):  # fmt: skip
        assert part in message, message


@pytest.mark.parametrize("content, expected", [
    ("name: x\nformat: !!python/object/apply:os.system ['touch pwned']\n", "a Python tag is refused"),
    ("[1, 2]", "expected a mapping"),
    ("name: [unclosed", "invalid YAML"),
    ({"name": "x", "format": "coco_semantic", "splits": {}}, "format: expected one of coco_panoptic"),
])  # fmt: skip
def test_description_yaml_is_plain_data(tmp_path, content, expected):
    description = write_yaml(tmp_path / "d.yaml", content)
    with pytest.raises(DatasetDescriptionError, match=expected):
        load_dataset_description(str(description))
    assert not (tmp_path / "pwned").exists()


def test_annotation_json_problems_are_named_when_the_description_loads(tmp_path):
    """Duplicate image ids, a category id not in 'categories', an empty split: named before any image is read."""
    description_file = make_dataset(tmp_path, "coco_panoptic", name="json_problems", awkward=False)
    train, val = split_paths(description_file, "train"), split_paths(description_file, "val")
    content = json.loads(train["annotations"].read_text())
    content["images"][1]["id"] = content["images"][0]["id"]
    content["annotations"][2]["segments_info"][0]["category_id"] = 77
    train["annotations"].write_text(json.dumps(content))
    content = json.loads(val["annotations"].read_text())
    content["annotations"] = []
    val["annotations"].write_text(json.dumps(content))
    with pytest.raises(DatasetDescriptionError) as error:
        load_dataset_description(str(description_file))
    message = str(error.value)
    assert f"{train['annotations']}: image id 1 is listed twice ('0000.jpg' and '0001.jpg')" in message
    assert "has category_id 77, which is not in 'categories'" in message
    assert f"{val['annotations']} has no annotations (an empty split)" in message


def test_a_name_held_by_another_dataset_is_refused(tmp_path):
    description_file = make_dataset(tmp_path, "coco_instances", name="synthetic", awkward=False, num_train=2, num_val=1)
    with pytest.raises(DatasetDescriptionError, match="'synthetic_train' is already registered by a built-in dataset"):
        registered(description_file)


# ------------------------------------------------------------------------------------------------
# broken content: every problem at once, before anything trains


def test_broken_panoptic_data_is_refused_naming_every_file_and_id(tmp_path):
    description_file = make_dataset(tmp_path, "coco_panoptic", name="broken_panoptic", awkward=False, num_train=8)
    train, val = split_paths(description_file, "train"), split_paths(description_file, "val")
    content = json.loads(train["annotations"].read_text())
    images, annotations = content["images"], content["annotations"]
    png = [train["masks"] / a["file_name"] for a in annotations]
    (train["images"] / images[0]["file_name"]).unlink()  # missing image
    (train["images"] / images[1]["file_name"]).write_bytes(b"\xff\xd8 not a jpeg")  # unreadable image
    images[2]["height"] += 2  # image (and PNG) size differ from the JSON entry
    Image.fromarray(np.asarray(Image.open(png[3]))[:-4]).save(png[3])  # PNG smaller than its image
    annotations[4]["segments_info"].append({"id": 999, "category_id": 42, "iscrowd": 0})  # segment absent from the PNG
    unlisted = annotations[5]["segments_info"].pop()  # PNG id without a segment
    Image.fromarray(np.asarray(Image.open(png[6]))[..., 0].astype(np.uint16) * 300).save(png[6])  # 16-bit PNG
    train["annotations"].write_text(json.dumps(content))
    bomb = val["images"] / "0000.jpg"
    write_decompression_bomb(bomb)

    description = load_dataset_description(str(description_file))
    with pytest.raises(DatasetContentError) as error:
        prepare_description(description)
    message = str(error.value)
    assert "cannot be trained or evaluated on; nothing was run: 9 problems" in message, message
    expected = [
        f"[train] Cannot read image file {train['images'] / images[0]['file_name']}",
        f"[train] Cannot read image file {train['images'] / images[1]['file_name']}",
        f"is {images[2]['width']}x{images[2]['height'] - 2} (width x height) but its JSON entry (image id 3) is",
        f"Panoptic PNG {png[2]} is",
        f"Panoptic PNG {png[3]} is",
        f"Panoptic PNG {png[4]}: segments_info ids [999] of image id 5 are absent from it",
        f"Panoptic PNG {png[5]}: its ids [{unlisted['id']}] have no segment in segments_info (image id 6)",
        f"Panoptic PNG {png[6]} is 16-bit I;16",
        f"[val] Cannot read image file {bomb}",
    ]
    for part in expected:
        assert part in message, part
    assert "decompression bomb" in message
    assert not (cache_folder(description_file, "train") / "manifest.json").exists()


def test_broken_semantic_and_instance_data_is_refused_naming_every_file(tmp_path):
    description_file = make_dataset(tmp_path / "semantic", "semantic_masks", name="broken_semantic", awkward=False)
    train, val = split_paths(description_file, "train"), split_paths(description_file, "val")
    labels = sorted(train["masks"].iterdir())
    values = np.asarray(Image.open(labels[0])).copy()
    values[0, :4] = 9
    Image.fromarray(values).save(labels[0])  # neither a class nor the ignore label
    Image.fromarray(np.asarray(Image.open(labels[1]))[:, :-3]).save(labels[1])  # another size than its image
    labels[2].unlink()  # missing label file
    for image in val["images"].iterdir():  # an empty split
        image.unlink()
    with pytest.raises(DatasetContentError) as error:
        prepare_description(load_dataset_description(str(description_file)))
    message = str(error.value)
    assert "4 problems" in message
    assert f"[train] Label file {labels[0]} has values [9], which are neither a class (0..4) nor the ignore label 255" in message
    assert f"[train] Label file {labels[1]} is" in message and "but its image" in message
    assert f"its label file {labels[2]} does not exist" in message
    assert f"[val] {val['images']} has no images" in message

    description_file = make_dataset(tmp_path / "instances", "coco_instances", name="broken_instances", awkward=False)
    train = split_paths(description_file, "train")
    first = train["images"] / "0000.jpg"
    Image.fromarray(np.asarray(Image.open(first))[:-1]).save(first)
    with pytest.raises(DatasetContentError, match=f"Image {first} is .* but its JSON entry \\(image id 1\\)"):
        prepare_description(load_dataset_description(str(description_file)))


# ------------------------------------------------------------------------------------------------
# the cache of derived files


@pytest.fixture
def content_logs():
    """The messages of the module that checks and derives, at INFO level."""
    logger = logging.getLogger(CONTENT_LOG)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield lambda: RecordLogs(logger)
    logger.setLevel(level)


def test_panoptic_splits_derive_semantic_labels_once_and_again_when_a_file_changes(tmp_path, content_logs):
    from panopticapi.utils import rgb2id

    description_file = make_dataset(tmp_path, "coco_panoptic", name="cached_panoptic", awkward=False)
    description = registered(description_file)
    with content_logs() as logs:
        records = DatasetCatalog.get("cached_panoptic_train")
    assert any("split train: 6 samples checked" in m for m in logs.messages)
    record = records[0]
    ids = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]), dtype=np.uint32))
    expected = np.full(ids.shape, 255, np.uint8)
    for segment in record["segments_info"]:
        expected[ids == segment["id"]] = segment["category_id"]
    semantic_file = record["sem_seg_file_name"]
    assert semantic_file.startswith(str(cache_folder(description_file, "train")))
    np.testing.assert_array_equal(np.asarray(Image.open(semantic_file)), expected)
    instances = json.loads((cache_folder(description_file, "train") / "instances.json").read_text())
    assert {a["category_id"] for a in instances["annotations"]} <= {42, 7, 1001}
    assert [c["id"] for c in instances["categories"]] == [42, 7, 1001]

    with content_logs() as logs:
        DatasetCatalog.get("cached_panoptic_train")
    assert not logs.messages  # unchanged: neither checked nor derived again

    time.sleep(0.01)
    png = record["pan_seg_file_name"]
    Image.open(png).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(png)  # the source changes
    with content_logs() as logs:
        DatasetCatalog.get("cached_panoptic_train")
    assert any("split train: 6 samples checked" in m for m in logs.messages)
    np.testing.assert_array_equal(np.asarray(Image.open(semantic_file)), expected[:, ::-1])
    os.remove(semantic_file)  # a derived file removed: made again
    DatasetCatalog.get("cached_panoptic_train")
    assert os.path.isfile(semantic_file)
    assert description.ignore_label == 255


# ------------------------------------------------------------------------------------------------
# the config side


def test_descriptions_set_datasets_and_class_count_and_reload_from_the_saved_config(tmp_path):
    description_file = make_dataset(tmp_path, "coco_instances", name="config_instances", awkward=False)
    config = CONFIGS / "synthetic" / "instance" / "dinat_mini.yaml"
    cfg = load_project_config(str(config), [], [str(description_file)])
    assert cfg.DATASETS.TRAIN == ("config_instances_train",) and cfg.DATASETS.TEST == ("config_instances_val",)
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 3
    assert cfg.DATASETS.DESCRIPTIONS == [str(description_file)]

    saved = tmp_path / "config.yaml"
    saved.write_text(cfg.dump())
    again = load_project_config(str(saved))
    assert again.DATASETS.TRAIN == cfg.DATASETS.TRAIN and again.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 3
    twice = load_project_config(str(saved), [], [os.path.relpath(description_file)])  # named by the config and --dataset
    assert twice.DATASETS.TRAIN == ("config_instances_train",) and twice.DATASETS.DESCRIPTIONS == [str(description_file)]

    kept = load_project_config(str(config), ["DATASETS.TEST", "()"], [str(description_file)])
    assert kept.DATASETS.TEST == ()  # a command-line value wins
    with pytest.raises(DatasetDescriptionError, match=f"NUM_CLASSES 7 \\(command line\\) disagrees with the 3 classes of {description_file}"):
        load_project_config(str(config), ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "7"], [str(description_file)])
    with pytest.raises(DatasetDescriptionError, match="INPUT.DATASET_MAPPER_NAME 'coco_panoptic_lsj' cannot read format coco_instances"):
        load_project_config(str(CONFIGS / "synthetic" / "panoptic" / "dinat_mini.yaml"), [], [str(description_file)])


@pytest.mark.parametrize("format_name", list(MAPPERS))
def test_every_format_fits_its_configs(tmp_path, format_name):
    description_file = make_dataset(tmp_path, format_name, name=f"fits_{format_name}", awkward=False, num_train=2, num_val=1)
    task = CONFIG_OF[format_name]
    configs = sorted((CONFIGS / "synthetic" / task).glob("*.yaml")) + [CONFIGS / "ade20k" / task / "swin_t.yaml",
                                                                        CONFIGS / "coco" / task / "dinat_l.yaml"]  # fmt: skip
    for config in [c for c in configs if c.exists()]:
        cfg = load_project_config(str(config), [], [str(description_file)])
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == (3 if format_name == "coco_instances" else 5), config


# ------------------------------------------------------------------------------------------------
# the synthetic dataset through its description


def test_synthetic_description_trains_on_the_same_data_as_its_registered_names(tmp_path):
    spec = SyntheticSpec(num_train=5, num_val=2, min_size=64, max_size=96, seed=11)
    register_synthetic(str(tmp_path), spec, prefix="described_synthetic")
    generate_synthetic_dataset(str(tmp_path / "synthetic"), spec)
    config = CONFIGS / "synthetic" / "panoptic" / "dinat_mini.yaml"
    cfg = load_project_config(str(config), [], [str(tmp_path / "synthetic" / "synthetic.yaml")])
    assert cfg.DATASETS.TRAIN == ("synthetic_shapes_train",) and cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 5
    registered_cfg = load_project_config(str(config), ["DATASETS.TRAIN", "('described_synthetic_train_panoptic',)"])

    described = DatasetCatalog.get("synthetic_shapes_train")
    builtin = DatasetCatalog.get("described_synthetic_train_panoptic")
    assert [{k: v for k, v in r.items() if k != "sem_seg_file_name"} for r in described] == \
           [{k: v for k, v in r.items() if k != "sem_seg_file_name"} for r in builtin]  # fmt: skip
    for a, b in zip(described, builtin):
        np.testing.assert_array_equal(np.asarray(Image.open(a["sem_seg_file_name"])), np.asarray(Image.open(b["sem_seg_file_name"])))
    for mapper_name in ("mask_former_panoptic", "coco_panoptic_lsj"):
        for this_cfg in (cfg, registered_cfg):
            this_cfg.INPUT.DATASET_MAPPER_NAME = mapper_name
        for a, b in zip(described, builtin):
            torch.manual_seed(0), np.random.seed(0)
            one = build_mapper(cfg, True)(a)
            torch.manual_seed(0), np.random.seed(0)
            two = build_mapper(registered_cfg, True)(b)
            assert torch.equal(one["image"], two["image"])
            assert torch.equal(one["instances"].gt_classes, two["instances"].gt_classes)
            assert torch.equal(one["instances"].gt_masks, two["instances"].gt_masks)
            if "sem_seg" in one:
                assert torch.equal(one["sem_seg"], two["sem_seg"])
    assert MetadataCatalog.get("synthetic_shapes_val").stuff_classes == MetadataCatalog.get("described_synthetic_val_panoptic").stuff_classes


def test_val_images_sharing_a_file_name_in_two_folders_are_refused(tmp_path):
    """COCOPanopticEvaluator names prediction PNGs by the image's file name: two val images a/0000.jpg and
    b/0000.jpg would overwrite each other's predictions and score wrongly."""
    description_file = make_dataset(tmp_path, "coco_panoptic", name="clashing_names", awkward=False)
    val = split_paths(description_file, "val")
    content = json.loads(val["annotations"].read_text())
    for folder, image in zip("ab", content["images"][:2]):
        (val["images"] / folder).mkdir()
        (val["images"] / image["file_name"]).rename(val["images"] / folder / "same.jpg")
        image["file_name"] = f"{folder}/same.jpg"
    val["annotations"].write_text(json.dumps(content))
    with pytest.raises(DatasetContentError, match=r"\[val\] .*b/same.jpg and .*a/same.jpg share the name 'same'"):
        prepare_description(load_dataset_description(str(description_file)))


def test_a_description_without_train_split_trains_on_nothing_and_says_so(tmp_path):
    """DATASETS.TRAIN becomes empty (never the config's own training set); building the training loader says why."""
    from dinat_m2f.data import build_train_loader

    description_file = make_dataset(tmp_path, "semantic_masks", name="val_only", awkward=False, num_train=1, num_val=1)
    content = yaml.safe_load(description_file.read_text())
    del content["splits"]["train"]
    description_file.write_text(yaml.safe_dump(content))
    cfg = load_project_config(str(CONFIGS / "synthetic" / "semantic" / "dinat_mini.yaml"), [], [str(description_file)])
    assert cfg.DATASETS.TRAIN == () and cfg.DATASETS.TEST == ("val_only_val",)
    with pytest.raises(ValueError, match="DATASETS.TRAIN is empty: there is nothing to train on"):
        build_train_loader(cfg, mapper=None)
