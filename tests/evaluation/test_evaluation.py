"""Evaluators on real-format ground truth: perfect predictions score 100 (PQ, AP, mIoU, Cityscapes IoU/AP)
and small hand-computed wrong predictions score the value worked out in each test's docstring."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, DatasetEvaluators
from detectron2.structures import BitMasks, Instances
from dinat_m2f.config import get_project_cfg
from dinat_m2f.data.datasets import SyntheticSpec, register_synthetic
from dinat_m2f.data.datasets.synthetic import SYNTHETIC_CATEGORIES, synthetic_metadata
from dinat_m2f.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    InstanceSegEvaluator,
    SemSegEvaluator,
    build_evaluator,
    check_ground_truth_files,
)
from dinat_m2f.data.image_files import ImageFileError

PREFIX = "eval_synthetic"


def register(name, records, **metadata):
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(**metadata)


def run(evaluator, inputs, outputs):
    evaluator.reset()
    for i, o in zip(inputs, outputs):
        evaluator.process([i], [o])
    return evaluator.evaluate()


def instances_from(masks, classes, scores):
    masks = torch.as_tensor(np.stack(masks))
    instances = Instances(tuple(masks.shape[1:]))
    instances.pred_masks = masks
    instances.pred_boxes = BitMasks(masks).get_bounding_boxes()
    instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
    instances.scores = torch.tensor(scores, dtype=torch.float32)
    return instances


def panoptic_ids(path):
    from panopticapi.utils import rgb2id

    return rgb2id(np.asarray(Image.open(path), dtype=np.uint32))


# ------------------------------------------------------------------------------------------------
# perfect predictions on the synthetic dataset, through build_evaluator


@pytest.fixture(scope="module")
def synthetic_val(tmp_path_factory):
    register_synthetic(str(tmp_path_factory.mktemp("datasets")), SyntheticSpec(num_train=1, num_val=5, seed=7), PREFIX)
    return DatasetCatalog.get(f"{PREFIX}_val_panoptic")


def perfect_outputs(record):
    """The ground truth as MaskFormer outputs: panoptic map, instances and semantic scores."""
    ids = panoptic_ids(record["pan_seg_file_name"])
    semantic = np.asarray(Image.open(record["sem_seg_file_name"])).astype(np.int64)
    segments = [{k: s[k] for k in ("id", "category_id", "isthing")} for s in record["segments_info"]]
    things = [s for s in record["segments_info"] if s["isthing"]]
    scores = torch.nn.functional.one_hot(torch.as_tensor(np.where(semantic == 255, 0, semantic)), 5)
    return {
        "panoptic_seg": (torch.as_tensor(ids.astype(np.int32)), segments),
        "instances": instances_from([ids == s["id"] for s in things], [s["category_id"] for s in things], [1.0] * len(things)),
        "sem_seg": scores.permute(2, 0, 1).float(),
    }


def test_build_evaluator_on_synthetic_panoptic_perfect_predictions(synthetic_val, tmp_path):
    cfg = get_project_cfg()
    test = cfg.MODEL.MASK_FORMER.TEST
    test.PANOPTIC_ON, test.INSTANCE_ON, test.SEMANTIC_ON = True, True, True
    evaluator = build_evaluator(cfg, f"{PREFIX}_val_panoptic", str(tmp_path))
    assert isinstance(evaluator, DatasetEvaluators)
    assert [type(e) for e in evaluator._evaluators] == [COCOPanopticEvaluator, COCOEvaluator, SemSegEvaluator]

    inputs = [{k: r[k] for k in ("file_name", "image_id", "height", "width")} for r in synthetic_val]
    results = run(evaluator, inputs, [perfect_outputs(r) for r in synthetic_val])
    assert results["panoptic_seg"]["PQ"] == pytest.approx(100.0)
    assert results["panoptic_seg"]["PQ_th"] == pytest.approx(100.0) and results["panoptic_seg"]["PQ_st"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert results["sem_seg"]["mIoU"] == pytest.approx(100.0)
    assert os.path.isfile(tmp_path / "predictions.json")

    test.INSTANCE_ON, test.SEMANTIC_ON = False, False
    assert isinstance(build_evaluator(cfg, f"{PREFIX}_val_panoptic", str(tmp_path)), COCOPanopticEvaluator)


def test_build_evaluator_on_synthetic_instance_and_semantic_sets(synthetic_val, tmp_path):
    cfg = get_project_cfg()
    inputs = [{k: r[k] for k in ("file_name", "image_id", "height", "width")} for r in synthetic_val]
    outputs = [perfect_outputs(r) for r in synthetic_val]

    evaluator = build_evaluator(cfg, f"{PREFIX}_val", str(tmp_path))
    assert type(evaluator) is COCOEvaluator
    assert run(evaluator, inputs, [{"instances": o["instances"]} for o in outputs])["segm"]["AP"] == pytest.approx(100.0)

    evaluator = build_evaluator(cfg, f"{PREFIX}_val_sem_seg", str(tmp_path))
    assert type(evaluator) is SemSegEvaluator
    assert run(evaluator, inputs, [{"sem_seg": o["sem_seg"]} for o in outputs])["sem_seg"]["mIoU"] == pytest.approx(100.0)


def test_build_evaluator_picks_by_evaluator_type(tmp_path):
    cfg = get_project_cfg()
    test = cfg.MODEL.MASK_FORMER.TEST
    test.PANOPTIC_ON, test.INSTANCE_ON, test.SEMANTIC_ON = True, True, False
    thing_map = {7: 7, 12: 12}
    register("eval_ade_like", [], evaluator_type="ade20k_panoptic_seg", json_file=str(write_instance_json(tmp_path, 7)),
             thing_classes=["bed", "person"], thing_dataset_id_to_contiguous_id=thing_map,
             stuff_dataset_id_to_contiguous_id={0: 0, 7: 7, 12: 12})  # fmt: skip
    evaluators = build_evaluator(cfg, "eval_ade_like", str(tmp_path))._evaluators
    assert [type(e) for e in evaluators] == [COCOPanopticEvaluator, InstanceSegEvaluator]

    register("eval_cityscapes_like", [], evaluator_type="cityscapes_panoptic_seg", gt_dir=str(tmp_path),
             thing_dataset_id_to_contiguous_id={26: 13}, stuff_dataset_id_to_contiguous_id={7: 0})  # fmt: skip
    test.SEMANTIC_ON = True
    evaluators = build_evaluator(cfg, "eval_cityscapes_like", str(tmp_path))._evaluators
    assert [type(e) for e in evaluators] == [COCOPanopticEvaluator, CityscapesInstanceEvaluator, CityscapesSemSegEvaluator]
    register("eval_cityscapes_sem", [], evaluator_type="cityscapes_sem_seg", gt_dir=str(tmp_path))
    assert type(build_evaluator(cfg, "eval_cityscapes_sem")) is CityscapesSemSegEvaluator

    register("eval_nothing", [], evaluator_type="pascal_voc")
    with pytest.raises(ValueError, match="eval_nothing.*pascal_voc"):
        build_evaluator(cfg, "eval_nothing", str(tmp_path))


# ------------------------------------------------------------------------------------------------
# hand-computed cases


def tiny_label_map():
    """10x10: sky (contiguous 3) rows 0-4, grass (4) rows 5-9, a circle (0) at rows 6-9, cols 0-3."""
    labels = np.full((10, 10), 4, np.uint8)
    labels[:5] = 3
    labels[6:, :4] = 0
    return labels


def test_panoptic_quality_of_a_wrong_prediction(tmp_path):
    """GT: sky 50 px (id 21000), grass 34 px (22000), circle 16 px (1001).
    Prediction: sky rows 0-5 (60 px), grass rows 6-9 cols 4-9 (24 px), the circle's pixels as a *square*.
    sky IoU 50/60, grass IoU 24/34 -> TPs; circle FN, square FP -> PQ 0 for both.
    PQ = (50/60 + 24/34 + 0 + 0) / 4 = 38.480; PQ_st = 76.961; PQ_th = 0."""
    from panopticapi.utils import id2rgb

    labels = tiny_label_map()
    gt = np.where(labels == 3, 21000, np.where(labels == 4, 22000, 1001)).astype(np.int32)
    (tmp_path / "gt").mkdir()
    Image.fromarray(id2rgb(gt)).save(tmp_path / "gt" / "000001.png")
    segments = [{"id": i, "category_id": i // 1000, "area": int((gt == i).sum()), "bbox": [0, 0, 10, 10], "iscrowd": 0}
                for i in (1001, 21000, 22000)]  # fmt: skip
    gt_json = {"images": [{"id": 1, "file_name": "000001.jpg", "height": 10, "width": 10}],
               "annotations": [{"image_id": 1, "file_name": "000001.png", "segments_info": segments}],
               "categories": SYNTHETIC_CATEGORIES}  # fmt: skip
    (tmp_path / "gt.json").write_text(json.dumps(gt_json))
    register("eval_tiny_panoptic", [], panoptic_root=str(tmp_path / "gt"), panoptic_json=str(tmp_path / "gt.json"),
             evaluator_type="coco_panoptic_seg", **synthetic_metadata())  # fmt: skip

    prediction = np.full((10, 10), 2, np.int32)  # segment 2: grass
    prediction[:6] = 1  # segment 1: sky
    prediction[6:, :4] = 3  # segment 3: square
    segments_info = [{"id": 1, "category_id": 3, "isthing": False}, {"id": 2, "category_id": 4, "isthing": False},
                     {"id": 3, "category_id": 1, "isthing": True}]  # fmt: skip
    inputs = [{"file_name": "000001.jpg", "image_id": 1}]
    evaluator = COCOPanopticEvaluator("eval_tiny_panoptic", str(tmp_path / "out"))
    wrong = run(evaluator, inputs, [{"panoptic_seg": (torch.as_tensor(prediction), segments_info)}])["panoptic_seg"]
    assert wrong["PQ"] == pytest.approx(100 * (50 / 60 + 24 / 34) / 4)
    assert wrong["PQ_st"] == pytest.approx(100 * (50 / 60 + 24 / 34) / 2) and wrong["PQ_th"] == 0

    # the circle as a circle, the sky/grass boundary right (the evaluator rewrote the old segments_info)
    segments_info = [{"id": 1, "category_id": 3, "isthing": False}, {"id": 2, "category_id": 4, "isthing": False},
                     {"id": 3, "category_id": 0, "isthing": True}]  # fmt: skip
    prediction[5] = 2
    right = run(evaluator, inputs, [{"panoptic_seg": (torch.as_tensor(prediction), segments_info)}])["panoptic_seg"]
    assert right["PQ"] == pytest.approx(100.0)


def test_semantic_miou_of_a_wrong_prediction(tmp_path):
    """GT as above with pixel (0, 0) void (255): sky 49, grass 34, circle 16 px.
    Prediction: sky rows 0-5, grass rows 6-9 (the circle missed). Void pixels do not count:
    sky IoU 49/59, grass IoU 24/50, circle 0 -> mIoU = (49/59 + 24/50 + 0) / 3 = 43.684."""
    labels = tiny_label_map()
    labels[0, 0] = 255
    Image.fromarray(labels).save(tmp_path / "labels.png")
    register("eval_tiny_sem_seg", [{"file_name": "tiny.jpg", "sem_seg_file_name": str(tmp_path / "labels.png")}],
             evaluator_type="sem_seg", ignore_label=255, stuff_classes=[c["name"] for c in SYNTHETIC_CATEGORIES])  # fmt: skip
    prediction = np.full((10, 10), 4)
    prediction[:6] = 3
    scores = torch.nn.functional.one_hot(torch.as_tensor(prediction), 5).permute(2, 0, 1).float()
    evaluator = SemSegEvaluator("eval_tiny_sem_seg", distributed=False)
    result = run(evaluator, [{"file_name": "tiny.jpg"}], [{"sem_seg": scores}])["sem_seg"]
    assert result["mIoU"] == pytest.approx(100 * (49 / 59 + 24 / 50) / 3)
    assert result["IoU-circle"] == 0 and result["IoU-sky"] == pytest.approx(100 * 49 / 59)

    truth = torch.nn.functional.one_hot(torch.as_tensor(np.where(labels == 255, 0, labels).astype(np.int64)), 5)
    perfect = run(evaluator, [{"file_name": "tiny.jpg"}], [{"sem_seg": truth.permute(2, 0, 1).float()}])
    assert perfect["sem_seg"]["mIoU"] == pytest.approx(100.0)


def tiny_instance_masks():
    """20x20, two ground-truth instances of 16 px; a prediction covering 10 px of the second (IoU 0.625)."""
    first, second, partial = (np.zeros((20, 20), bool) for _ in range(3))
    first[2:6, 2:6] = True
    second[10:14, 10:14] = True
    partial[10:12, 10:14] = True
    partial[12, 10:12] = True
    return first, second, partial


def write_instance_json(tmp_path, category_id, other_category_id=None):
    import pycocotools.mask as mask_util

    annotations = []
    for i, mask in enumerate(tiny_instance_masks()[:2]):
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode()
        annotations.append({"id": i + 1, "image_id": 1, "category_id": category_id, "segmentation": rle,
                            "area": 16, "bbox": [2 + 8 * i, 2 + 8 * i, 4, 4], "iscrowd": 0})  # fmt: skip
    content = {"images": [{"id": 1, "file_name": "tiny.jpg", "height": 20, "width": 20}], "annotations": annotations,
               "categories": [{"id": c, "name": f"thing {c}"} for c in (category_id, other_category_id) if c is not None]}  # fmt: skip
    path = tmp_path / f"instances_{category_id}.json"
    path.write_text(json.dumps(content))
    return path


# Mask AP of the wrong prediction: at IoU thresholds 0.50, 0.55, 0.60 both instances match (AP 1); at the
# 7 thresholds 0.65..0.95 only the first does: recall 0.5 at precision 1 -> 51 of COCO's 101 recall points.
WRONG_AP = 100 * (3 + 7 * 51 / 101) / 10  # 65.347


def test_coco_ap_of_a_wrong_prediction(tmp_path):
    register("eval_tiny_instances", [], json_file=str(write_instance_json(tmp_path, 1)), evaluator_type="coco",
             thing_classes=["circle"], thing_dataset_id_to_contiguous_id={1: 0})  # fmt: skip
    first, second, partial = tiny_instance_masks()
    evaluator = COCOEvaluator("eval_tiny_instances", tasks=("segm",), distributed=False)
    inputs = [{"image_id": 1, "file_name": "tiny.jpg", "height": 20, "width": 20}]
    wrong = run(evaluator, inputs, [{"instances": instances_from([first, partial], [0, 0], [0.9, 0.8])}])["segm"]
    assert wrong["AP"] == pytest.approx(WRONG_AP) and wrong["AP50"] == pytest.approx(100.0)
    assert wrong["AP75"] == pytest.approx(100 * 51 / 101)
    perfect = run(evaluator, inputs, [{"instances": instances_from([first, second], [0, 0], [0.9, 0.8])}])["segm"]
    assert perfect["AP"] == pytest.approx(100.0)


def test_instance_seg_evaluator_with_non_contiguous_thing_ids(tmp_path):
    """ADE20K-panoptic-like metadata: thing classes keep their 150-class ids (7 "bed", 12 "person"),
    so COCOEvaluator's 0..K-1 check refuses them; InstanceSegEvaluator maps them back and scores."""
    register("eval_tiny_ade_like", [], json_file=str(write_instance_json(tmp_path, 7, 12)), evaluator_type="ade20k_panoptic_seg",
             thing_classes=["bed", "person"], thing_dataset_id_to_contiguous_id={7: 7, 12: 12})  # fmt: skip
    first, second, partial = tiny_instance_masks()
    inputs = [{"image_id": 1, "file_name": "tiny.jpg", "height": 20, "width": 20}]

    with pytest.raises(AssertionError):
        run(COCOEvaluator("eval_tiny_ade_like", tasks=("segm",), distributed=False), inputs,
            [{"instances": instances_from([first], [7], [0.9])}])  # fmt: skip

    evaluator = InstanceSegEvaluator("eval_tiny_ade_like", tasks=("segm",), distributed=False, output_dir=str(tmp_path))
    perfect = run(evaluator, inputs, [{"instances": instances_from([first, second], [7, 7], [0.9, 0.8])}])["segm"]
    assert perfect["AP"] == pytest.approx(100.0)
    wrong = run(evaluator, inputs, [{"instances": instances_from([first, partial], [7, 7], [0.9, 0.8])}])["segm"]
    assert wrong["AP"] == pytest.approx(WRONG_AP)
    with open(tmp_path / "coco_instances_results.json") as f:
        assert {r["category_id"] for r in json.load(f)} == {7}
    with pytest.raises(ValueError, match="class 3"):
        run(evaluator, inputs, [{"instances": instances_from([first], [3], [0.9])}])


# ------------------------------------------------------------------------------------------------
# Cityscapes, with the public cityscapesscripts


@pytest.fixture
def tiny_cityscapes(tmp_path):
    """32x64 gtFine: sky (label id 23) rows 0-9, road (7) below, two cars (26) of 144 px as instances
    26000 and 26001, and 32 unlabeled (0) pixels."""
    labels = np.full((32, 64), 7, np.uint8)
    labels[:10] = 23
    labels[28:, 56:] = 0
    instance_ids = labels.astype(np.uint16)
    for k, x0 in enumerate((4, 30)):
        labels[12:24, x0 : x0 + 12] = 26
        instance_ids[12:24, x0 : x0 + 12] = 26000 + k
    city = tmp_path / "gtFine" / "val" / "testcity"
    city.mkdir(parents=True)
    stem = "testcity_000000_000019"
    Image.fromarray(labels).save(city / f"{stem}_gtFine_labelIds.png")
    Image.fromarray(instance_ids).save(city / f"{stem}_gtFine_instanceIds.png")
    register("eval_tiny_cityscapes", [], gt_dir=str(tmp_path / "gtFine" / "val"), evaluator_type="cityscapes_panoptic_seg",
             **_get_builtin_metadata("cityscapes"))  # fmt: skip
    return {"input": {"file_name": f"/images/{stem}_leftImg8bit.png", "image_id": stem}, "labels": labels,
            "instance_ids": instance_ids}  # fmt: skip


def test_cityscapes_semantic_evaluator(tiny_cityscapes, tmp_path, monkeypatch):
    """Perfect: IoU 100. The second car predicted as road: road IoU 1088/1232, car 144/288, sky 1
    -> IoU = (1 + 1088/1232 + 0.5) / 3 = 79.437. The unlabeled pixels never count."""
    monkeypatch.chdir(tmp_path)
    train_ids = {7: 0, 23: 10, 26: 13, 0: 5}  # unlabeled pixels predicted as "pole": ignored
    prediction = np.vectorize(train_ids.get)(tiny_cityscapes["labels"])
    evaluator = CityscapesSemSegEvaluator("eval_tiny_cityscapes")
    scores = lambda p: torch.nn.functional.one_hot(torch.as_tensor(p), 19).permute(2, 0, 1).float()  # noqa: E731
    perfect = run(evaluator, [tiny_cityscapes["input"]], [{"sem_seg": scores(prediction)}])["sem_seg"]
    assert perfect["IoU"] == pytest.approx(100.0)
    prediction[12:24, 30:42] = 0
    wrong = run(evaluator, [tiny_cityscapes["input"]], [{"sem_seg": scores(prediction)}])["sem_seg"]
    assert wrong["IoU"] == pytest.approx(100 * (1 + 1088 / 1232 + 0.5) / 3)
    assert os.listdir(tmp_path) == ["gtFine"]  # the script's side files stay out of the working directory


def test_cityscapes_instance_evaluator(tiny_cityscapes, tmp_path, monkeypatch):
    """Perfect: AP 100. Only the first car found: precision 1 up to recall 0.5, which the Cityscapes
    step integration turns into AP 50 at every overlap."""
    monkeypatch.chdir(tmp_path)
    cars = [tiny_cityscapes["instance_ids"] == 26000 + k for k in range(2)]
    car = _get_builtin_metadata("cityscapes")["thing_classes"].index("car")
    evaluator = CityscapesInstanceEvaluator("eval_tiny_cityscapes")
    perfect = run(evaluator, [tiny_cityscapes["input"]], [{"instances": instances_from(cars, [car, car], [0.9, 0.9])}])
    assert perfect["segm"]["AP"] == pytest.approx(100.0) and perfect["segm"]["AP50"] == pytest.approx(100.0)
    wrong = run(evaluator, [tiny_cityscapes["input"]], [{"instances": instances_from(cars[:1], [car], [0.9])}])
    assert wrong["segm"]["AP"] == pytest.approx(50.0) and wrong["segm"]["AP50"] == pytest.approx(50.0)
    assert os.listdir(tmp_path) == ["gtFine"]


# ------------------------------------------------------------------------------------------------
# ground truth that cannot be evaluated: named before inference, or when it is read


def test_panoptic_pngs_of_another_size_or_depth_are_listed_before_inference(synthetic_val, tmp_path):
    """Was a broadcast error in panopticapi after the whole inference pass (size), or 0 segments (16 bits)."""
    meta = MetadataCatalog.get(f"{PREFIX}_val_panoptic")
    root = tmp_path / "panoptic"
    shutil.copytree(meta.panoptic_root, root)
    first, second = (root / os.path.basename(r["pan_seg_file_name"]) for r in synthetic_val[:2])
    Image.fromarray(np.asarray(Image.open(first))[:-2]).save(first)
    Image.fromarray(panoptic_ids(second).astype(np.uint16)).save(second)
    fields = {k: v for k, v in meta.as_dict().items() if k != "name"}
    register("eval_broken_panoptic", synthetic_val, **dict(fields, panoptic_root=str(root)))
    evaluator = COCOPanopticEvaluator("eval_broken_panoptic", str(tmp_path / "out"))
    with pytest.raises(ValueError, match="2 problem") as error:
        check_ground_truth_files([DatasetEvaluators([evaluator])])
    h, w = synthetic_val[0]["height"], synthetic_val[0]["width"]
    assert f"{first} is {w}x{h - 2} (width x height) but its image (image_id {synthetic_val[0]['image_id']}) is {w}x{h}" in str(error.value)
    assert f"{second} is 16-bit I;16" in str(error.value)


def test_semantic_ground_truth_is_checked_as_it_is_read(tmp_path):
    """A value that is neither a class nor the ignore label was "cannot reshape array of size 90 into shape
    (6,6)"; a label map of another size, a broadcast error. Both name the file now."""
    labels = tiny_label_map()
    labels[0, :2] = 7
    Image.fromarray(labels).save(tmp_path / "seven.png")
    Image.fromarray(tiny_label_map()[:8]).save(tmp_path / "short.png")
    records = [{"file_name": f"{name}.jpg", "sem_seg_file_name": str(tmp_path / f"{name}.png")} for name in ("seven", "short")]
    register("eval_broken_sem_seg", records, evaluator_type="sem_seg", ignore_label=255,
             stuff_classes=[c["name"] for c in SYNTHETIC_CATEGORIES])  # fmt: skip
    evaluator = SemSegEvaluator("eval_broken_sem_seg", distributed=False)
    scores = torch.zeros(5, 10, 10)
    with pytest.raises(ImageFileError, match=r"seven.png has values \[7\], which are neither a class \(0..4\) nor the ignore label 255"):
        run(evaluator, [{"file_name": "seven.jpg"}], [{"sem_seg": scores}])
    with pytest.raises(ImageFileError, match=r"short.png is 10x8 \(width x height\) but its image short.jpg is 10x10"):
        run(evaluator, [{"file_name": "short.jpg"}], [{"sem_seg": scores}])


def test_per_class_ap_is_named_by_dataset_id_in_any_category_order(tmp_path):
    """Categories listed as 42 "circle", 7 "square" (contiguous 0, 1): COCOeval orders them 7, 42, so
    COCOEvaluator would report the square's AP as the circle's. build_evaluator picks InstanceSegEvaluator,
    which names them right: only the square is predicted (perfectly)."""
    import pycocotools.mask as mask_util

    first, second, _ = tiny_instance_masks()
    annotations = []
    for i, (mask, category_id) in enumerate([(first, 7), (second, 42)]):
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode()
        annotations.append({"id": i + 1, "image_id": 1, "category_id": category_id, "segmentation": rle,
                            "area": 16, "bbox": [2 + 8 * i, 2 + 8 * i, 4, 4], "iscrowd": 0})  # fmt: skip
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "tiny.jpg", "height": 20, "width": 20}], "annotations": annotations,
        "categories": [{"id": 42, "name": "circle"}, {"id": 7, "name": "square"}]}))  # fmt: skip
    register("eval_unsorted_ids", [], json_file=str(json_file), evaluator_type="coco", thing_classes=["circle", "square"],
             thing_dataset_id_to_contiguous_id={42: 0, 7: 1})  # fmt: skip
    evaluator = build_evaluator(get_project_cfg(), "eval_unsorted_ids", str(tmp_path))
    assert type(evaluator) is InstanceSegEvaluator
    inputs = [{"image_id": 1, "file_name": "tiny.jpg", "height": 20, "width": 20}]
    result = run(evaluator, inputs, [{"instances": instances_from([first], [1], [0.9])}])["segm"]
    assert result["AP-square"] == pytest.approx(100.0) and result["AP-circle"] == pytest.approx(0.0)
