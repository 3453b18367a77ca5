"""The NAT, DiNAT-T/S/B and ShiftViT configs (ADE20K semantic, COCO panoptic) and their synthetic main-job
configs: plain YAML, no unknown keys, only the backbone differs from the DiNAT-L (or dinat_mini) config, and
the models they build (meta device) have the variants' parameter counts."""
import json

import pytest
import torch
import yaml

from dinat_m2f.config import load_project_config
from dinat_m2f.modeling.backbone import dinat, shiftvit
from project_paths import CONFIGS, FIXTURES
from test_configs import build_on_meta

TASKS = ["ade20k/semantic", "coco/panoptic"]
# config name: (backbone module, variant)
BACKBONES = {
    "nat_t": (dinat, "nat_tiny"), "nat_s": (dinat, "nat_small"), "nat_b": (dinat, "nat_base"),
    "dinat_t": (dinat, "dinat_tiny"), "dinat_s": (dinat, "dinat_small"), "dinat_b": (dinat, "dinat_base"),
    "shiftvit_t": (shiftvit, "shiftvit_r2_tiny"), "shiftvit_s": (shiftvit, "shiftvit_r2_small"),
}
# Whole-model parameter counts (tools/analyze_model.py; docs/BACKBONES.md).
TOTAL_PARAMETERS = {
    "ade20k/semantic": {"nat_t": 47_185_533, "nat_s": 69_894_576, "nat_b": 108_788_259, "dinat_t": 47_185_533,
                        "dinat_s": 69_894_576, "dinat_b": 108_788_259, "shiftvit_t": 47_717_943,
                        "shiftvit_s": 69_455_415},
    "coco/panoptic": {"nat_t": 47_232_364, "nat_s": 69_941_407, "nat_b": 108_835_090, "dinat_t": 47_232_364,
                      "dinat_s": 69_941_407, "dinat_b": 108_835_090, "shiftvit_t": 47_764_774,
                      "shiftvit_s": 69_502_246},
}
BACKBONE_KEYS = ("MODEL.BACKBONE.NAME", "MODEL.DINAT", "MODEL.SHIFTVIT", "MODEL.WEIGHTS", "OUTPUT_DIR")


def load(path):
    return load_project_config(str(path))  # raises on an unknown key


def without_backbone(cfg) -> dict:
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + ".")
            elif not name.startswith(BACKBONE_KEYS):
                flat[name] = value

    walk(cfg, "")
    return flat


def backbone_parameters(module, variant) -> int:
    if module is shiftvit:
        return json.loads((FIXTURES / "backbone_manifests.json").read_text())[variant]["params_backbone_with_added"]
    with torch.device("meta"):
        return sum(p.numel() for p in module.build_variant(variant).parameters())


def test_every_task_has_every_backbone_and_the_files_are_plain_yaml():
    for task in TASKS:
        found = sorted(p.stem for p in (CONFIGS / task).glob("*.yaml") if p.stem in BACKBONES)
        assert found == sorted(BACKBONES), task
        for name in BACKBONES:
            text = (CONFIGS / task / f"{name}.yaml").read_text()
            assert "!!python" not in text and isinstance(yaml.safe_load(text), dict)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_config_changes_only_the_backbone_and_builds_with_the_variants_count(task, name):
    module, variant = BACKBONES[name]
    cfg = load(CONFIGS / task / f"{name}.yaml")
    assert without_backbone(cfg) == without_backbone(load(CONFIGS / task / "dinat_l.yaml"))
    assert cfg.MODEL.WEIGHTS.endswith(".pkl") and variant.split("_")[-1] in cfg.MODEL.WEIGHTS
    reference = module.VARIANTS[variant]
    if module is dinat:
        d = cfg.MODEL.DINAT
        assert cfg.MODEL.BACKBONE.NAME == "D2DiNAT" and d.KERNEL_SIZE == 7
        assert (d.EMBED_DIM, d.DEPTHS, d.NUM_HEADS, d.MLP_RATIO) == (
            reference["embed_dim"], reference["depths"], reference["num_heads"], reference["mlp_ratio"])
        assert d.LAYER_SCALE == reference.get("layer_scale")
        expected = None if name.startswith("nat") else dinat.gradual_dilations(d.DEPTHS, 7, 640)
        assert d.DILATIONS == expected
    else:
        s = cfg.MODEL.SHIFTVIT
        assert cfg.MODEL.BACKBONE.NAME == "D2ShiftViT" and s.NORM == "GN1"
        assert (s.EMBED_DIM, s.DEPTHS, s.MLP_RATIO, s.N_DIV) == (
            reference["embed_dim"], reference["depths"], reference["mlp_ratio"], reference["n_div"])

    model = build_on_meta(cfg)
    assert sum(p.numel() for p in model.backbone.parameters()) == backbone_parameters(module, variant)
    assert sum(p.numel() for p in model.parameters()) == TOTAL_PARAMETERS[task][name]
    if name.endswith(("_s", "_b")) and module is dinat:
        assert model.backbone.levels[2].blocks[17].gamma2.shape == (4 * d.EMBED_DIM,)


@pytest.mark.parametrize("name", ["nat_mini", "shiftvit_mini"])
def test_synthetic_main_job_configs_change_only_the_backbone(name):
    cfg = load(CONFIGS / "synthetic" / "panoptic" / f"{name}.yaml")
    assert without_backbone(cfg) == without_backbone(load(CONFIGS / "synthetic" / "panoptic" / "dinat_mini.yaml"))
    assert cfg.OUTPUT_DIR == f"./output/synthetic/panoptic/{name}"
    model = build_on_meta(cfg)
    backbone = sum(p.numel() for p in model.backbone.parameters())
    assert 0.8e6 < backbone < 1.3e6  # dinat_mini's backbone: 1.23M
    if name == "nat_mini":
        assert cfg.MODEL.DINAT.DILATIONS is None
        assert backbone == 1_229_699
