"""The nine DiNAT-L configs: plain YAML, no unknown keys, the table of issue 3, and the model they build
(on the meta device: shapes without memory or time)."""

import pytest
import torch
import yaml
from detectron2.modeling import build_model

import dinat_m2f.data  # noqa: F401  (registers the datasets the configs name)
import dinat_m2f.maskformer_model  # noqa: F401  (registers the model)
import dinat_m2f.modeling.backbone.dinat  # noqa: F401
from dinat_m2f.config import get_project_cfg
from project_paths import CONFIGS


# config: (classes, queries, MAX_ITER, LR scheduler, mapper, (SEMANTIC_ON, INSTANCE_ON, PANOPTIC_ON))
TABLE = {
    "coco/panoptic": (133, 200, 737500, "WarmupMultiStepLR", "coco_panoptic_lsj", (True, True, True)),
    "coco/instance": (80, 200, 737500, "WarmupMultiStepLR", "coco_instance_lsj", (False, True, False)),
    "coco/semantic": (133, 100, 737500, "WarmupMultiStepLR", "mask_former_semantic", (True, False, False)),
    "ade20k/panoptic": (150, 200, 160000, "WarmupPolyLR", "mask_former_panoptic", (True, True, True)),
    "ade20k/instance": (100, 200, 160000, "WarmupPolyLR", "mask_former_instance", (False, True, False)),
    "ade20k/semantic": (150, 100, 160000, "WarmupPolyLR", "mask_former_semantic", (True, False, False)),
    "cityscapes/panoptic": (19, 200, 90000, "WarmupPolyLR", "mask_former_panoptic", (True, True, True)),
    "cityscapes/instance": (8, 200, 90000, "WarmupPolyLR", "mask_former_instance", (False, True, False)),
    "cityscapes/semantic": (19, 100, 90000, "WarmupPolyLR", "mask_former_semantic", (True, False, False)),
}
DINAT_L_PARAMETERS_COCO_PANOPTIC = 219_944_344


def load_cfg(name: str):
    cfg = get_project_cfg()
    cfg.merge_from_file(str(CONFIGS / name / "dinat_l.yaml"))  # raises KeyError on an unknown key
    return cfg


def build_on_meta(cfg):
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        return build_model(cfg)


def test_all_nine_configs_exist():
    found = sorted(str(p.parent.relative_to(CONFIGS)) for p in CONFIGS.glob("*/*/dinat_l.yaml"))
    assert found == sorted(TABLE)


def test_configs_are_plain_yaml():
    files = [p for d in ("coco", "ade20k", "cityscapes") for p in (CONFIGS / d).rglob("*.yaml")]
    files.append(CONFIGS / "Base-Mask2Former-DiNAT-L.yaml")
    for path in files:
        assert "!!python" not in path.read_text(), path
        assert isinstance(yaml.safe_load(path.read_text()), dict), path


@pytest.mark.parametrize("name", sorted(TABLE))
def test_config_merges_matches_the_table_and_builds(name):
    cfg = load_cfg(name)
    classes, queries, max_iter, scheduler, mapper, (semantic, instance, panoptic) = TABLE[name]
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == classes
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == queries
    assert cfg.SOLVER.MAX_ITER == max_iter
    assert cfg.SOLVER.LR_SCHEDULER_NAME == scheduler
    assert cfg.INPUT.DATASET_MAPPER_NAME == mapper
    test = cfg.MODEL.MASK_FORMER.TEST
    assert (test.SEMANTIC_ON, test.INSTANCE_ON, test.PANOPTIC_ON) == (semantic, instance, panoptic)
    # shared by all nine
    assert cfg.MODEL.BACKBONE.NAME == "D2DiNAT"
    assert cfg.MODEL.DINAT.EMBED_DIM == 192 and cfg.MODEL.DINAT.KERNEL_SIZE == 11
    assert cfg.MODEL.DINAT.DEPTHS == [3, 4, 18, 5] and cfg.MODEL.DINAT.NUM_HEADS == [6, 12, 24, 48]
    assert [len(d) for d in cfg.MODEL.DINAT.DILATIONS] == cfg.MODEL.DINAT.DEPTHS
    assert cfg.MODEL.MASK_FORMER.DEC_LAYERS == 10 and cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS == 6
    assert cfg.INPUT.FORMAT == "RGB"
    assert cfg.SOLVER.AMP.ENABLED and cfg.SOLVER.AMP.PRECISION == "bfloat16"
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model" and cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 0.01
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.BASE_LR == 1e-4 and cfg.SOLVER.BACKBONE_MULTIPLIER == 0.1
    assert cfg.MODEL.WEIGHTS.endswith(".pkl")

    model = build_on_meta(cfg)
    assert model.sem_seg_head.predictor.class_embed.out_features == classes + 1
    assert model.sem_seg_head.predictor.query_feat.num_embeddings == queries
    assert len(model.sem_seg_head.predictor.transformer_cross_attention_layers) == 9


def test_coco_panoptic_dinat_l_has_the_original_parameter_count_and_names():
    model = build_on_meta(load_cfg("coco/panoptic"))
    assert sum(p.numel() for p in model.parameters()) == DINAT_L_PARAMETERS_COCO_PANOPTIC
    names = dict(model.named_parameters())
    assert names["sem_seg_head.pixel_decoder.adapter_1.norm.weight"].shape == (256,)
    assert names["sem_seg_head.predictor.mask_embed.layers.2.bias"].shape == (256,)
    assert names["sem_seg_head.predictor.class_embed.weight"].shape == (134, 256)
    assert names["sem_seg_head.pixel_decoder.transformer.encoder.layers.5.self_attn.sampling_offsets.weight"].shape == (
        192,
        256,
    )
    assert names["backbone.levels.2.blocks.17.attn.rpb"].shape == (24, 21, 21)
    assert "criterion.empty_weight" in model.state_dict()


def test_unknown_key_in_a_config_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(f'_BASE_: "{CONFIGS / "coco/panoptic/dinat_l.yaml"}"\nMODEL:\n  MASK_FORMER:\n    NUM_QUERIES: 100\n')
    cfg = get_project_cfg()
    with pytest.raises(KeyError, match="NUM_QUERIES"):
        cfg.merge_from_file(str(path))
