"""The CoAtNet Mask2Former configs: plain YAML over the DiNAT-L configs of their dataset and task, no unknown
keys, and the model they build (on the meta device) with its parameter counts."""
import pytest
import torch
import yaml
from detectron2.modeling import build_model
from test_configs import TABLE

import dinat_m2f.data  # noqa: F401  (registers the datasets the configs name)
import dinat_m2f.maskformer_model  # noqa: F401  (registers the model)
from dinat_m2f.config import load_project_config
from project_paths import CONFIGS

# config: (variant, ATTN_WINDOW, whole model, pixel decoder); backbones as in backbone_manifests.json
CONFIGS_COATNET = {
    "ade20k/semantic/coatnet_0": ("coatnet_0_rw_224", 0, 46_586_841, 5_421_504),
    "ade20k/semantic/coatnet_2": ("coatnet_2_rw_224", 0, 92_887_007, 5_544_384),
    "coco/panoptic/coatnet_0": ("coatnet_0_rw_224", 14, 46_633_672, 5_421_504),
    "coco/panoptic/coatnet_2": ("coatnet_2_rw_224", 14, 92_933_838, 5_544_384),
}
BACKBONE_PARAMETERS = {"coatnet_0_rw_224": 26_667_906, "coatnet_2_rw_224": 72_845_192}


@pytest.mark.parametrize("name", sorted(CONFIGS_COATNET))
def test_coatnet_config_builds_with_the_expected_parameter_counts(name):
    path = CONFIGS / f"{name}.yaml"
    assert "!!python" not in path.read_text() and isinstance(yaml.safe_load(path.read_text()), dict)
    cfg = load_project_config(str(path))  # raises on an unknown key
    variant, window, total, pixel_decoder = CONFIGS_COATNET[name]
    assert cfg.MODEL.BACKBONE.NAME == "D2CoAtNet" and cfg.MODEL.COATNET.VARIANT == variant
    assert cfg.MODEL.COATNET.ATTN_WINDOW == window
    assert cfg.MODEL.WEIGHTS.endswith(".pkl") and variant in cfg.MODEL.WEIGHTS
    # everything but the backbone is the DiNAT-L config's
    classes, queries, max_iter, _, mapper, _ = TABLE[name.rsplit("/", 1)[0]]
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == classes and cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == queries
    assert cfg.SOLVER.MAX_ITER == max_iter and cfg.INPUT.DATASET_MAPPER_NAME == mapper
    assert cfg.SOLVER.AMP.ENABLED and cfg.SOLVER.BACKBONE_MULTIPLIER == 0.1

    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.backbone.parameters()) == BACKBONE_PARAMETERS[variant]
    assert sum(p.numel() for p in model.sem_seg_head.pixel_decoder.parameters()) == pixel_decoder
    assert model.backbone.stages[2].blocks[1].attn.window == window


def test_synthetic_coatnet_config_changes_only_the_backbone():
    cfg = load_project_config(str(CONFIGS / "synthetic/panoptic/coatnet_mini.yaml"))
    main = load_project_config(str(CONFIGS / "synthetic/panoptic/dinat_mini.yaml"))
    assert cfg.MODEL.BACKBONE.NAME == "D2CoAtNet"
    for key in ("MODEL.SEM_SEG_HEAD", "MODEL.MASK_FORMER", "SOLVER", "INPUT", "DATASETS", "TEST", "SEED"):
        first, second = cfg, main
        for part in key.split("."):
            first, second = first[part], second[part]
        assert first == second, key
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == 1_641_200
    assert model.backbone.stages[3].blocks[0].attn.rel_pos.grid == (5, 5)  # 160 px crops
