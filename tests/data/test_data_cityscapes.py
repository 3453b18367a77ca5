"""Cityscapes: a tiny gtFine release (label/instance PNGs and polygon JSON) prepared with cityscapesscripts'
own tools, loaded through the registered splits (detectron2's, with this project's instance loader),
mapped by each mapper and evaluated."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog
from detectron2.data.datasets.builtin import register_all_cityscapes, register_all_cityscapes_panoptic
from detectron2.structures import Instances
from dinat_m2f.config import get_project_cfg
from dinat_m2f.data import build_mapper
from dinat_m2f.data.datasets import DatasetFileMissingError
from dinat_m2f.data.datasets.register_cityscapes import register_cityscapes_instances_and_checks
from dinat_m2f.evaluation import CityscapesInstanceEvaluator, build_evaluator
from test_data_registration import registered_at

NAMES = [f"cityscapes_fine_{t}_{s}" for t in ("instance_seg", "sem_seg") for s in ("train", "val", "test")] + [
    f"cityscapes_fine_panoptic_{s}" for s in ("train", "val")
]
STEM = "testcity_000000_000019"
ROAD, SKY, CAR = 7, 23, 26  # Cityscapes label ids; train ids 0, 10, 13


def register(root):
    register_all_cityscapes(root)
    register_all_cityscapes_panoptic(root)
    register_cityscapes_instances_and_checks()


def write_release(root):
    """32x64: sky rows 0-9, road below, two cars (instances 26000, 26001) and a crowd of cars (26)."""
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    city = root / "cityscapes" / "gtFine" / "val" / "testcity"
    images = root / "cityscapes" / "leftImg8bit" / "val" / "testcity"
    city.mkdir(parents=True)
    images.mkdir(parents=True)
    labels = np.full((32, 64), ROAD, np.uint8)
    labels[:10] = SKY
    instance_ids = labels.astype(np.uint16)
    polygons = [{"label": "sky", "polygon": [[0, 0], [63, 0], [63, 9], [0, 9]]},
                {"label": "road", "polygon": [[0, 10], [63, 10], [63, 31], [0, 31]]}]  # fmt: skip
    for k, x0 in enumerate((4, 30)):
        labels[12:24, x0 : x0 + 12] = CAR
        instance_ids[12:24, x0 : x0 + 12] = CAR * 1000 + k
        polygons.append({"label": "car", "polygon": [[x0, 12], [x0 + 11, 12], [x0 + 11, 23], [x0, 23]]})
    labels[26:30, 50:60] = CAR
    instance_ids[26:30, 50:60] = CAR  # a crowd region: label id only
    polygons.append({"label": "cargroup", "polygon": [[50, 26], [59, 26], [59, 29], [50, 29]]})
    Image.fromarray(labels).save(city / f"{STEM}_gtFine_labelIds.png")
    Image.fromarray(instance_ids).save(city / f"{STEM}_gtFine_instanceIds.png")
    polygon_file = city / f"{STEM}_gtFine_polygons.json"
    polygon_file.write_text(json.dumps({"imgHeight": 32, "imgWidth": 64, "objects": polygons}))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)).save(
        images / f"{STEM}_leftImg8bit.png"
    )
    # the two preparation steps of datasets/README.md, on this release
    json2labelImg(str(polygon_file), str(city / f"{STEM}_gtFine_labelTrainIds.png"), "trainIds")
    convert2panoptic(str(root / "cityscapes" / "gtFine"), setNames=["val"])
    return instance_ids


def test_cityscapes_splits_mappers_and_instance_evaluation(tmp_path):
    with registered_at(tmp_path, register, NAMES):
        with pytest.raises(DatasetFileMissingError, match="leftImg8bit_trainvaltest.zip"):
            DatasetCatalog.get("cityscapes_fine_instance_seg_val")
        instance_ids = write_release(tmp_path)
        (tmp_path / "cityscapes" / "gtFine" / "cityscapes_panoptic_val.json").rename(tmp_path / "panoptic.json")
        with pytest.raises(DatasetFileMissingError, match="createPanopticImgs"):
            DatasetCatalog.get("cityscapes_fine_panoptic_val")
        (tmp_path / "panoptic.json").rename(tmp_path / "cityscapes" / "gtFine" / "cityscapes_panoptic_val.json")

        (record,) = DatasetCatalog.get("cityscapes_fine_instance_seg_val")
        assert [(a["category_id"], a["iscrowd"]) for a in record["annotations"]] == [(2, 1), (2, 0), (2, 0)]
        cfg = get_project_cfg()
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.RANDOM_FLIP = (32,), "none"
        for mapper_name, split in (("mask_former_instance", "instance_seg"), ("mask_former_semantic", "sem_seg"),
                                   ("mask_former_panoptic", "panoptic")):  # fmt: skip
            cfg.INPUT.DATASET_MAPPER_NAME = mapper_name
            cfg.DATASETS.TRAIN = (f"cityscapes_fine_{split}_val",)
            (record,) = DatasetCatalog.get(f"cityscapes_fine_{split}_val")
            instances = build_mapper(cfg, True)(record)["instances"]
            masks = {c: [] for c in set(instances.gt_classes.tolist())}
            for label, mask in zip(instances.gt_classes.tolist(), instances.gt_masks.numpy()):
                masks[label].append(mask)
            cars = [instance_ids == CAR * 1000 + k for k in range(2)]
            if mapper_name == "mask_former_semantic":  # one mask per class (train ids), crowd included
                assert sorted(masks) == [0, 10, 13]
                assert np.array_equal(masks[13][0], cars[0] | cars[1] | (instance_ids == CAR))
            elif mapper_name == "mask_former_panoptic":  # stuff and things share the 19 train ids
                assert sorted(masks) == [0, 10, 13] and len(masks[13]) == 2
                assert sorted(m.tobytes() for m in masks[13]) == sorted(m.tobytes() for m in cars)
            else:  # 8 instance classes, car = 2; the crowd is skipped
                assert sorted(m.tobytes() for m in masks[2]) == sorted(m.tobytes() for m in cars)

        cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = True
        evaluator = build_evaluator(cfg, "cityscapes_fine_instance_seg_val", str(tmp_path / "eval"))
        assert type(evaluator) is CityscapesInstanceEvaluator
        (record,) = DatasetCatalog.get("cityscapes_fine_instance_seg_val")
        prediction = Instances((32, 64))
        prediction.pred_masks = torch.as_tensor(np.stack(cars))
        prediction.pred_classes = torch.tensor([2, 2])
        prediction.scores = torch.tensor([0.9, 0.8])
        evaluator.reset()
        evaluator.process([record], [{"instances": prediction}])
        assert evaluator.evaluate()["segm"]["AP"] == pytest.approx(100.0)
