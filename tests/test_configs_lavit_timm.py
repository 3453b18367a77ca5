"""The LaViT-T and ConvNeXt-L (timm) Mask2Former configs for ADE20K semantic and COCO panoptic: plain YAML
over the dinat_l.yaml recipes, no unknown keys, and the models they build (meta device) with the expected
parameter counts."""
import pytest
import torch
import yaml
from detectron2.modeling import build_model

import dinat_m2f.data  # noqa: F401  (registers the datasets the configs name)
import dinat_m2f.maskformer_model  # noqa: F401  (registers the model)
from dinat_m2f.config import load_project_config
from project_paths import CONFIGS

# config: (backbone name, backbone parameters, whole model parameters)
EXPECTED = {
    "ade20k/semantic/lavit_t.yaml": ("D2LaViT", 25_097_555, 45_016_490),
    "coco/panoptic/lavit_t.yaml": ("D2LaViT", 25_097_555, 45_063_321),
    # timm's convnext_large has 197,767,336 parameters; the classifier head (1,540,072) is not built.
    "ade20k/semantic/convnext_l.yaml": ("D2TimmBackbone", 196_227_264, 216_514_839),
    "coco/panoptic/convnext_l.yaml": ("D2TimmBackbone", 196_227_264, 216_561_670),
}


def load_cfg(name: str):
    return load_project_config(str(CONFIGS / name))  # raises on an unknown key


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_builds_with_the_expected_parameter_counts(name):
    path = CONFIGS / name
    assert "!!python" not in path.read_text() and isinstance(yaml.safe_load(path.read_text()), dict)
    cfg = load_cfg(name)
    recipe = load_cfg(str(path.parent.relative_to(CONFIGS) / "dinat_l.yaml"))
    for key in ("SEM_SEG_HEAD.NUM_CLASSES", "MASK_FORMER.NUM_OBJECT_QUERIES", "MASK_FORMER.DEC_LAYERS"):
        group, leaf = key.split(".")
        assert cfg.MODEL[group][leaf] == recipe.MODEL[group][leaf], key
    assert cfg.SOLVER.MAX_ITER == recipe.SOLVER.MAX_ITER and cfg.INPUT.DATASET_MAPPER_NAME == recipe.INPUT.DATASET_MAPPER_NAME
    backbone_name, backbone_params, total_params = EXPECTED[name]
    assert cfg.MODEL.BACKBONE.NAME == backbone_name and cfg.MODEL.WEIGHTS == ""

    if backbone_name == "D2TimmBackbone":
        assert cfg.MODEL.TIMM.NAME == "convnext_large" and cfg.MODEL.TIMM.PRETRAINED_PATH.endswith(".safetensors")
        cfg.MODEL.TIMM.PRETRAINED_PATH = ""  # the ImageNet file is not here; the shapes do not depend on it
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        model = build_model(cfg)
    assert sum(p.numel() for p in model.backbone.parameters()) == backbone_params
    assert sum(p.numel() for p in model.parameters()) == total_params
    shapes = {k: v.stride for k, v in model.backbone.output_shape().items()}
    assert shapes == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def test_missing_timm_weights_file_says_what_to_do():
    cfg = load_cfg("coco/panoptic/convnext_l.yaml")
    cfg.MODEL.DEVICE = "meta"
    with pytest.raises(FileNotFoundError, match=r"PRETRAINED_PATH convnext_large_fb_in22k.safetensors does not "
                                                r"exist.*or set it to '' for random weights"):
        with torch.device("meta"):
            build_model(cfg)
