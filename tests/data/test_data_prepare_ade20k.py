"""The ADE20K prepare scripts on a tiny release in the real layout (JPEG images, semantic PNGs with
0 = other, instance PNGs with R = benchmark class and G = instance number), then the registered
panoptic / instance datasets, a mapper and the evaluators (non-contiguous thing ids) on their output."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog
from detectron2.evaluation import COCOPanopticEvaluator
from detectron2.structures import BitMasks, Instances
from dinat_m2f.config import get_project_cfg
from dinat_m2f.data import MaskFormerPanopticDatasetMapper
from dinat_m2f.data.datasets.ade20k_categories import ADE20K_INSTANCE_IDS
from dinat_m2f.data.datasets.register_ade20k import register_ade20k_instance, register_ade20k_panoptic
from dinat_m2f.evaluation import InstanceSegEvaluator, SemSegEvaluator, build_evaluator
from test_data_registration import load_script, registered_at

WALL, FLOOR, BED, PERSON = 0, 3, 7, 12  # 0-based ADE20K ids
H, W = 30, 40
SPLITS = {"train": "training", "val": "validation"}


def scene(shift):
    """Semantic labels (class + 1, 0 = other) and the instance PNG of one image; ``shift`` moves things."""
    semantic = np.full((H, W), FLOOR + 1, np.uint8)
    semantic[:10] = WALL + 1
    semantic[12:22, 2 + shift : 14 + shift] = BED + 1
    semantic[5:25, 20:28] = PERSON + 1
    semantic[5:25, 30:37] = PERSON + 1
    semantic[26:, 36:] = 0
    encoded = np.zeros((H, W, 3), np.uint8)
    bed_class, person_class = ADE20K_INSTANCE_IDS.index(BED) + 1, ADE20K_INSTANCE_IDS.index(PERSON) + 1
    encoded[12:20, 2 + shift : 14 + shift] = (bed_class, 1, 0)  # rows 20-21 of the bed: no instance
    encoded[5:25, 19:28] = (person_class, 2, 0)  # one column wider than its semantic region
    encoded[5:25, 30:37] = (person_class, 3, 0)
    return semantic, encoded


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    ade = root / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for split, folder in SPLITS.items():
        for sub in ("images", "annotations", "annotations_instance"):
            (ade / sub / folder).mkdir(parents=True)
        for k in (1, 2):
            stem = f"ADE_{split}_{k:08d}"
            semantic, encoded = scene(shift=k)
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(ade / "images" / folder / f"{stem}.jpg")
            Image.fromarray(semantic).save(ade / "annotations" / folder / f"{stem}.png")
            Image.fromarray(encoded).save(ade / "annotations_instance" / folder / f"{stem}.png")
    for script in ("prepare_ade20k_sem_seg", "prepare_ade20k_ins_seg", "prepare_ade20k_pan_seg"):
        load_script(script).main(["--root", str(root), "--workers", "1"])
    return root


def expected_segments(shift):
    """category -> list of masks the panoptic annotation must have (things win over stuff)."""
    semantic, encoded = scene(shift)
    instance = encoded[:, :, 1]
    stuff = lambda c: (semantic == c + 1) & (instance == 0)  # noqa: E731
    return {WALL: [stuff(WALL)], FLOOR: [stuff(FLOOR)], BED: [instance == 1], PERSON: [instance == 2, instance == 3]}


def test_semantic_script(ade_root):
    for split, folder in SPLITS.items():
        semantic, _ = scene(shift=2)
        converted = np.asarray(Image.open(ade_root / "ADEChallengeData2016" / "annotations_detectron2" / folder / f"ADE_{split}_00000002.png"))
        assert converted.dtype == np.uint8
        assert np.array_equal(converted, np.where(semantic == 0, 255, semantic.astype(int) - 1))


def test_instance_script(ade_root):
    from pycocotools.coco import COCO

    coco = COCO(str(ade_root / "ADEChallengeData2016" / "ade20k_instance_val.json"))
    assert sorted(coco.getCatIds()) == ADE20K_INSTANCE_IDS
    assert [coco.imgs[i]["file_name"] for i in (1, 2)] == ["ADE_val_00000001.jpg", "ADE_val_00000002.jpg"]
    for image_id in (1, 2):
        expected = expected_segments(shift=image_id)
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert sorted(a["category_id"] for a in annotations) == [BED, PERSON, PERSON]
        masks = {c: [] for c in (BED, PERSON)}
        for ann in annotations:
            mask = coco.annToMask(ann).astype(bool)
            assert ann["area"] == mask.sum() and ann["iscrowd"] == 0
            masks[ann["category_id"]].append(mask)
        for category in (BED, PERSON):
            assert sorted(m.tobytes() for m in masks[category]) == sorted(m.tobytes() for m in expected[category])


def test_panoptic_script(ade_root):
    from panopticapi.evaluation import pq_compute
    from panopticapi.utils import rgb2id

    ade = ade_root / "ADEChallengeData2016"
    json_file, folder = str(ade / "ade20k_panoptic_val.json"), str(ade / "ade20k_panoptic_val")
    with open(json_file) as f:
        content = json.load(f)
    assert len(content["categories"]) == 150 and sum(c["isthing"] for c in content["categories"]) == 100
    for annotation in content["annotations"]:
        ids = rgb2id(np.asarray(Image.open(f"{folder}/{annotation['file_name']}"), dtype=np.uint32))
        found = {}
        for segment in annotation["segments_info"]:
            mask = ids == segment["id"]
            assert segment["area"] == mask.sum()
            found.setdefault(segment["category_id"], []).append(mask)
        expected = expected_segments(shift=annotation["image_id"])
        assert set(found) == set(expected)
        for category, masks in expected.items():
            assert sorted(m.tobytes() for m in found[category]) == sorted(m.tobytes() for m in masks)
        covered = np.any([m for masks in expected.values() for m in masks], axis=0)
        assert (ids[~covered] == 0).all()  # "other" and the bed rows without an instance are void
    assert pq_compute(json_file, json_file, folder, folder)["All"]["pq"] == pytest.approx(1.0)


def perfect_outputs(record, coco):
    from panopticapi.utils import rgb2id

    ids = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]), dtype=np.uint32))
    semantic = np.asarray(Image.open(record["sem_seg_file_name"])).astype(np.int64)
    annotations = coco.loadAnns(coco.getAnnIds(imgIds=[record["image_id"]]))
    masks = torch.as_tensor(np.stack([coco.annToMask(a).astype(bool) for a in annotations]))
    instances = Instances((H, W))
    instances.pred_masks = masks
    instances.pred_boxes = BitMasks(masks).get_bounding_boxes()
    instances.pred_classes = torch.tensor([a["category_id"] for a in annotations])  # contiguous == ADE id here
    instances.scores = torch.ones(len(annotations))
    segments = [{k: s[k] for k in ("id", "category_id", "isthing")} for s in record["segments_info"]]
    scores = torch.nn.functional.one_hot(torch.as_tensor(np.where(semantic == 255, 0, semantic)), 150)
    return {"panoptic_seg": (torch.as_tensor(ids.astype(np.int32)), segments), "instances": instances,
            "sem_seg": scores.permute(2, 0, 1).float()}  # fmt: skip


def test_registered_datasets_mapper_and_evaluators_on_prepared_files(ade_root, tmp_path):
    from pycocotools.coco import COCO

    names = [f"ade20k_{t}_{s}" for t in ("panoptic", "instance") for s in SPLITS]
    register = lambda r: (register_ade20k_panoptic(r), register_ade20k_instance(r))  # noqa: E731
    with registered_at(ade_root, register, names):
        records = DatasetCatalog.get("ade20k_panoptic_val")
        assert [r["image_id"] for r in records] == [1, 2]
        assert {(s["category_id"], s["isthing"]) for s in records[0]["segments_info"]} == {
            (WALL, False), (FLOOR, False), (BED, True), (PERSON, True)}  # fmt: skip
        instance_records = DatasetCatalog.get("ade20k_instance_val")
        contiguous = {ADE20K_INSTANCE_IDS.index(BED), ADE20K_INSTANCE_IDS.index(PERSON)}
        assert {a["category_id"] for r in instance_records for a in r["annotations"]} == contiguous

        cfg = get_project_cfg()
        cfg.DATASETS.TRAIN = ("ade20k_panoptic_train",)
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.RANDOM_FLIP = (H,), "none"
        train_record = DatasetCatalog.get("ade20k_panoptic_train")[0]
        out = MaskFormerPanopticDatasetMapper(cfg, True)(train_record)
        assert out["instances"].gt_classes.tolist() == [s["category_id"] for s in train_record["segments_info"]]
        assert tuple(out["sem_seg"].shape) == (H, W)

        test = cfg.MODEL.MASK_FORMER.TEST
        test.PANOPTIC_ON, test.INSTANCE_ON, test.SEMANTIC_ON = True, True, True
        evaluator = build_evaluator(cfg, "ade20k_panoptic_val", str(tmp_path))
        assert [type(e) for e in evaluator._evaluators] == [COCOPanopticEvaluator, InstanceSegEvaluator, SemSegEvaluator]
        coco = COCO(str(ade_root / "ADEChallengeData2016" / "ade20k_instance_val.json"))
        evaluator.reset()
        for record in records:
            inputs = {k: record[k] for k in ("file_name", "image_id", "height", "width")}
            evaluator.process([inputs], [perfect_outputs(record, coco)])
        results = evaluator.evaluate()
        assert results["panoptic_seg"]["PQ"] == pytest.approx(100.0)
        assert results["segm"]["AP"] == pytest.approx(100.0)
        assert results["sem_seg"]["mIoU"] == pytest.approx(100.0)
