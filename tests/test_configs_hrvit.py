"""The HRViT-b3 configs (ADE20K semantic, COCO panoptic): plain YAML, no unknown keys, the DiNAT-L recipe with
the backbone swapped, and the model they build on the meta device (parameter counts)."""
import pytest
import yaml

from dinat_m2f.config import load_project_config
from project_paths import CONFIGS
from test_configs import build_on_meta

# config: (classes, queries, parameters of the whole model)
TABLE = {
    "ade20k/semantic": (150, 100, 45_304_015),
    "coco/panoptic": (133, 200, 45_350_846),
}
HRVIT_B3_PARAMETERS = 25_507_960  # backbone_manifests.json: hrvit_b3 params_backbone


@pytest.mark.parametrize("name", sorted(TABLE))
def test_hrvit_b3_config_merges_and_builds_with_the_expected_size(name):
    path = CONFIGS / name / "hrvit_b3.yaml"
    assert "!!python" not in path.read_text() and isinstance(yaml.safe_load(path.read_text()), dict)
    cfg = load_project_config(str(path))  # raises on an unknown key
    reference = load_project_config(str(CONFIGS / name / "dinat_l.yaml"))
    classes, queries, parameters = TABLE[name]
    assert cfg.MODEL.BACKBONE.NAME == "D2HRViT" and cfg.MODEL.HRVIT.VARIANT == "hrvit_b3"
    assert cfg.MODEL.HRVIT.NORM == "SyncBN" and cfg.MODEL.WEIGHTS == ""
    # everything but the backbone is the DiNAT-L recipe
    for key in ("SOLVER", "INPUT", "DATASETS", "TEST"):
        assert cfg[key] == reference[key], key
    assert cfg.MODEL.SEM_SEG_HEAD == reference.MODEL.SEM_SEG_HEAD
    assert cfg.MODEL.MASK_FORMER == reference.MODEL.MASK_FORMER

    model = build_on_meta(cfg)
    assert sum(p.numel() for p in model.backbone.parameters()) == HRVIT_B3_PARAMETERS
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert model.sem_seg_head.predictor.class_embed.out_features == classes + 1
    assert model.sem_seg_head.predictor.query_feat.num_embeddings == queries
