"""Dataset registration: lazy loaders, errors naming the missing path and what makes it, COCO panoptic
with semantic labels made by the prepare script, ADE20K class facts."""
import contextlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from dinat_m2f.data.datasets import DatasetFileMissingError
from dinat_m2f.data.datasets.ade20k_categories import (
    ADE20K_150_CATEGORIES,
    ADE20K_150_COLORS,
    ADE20K_150_NAMES,
    ADE20K_INSTANCE_IDS,
    ade20k_instance_metadata,
    ade20k_panoptic_metadata,
)
from dinat_m2f.data.datasets.register_ade20k import register_ade20k_instance, register_ade20k_panoptic
from dinat_m2f.data.datasets.register_coco import register_coco_panoptic_with_sem_seg
from project_paths import REPO, import_script


def load_script(name):
    return import_script(REPO / "datasets" / f"{name}.py", name)


@contextlib.contextmanager
def registered_at(root, register, names):
    """Register ``names`` again under ``root`` for the test, then restore the originals."""
    saved = {n: (DatasetCatalog[n], MetadataCatalog.get(n).as_dict()) for n in names}
    for n in names:
        DatasetCatalog.remove(n)
        MetadataCatalog.remove(n)
    try:
        register(str(root))
        yield
    finally:
        for n, (loader, meta) in saved.items():
            if n in DatasetCatalog:
                DatasetCatalog.remove(n)
            MetadataCatalog.remove(n)
            DatasetCatalog.register(n, loader)
            meta.pop("name")
            MetadataCatalog.get(n).set(**meta)


COCO_NAMES = [f"coco_2017_{s}_panoptic{t}" for s in ("train", "val") for t in ("_with_sem_seg", "_sem_seg")]
ADE_PANOPTIC_NAMES = ["ade20k_panoptic_train", "ade20k_panoptic_val"]
ADE_INSTANCE_NAMES = ["ade20k_instance_train", "ade20k_instance_val"]


def expect_missing(name, path, remedy):
    with pytest.raises(DatasetFileMissingError) as error:
        DatasetCatalog.get(name)
    assert str(path) in str(error.value) and remedy in str(error.value), str(error.value)


def test_registered_names_and_metadata():
    for name in COCO_NAMES + ADE_PANOPTIC_NAMES + ADE_INSTANCE_NAMES + ["ade20k_sem_seg_val", "coco_2017_val",
                                                                       "cityscapes_fine_panoptic_val"]:  # fmt: skip
        assert name in DatasetCatalog.list(), name
    meta = MetadataCatalog.get("coco_2017_val_panoptic_with_sem_seg")
    assert meta.evaluator_type == "coco_panoptic_seg" and len(meta.stuff_classes) == 133 and len(meta.thing_classes) == 80
    assert meta.json_file.endswith(os.path.join("coco", "annotations", "instances_val2017.json"))
    assert meta.sem_seg_root.endswith(os.path.join("coco", "panoptic_semseg_val2017"))
    assert MetadataCatalog.get("coco_2017_val_panoptic_sem_seg").evaluator_type == "sem_seg"
    meta = MetadataCatalog.get("ade20k_panoptic_val")
    assert meta.evaluator_type == "ade20k_panoptic_seg" and len(meta.stuff_classes) == 150 and len(meta.thing_classes) == 100
    assert MetadataCatalog.get("ade20k_instance_val").evaluator_type == "coco"
    assert len(MetadataCatalog.get("ade20k_sem_seg_val").stuff_colors) == 150


def test_ade20k_class_facts():
    assert len(ADE20K_150_NAMES) == len(ADE20K_150_COLORS) == 150
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in ADE20K_150_COLORS)
    assert len(ADE20K_INSTANCE_IDS) == 100 and ADE20K_INSTANCE_IDS == sorted(set(ADE20K_INSTANCE_IDS))
    named = {ADE20K_150_NAMES[i]: i for i in range(150)}
    assert [named[n] for n in ("wall", "sky", "road", "bed", "person", "car", "flag")] == [0, 2, 6, 7, 12, 20, 149]
    things = {c["name"] for c in ADE20K_150_CATEGORIES if c["isthing"]}
    assert {"bed", "person", "car", "chair", "flag"} <= things and not {"wall", "sky", "road", "grass"} & things
    panoptic = ade20k_panoptic_metadata()
    assert panoptic["thing_dataset_id_to_contiguous_id"][12] == 12  # not contiguous among things
    assert len(panoptic["stuff_dataset_id_to_contiguous_id"]) == 150
    instance = ade20k_instance_metadata()
    assert sorted(instance["thing_dataset_id_to_contiguous_id"].values()) == list(range(100))
    assert instance["thing_classes"][:4] == ["bed", "windowpane", "cabinet", "person"]


def test_ade20k_missing_paths_name_the_remedy(tmp_path):
    with registered_at(tmp_path, lambda r: (register_ade20k_panoptic(r), register_ade20k_instance(r)),
                       ADE_PANOPTIC_NAMES + ADE_INSTANCE_NAMES):  # fmt: skip
        ade = tmp_path / "ADEChallengeData2016"
        expect_missing("ade20k_panoptic_val", ade / "images" / "validation", "ADEChallengeData2016.zip")
        (ade / "images" / "validation").mkdir(parents=True)
        expect_missing("ade20k_panoptic_val", ade / "ade20k_panoptic_val.json", "prepare_ade20k_pan_seg.py")
        expect_missing("ade20k_instance_val", ade / "ade20k_instance_val.json", "prepare_ade20k_ins_seg.py")
        (ade / "ade20k_panoptic_val.json").write_text("{}")
        (ade / "ade20k_panoptic_val").mkdir()
        expect_missing("ade20k_panoptic_val", ade / "annotations_detectron2" / "validation", "prepare_ade20k_sem_seg.py")


@pytest.mark.parametrize("content, cause", [
    ('{"images": [{"id": 1, "file_name": "a.jpg", "hei', "is not valid JSON"),  # truncated
    ("", "is not valid JSON"),
    ("[1, 2]", "does not have the layout of a COCO"),
])  # fmt: skip
def test_malformed_annotation_json_names_the_file(tmp_path, content, cause):
    """json / pycocotools raise 'Expecting value: line 1 column 1 (char 0)' without saying which file."""
    with registered_at(tmp_path, lambda r: (register_ade20k_panoptic(r), register_ade20k_instance(r)),
                       ADE_PANOPTIC_NAMES + ADE_INSTANCE_NAMES):  # fmt: skip
        ade = tmp_path / "ADEChallengeData2016"
        for folder in ("images/validation", "ade20k_panoptic_val", "annotations_detectron2/validation"):
            (ade / folder).mkdir(parents=True)
        for name in ("ade20k_panoptic_val", "ade20k_instance_val"):
            (ade / f"{name}.json").write_text(content)
            with pytest.raises(ValueError) as error:
                DatasetCatalog.get(name)
            assert f"{ade / name}.json {cause}" in str(error.value), str(error.value)


def test_builtin_datasets_name_the_missing_download():
    for name, key, remedy in (
        ("ade20k_sem_seg_val", "image_root", "ADEChallengeData2016.zip"),
        ("coco_2017_val", "image_root", "val2017.zip"),
        ("cityscapes_fine_sem_seg_val", "image_dir", "leftImg8bit_trainvaltest.zip"),
        ("cityscapes_fine_panoptic_val", "image_root", "leftImg8bit_trainvaltest.zip"),
    ):
        path = MetadataCatalog.get(name).get(key)
        if os.path.exists(path):
            pytest.skip(f"{path} exists here: the real dataset is installed")
        expect_missing(name, path, remedy)


def write_coco_panoptic(root, split, rng):
    """One 24x32 COCO panoptic image: sky (id 187) above grass (193), a person (1) and a car (3), void."""
    from panopticapi.utils import id2rgb

    coco = root / "coco"
    for folder in (f"{split}2017", f"panoptic_{split}2017", "annotations"):
        (coco / folder).mkdir(parents=True, exist_ok=True)
    ids = np.full((24, 32), 193 * 1000, np.int32)
    ids[:10] = 187 * 1000
    ids[4:14, 3:9] = 1001
    ids[12:20, 15:27] = 3001
    ids[22:, 30:] = 0
    image_id = 139 if split == "val" else 9
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(coco / f"{split}2017" / f"{image_id:012d}.jpg")
    Image.fromarray(id2rgb(ids)).save(coco / f"panoptic_{split}2017" / f"{image_id:012d}.png")
    segments = [{"id": i, "category_id": i // 1000, "area": int((ids == i).sum()), "bbox": [0, 0, 1, 1], "iscrowd": 0}
                for i in (1001, 3001, 187000, 193000)]  # fmt: skip
    content = {"images": [{"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": 24, "width": 32}],
               "annotations": [{"image_id": image_id, "file_name": f"{image_id:012d}.png", "segments_info": segments}],
               "categories": COCO_CATEGORIES}  # fmt: skip
    (coco / "annotations" / f"panoptic_{split}2017.json").write_text(json.dumps(content))
    return ids


def test_coco_panoptic_with_semantic_labels_from_the_prepare_script(tmp_path):
    contiguous = {c["id"]: i for i, c in enumerate(COCO_CATEGORIES)}
    with registered_at(tmp_path, register_coco_panoptic_with_sem_seg, COCO_NAMES):
        expect_missing("coco_2017_val_panoptic_with_sem_seg", tmp_path / "coco" / "val2017", "val2017.zip")
        rng = np.random.default_rng(0)
        ids = {split: write_coco_panoptic(tmp_path, split, rng) for split in ("train", "val")}
        expect_missing("coco_2017_val_panoptic_with_sem_seg", tmp_path / "coco" / "panoptic_semseg_val2017",
                       "prepare_coco_semantic_annos_from_panoptic_annos.py")  # fmt: skip
        expect_missing("coco_2017_val_panoptic_sem_seg", tmp_path / "coco" / "panoptic_semseg_val2017",
                       "prepare_coco_semantic_annos_from_panoptic_annos.py")  # fmt: skip

        load_script("prepare_coco_semantic_annos_from_panoptic_annos").main(["--root", str(tmp_path), "--workers", "1"])
        for split in ("train", "val"):
            expected = np.full((24, 32), 255, np.uint8)
            for segment_id in set(np.unique(ids[split]).tolist()) - {0}:
                expected[ids[split] == segment_id] = contiguous[segment_id // 1000]
            name = f"{139 if split == 'val' else 9:012d}.png"
            semantic = np.asarray(Image.open(tmp_path / "coco" / f"panoptic_semseg_{split}2017" / name))
            assert np.array_equal(semantic, expected)
            assert set(np.unique(semantic).tolist()) == {0, 2, 119, 125, 255}

        (record,) = DatasetCatalog.get("coco_2017_val_panoptic_with_sem_seg")
        assert record["image_id"] == 139 and (record["height"], record["width"]) == (24, 32)
        assert record["file_name"] == str(tmp_path / "coco" / "val2017" / "000000000139.jpg")
        assert record["sem_seg_file_name"] == str(tmp_path / "coco" / "panoptic_semseg_val2017" / "000000000139.png")
        by_id = {s["id"]: (s["category_id"], s["isthing"]) for s in record["segments_info"]}
        assert by_id == {1001: (0, True), 3001: (2, True), 187000: (119, False), 193000: (125, False)}

        (semantic_record,) = DatasetCatalog.get("coco_2017_val_panoptic_sem_seg")
        assert semantic_record["sem_seg_file_name"] == record["sem_seg_file_name"]


def test_panoptic_json_problems_are_all_named_when_it_is_loaded(tmp_path):
    """Duplicate image ids (one image's segments silently replaced another's), a segment of an unknown
    category, an annotation without image entry and a repeated segment id: one error lists them all."""
    from dinat_m2f.data.datasets import DatasetFileError
    from dinat_m2f.data.datasets.panoptic_json import load_panoptic_json
    from dinat_m2f.data.datasets.synthetic import synthetic_metadata

    segment = {"id": 1001, "category_id": 1, "iscrowd": 0}
    content = {
        "images": [{"id": 5, "file_name": "a.jpg", "height": 8, "width": 8},
                   {"id": 5, "file_name": "b.jpg", "height": 8, "width": 8}],
        "annotations": [{"image_id": 5, "file_name": "a.png", "segments_info": [segment, dict(segment, id=1002, category_id=99)]},
                        {"image_id": 6, "file_name": "c.png", "segments_info": [segment, segment]}],
        "categories": [{"id": 1, "name": "circle", "isthing": 1}],
    }  # fmt: skip
    json_file = tmp_path / "panoptic.json"
    json_file.write_text(json.dumps(content))
    with pytest.raises(DatasetFileError) as error:
        load_panoptic_json(str(json_file), str(tmp_path), str(tmp_path), None, synthetic_metadata())
    message = str(error.value)
    assert f"{json_file} cannot be used: 4 problems" in message
    for part in ("image id 5 is listed twice ('a.jpg' and 'b.jpg')",
                 "segment 1002 of image id 5 has category_id 99, which is not in 'categories'",
                 "annotations[1] has image_id 6, which has no 'images' entry",
                 "image id 6 lists segment id 1001 twice"):  # fmt: skip
        assert part in message, message


def test_instance_json_problems_are_all_named_when_it_is_loaded(tmp_path):
    from dinat_m2f.data.datasets import DatasetFileError
    from dinat_m2f.data.datasets.coco_json import load_coco_instances

    polygon = [[0, 0, 4, 0, 4, 4]]
    content = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": 8, "width": 8},
                   {"id": 1, "file_name": "b.jpg", "height": 8, "width": 8}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "segmentation": polygon},
                        {"id": 1, "image_id": 2, "category_id": 8, "segmentation": {"counts": "", "size": [9, 8]}},
                        {"id": 3, "image_id": 1, "category_id": 7}],
        "categories": [{"id": 7, "name": "star"}],
    }  # fmt: skip
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps(content))
    with pytest.raises(DatasetFileError) as error:
        load_coco_instances(str(json_file), str(tmp_path), {7: 0})
    message = str(error.value)
    for part in ("image id 1 is listed twice ('a.jpg' and 'b.jpg')", "annotation id 1 is listed twice",
                 "annotation id 1 has image_id 2, which has no 'images' entry",
                 "annotation id 1 has category_id 8, which is not in 'categories'",
                 "annotation id 3 has no 'segmentation'"):  # fmt: skip
        assert part in message, message
    assert "5 problems" in message
