"""The eighteen Swin-L / Swin-T Mask2Former configs: plain YAML, no unknown keys, Mask2Former's recipes, and
the model they build (on the meta device) with the expected parameter counts."""
import json

import pytest
import torch
import yaml
from detectron2.modeling import build_model

import dinat_m2f  # noqa: F401  (registers the model, the backbones and the datasets the configs name)
from dinat_m2f.config import load_project_config
from project_paths import CONFIGS, FIXTURES

TASKS = ["coco/panoptic", "coco/instance", "coco/semantic", "ade20k/panoptic", "ade20k/instance",
         "ade20k/semantic", "cityscapes/panoptic", "cityscapes/instance", "cityscapes/semantic"]
# variant: (manifest key, EMBED_DIM, DEPTHS, NUM_HEADS, WINDOW_SIZE, PRETRAIN_IMG_SIZE, ImageNet weights)
VARIANTS = {
    "swin_l": ("swin_large_384", 192, [2, 2, 18, 2], [6, 12, 24, 48], 12, 384, "swin_large_patch4_window12_384_22k.pkl"),
    "swin_t": ("swin_tiny", 96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 224, "swin_tiny_patch4_window7_224.pkl"),
}
# (variant, task): (queries, MAX_ITER, training crop or LSJ size, parameters)
TABLE = {
    ("swin_l", "coco/panoptic"): (200, 737500, 1024, 215_535_610),
    ("swin_l", "coco/instance"): (200, 737500, 1024, 215_521_989),
    ("swin_l", "coco/semantic"): (100, 737500, 640, 215_484_410),
    ("swin_l", "ade20k/panoptic"): (200, 160000, 640, 215_539_979),
    ("swin_l", "ade20k/instance"): (200, 160000, 640, 215_527_129),
    ("swin_l", "ade20k/semantic"): (100, 160000, 640, 215_488_779),
    ("swin_l", "cityscapes/panoptic"): (200, 90000, 512, 215_506_312),
    ("swin_l", "cityscapes/instance"): (200, 90000, 512, 215_503_485),
    ("swin_l", "cityscapes/semantic"): (100, 90000, 512, 215_455_112),
    ("swin_t", "coco/panoptic"): (100, 368750, 1024, 47_435_264),
    ("swin_t", "coco/instance"): (100, 368750, 1024, 47_421_643),
    ("swin_t", "coco/semantic"): (100, 368750, 640, 47_435_264),
    ("swin_t", "ade20k/panoptic"): (100, 160000, 640, 47_439_633),
    ("swin_t", "ade20k/instance"): (100, 160000, 640, 47_426_783),
    ("swin_t", "ade20k/semantic"): (100, 160000, 512, 47_439_633),
    ("swin_t", "cityscapes/panoptic"): (100, 90000, 512, 47_405_966),
    ("swin_t", "cityscapes/instance"): (100, 90000, 512, 47_403_139),
    ("swin_t", "cityscapes/semantic"): (100, 90000, 512, 47_405_966),
}


def load_cfg(task: str, name: str):
    return load_project_config(str(CONFIGS / task / f"{name}.yaml"))  # raises on an unknown key


def build_on_meta(cfg):
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        return build_model(cfg)


def head_parameters(model) -> int:
    return sum(p.numel() for p in model.sem_seg_head.parameters())


def test_eighteen_configs_exist_as_plain_yaml():
    found = sorted((str(p.parent.relative_to(CONFIGS)), p.stem) for p in CONFIGS.glob("*/*/swin_[lt].yaml"))
    assert found == sorted((task, variant) for variant, task in TABLE)
    for task, variant in found:
        text = (CONFIGS / task / f"{variant}.yaml").read_text()
        assert "!!python" not in text
        assert isinstance(yaml.safe_load(text), dict)


@pytest.mark.parametrize("variant,task", sorted(TABLE))
def test_config_follows_the_recipe_and_builds_with_the_expected_count(variant, task):
    manifest_key, embed_dim, depths, num_heads, window, pretrain, weights = VARIANTS[variant]
    queries, max_iter, crop, parameters = TABLE[(variant, task)]
    cfg = load_cfg(task, variant)
    swin = cfg.MODEL.SWIN
    assert cfg.MODEL.BACKBONE.NAME == "D2SwinTransformer"
    assert (swin.EMBED_DIM, swin.DEPTHS, swin.NUM_HEADS) == (embed_dim, depths, num_heads)
    assert (swin.WINDOW_SIZE, swin.PRETRAIN_IMG_SIZE, swin.DROP_PATH_RATE) == (window, pretrain, 0.3)
    assert not swin.APE and swin.PATCH_NORM
    assert cfg.MODEL.WEIGHTS == weights
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == queries
    assert cfg.SOLVER.MAX_ITER == max_iter
    assert (cfg.INPUT.IMAGE_SIZE if cfg.INPUT.DATASET_MAPPER_NAME.endswith("_lsj") else cfg.INPUT.CROP.SIZE[0]) == crop
    # the dinat_l config of the same dataset and task fixes everything that is not the backbone's recipe
    dinat = load_cfg(task, "dinat_l")
    assert cfg.DATASETS.TRAIN == dinat.DATASETS.TRAIN and cfg.DATASETS.TEST == dinat.DATASETS.TEST
    assert cfg.INPUT.DATASET_MAPPER_NAME == dinat.INPUT.DATASET_MAPPER_NAME
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == dinat.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    assert cfg.MODEL.MASK_FORMER.TEST == dinat.MODEL.MASK_FORMER.TEST
    assert cfg.SOLVER.LR_SCHEDULER_NAME == dinat.SOLVER.LR_SCHEDULER_NAME

    model = build_on_meta(cfg)
    backbone_parameters = sum(p.numel() for p in model.backbone.parameters())
    manifest = json.loads((FIXTURES / "backbone_manifests.json").read_text())[manifest_key]
    assert backbone_parameters == manifest["params_backbone"]
    assert sum(p.numel() for p in model.parameters()) == parameters
    if variant == "swin_l":  # same channels and queries as DiNAT-L: the same head
        assert head_parameters(model) == head_parameters(build_on_meta(dinat))


def test_swin_t_ade20k_semantic_trains_and_tests_at_512():
    """Mask2Former's Swin-T ADE20K semantic recipe is its 512 one (Swin-L's is 640)."""
    ade = load_cfg("ade20k/semantic", "swin_t")
    assert (ade.INPUT.MIN_SIZE_TRAIN[0], ade.INPUT.MIN_SIZE_TRAIN[-1], ade.INPUT.MIN_SIZE_TEST) == (256, 1024, 512)
    assert tuple(ade.TEST.AUG.MIN_SIZES) == (256, 384, 512, 640, 768, 896) and ade.TEST.AUG.MAX_SIZE == 3584
    assert tuple(load_cfg("ade20k/semantic", "swin_l").TEST.AUG.MIN_SIZES) == (320, 480, 640, 800, 960, 1120)
