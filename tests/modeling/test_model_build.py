"""Building the model from a config: bad names and class counts fail at build time with clear errors."""

import pytest
import torch
from detectron2.modeling import build_model

import dinat_m2f.data  # noqa: F401  (registers the datasets the configs name)
import dinat_m2f.maskformer_model  # noqa: F401  (registers the model)
import dinat_m2f.modeling.backbone.dinat  # noqa: F401
from dinat_m2f.config import load_project_config
from project_paths import CONFIGS


def build_on_meta(config: str, **overrides):
    cfg = load_project_config(str(CONFIGS / config / "dinat_l.yaml"))
    cfg.merge_from_list([item for kv in overrides.items() for item in kv])
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        return build_model(cfg)


def test_unknown_pixel_decoder_lists_the_registered_ones():
    with pytest.raises(KeyError) as excinfo:
        build_on_meta("coco/panoptic", **{"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME": "NoSuchDecoder"})
    message = str(excinfo.value)
    assert "NoSuchDecoder" in message and "MSDeformAttnPixelDecoder" in message
    assert "PIXEL_DECODER_NAME" in message


def test_unknown_transformer_decoder_lists_the_registered_ones():
    with pytest.raises(KeyError) as excinfo:
        build_on_meta("coco/panoptic", **{"MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME": "NoSuchDecoder"})
    message = str(excinfo.value)
    assert "NoSuchDecoder" in message and "MultiScaleMaskedTransformerDecoder" in message


@pytest.mark.parametrize(
    "config, wrong, right",
    [
        ("coco/panoptic", 80, 133),  # panoptic counts all classes (stuff_classes)
        ("coco/instance", 133, 80),  # instance-only counts thing_classes
        ("cityscapes/instance", 19, 8),  # Cityscapes metadata has both lists: the instance model uses things
        ("ade20k/semantic", 151, 150),
    ],
)
def test_num_classes_not_matching_the_dataset_names_both_numbers(config, wrong, right):
    with pytest.raises(ValueError, match=rf"NUM_CLASSES is {wrong} but dataset .* has {right} classes"):
        build_on_meta(config, **{"MODEL.SEM_SEG_HEAD.NUM_CLASSES": wrong})


def test_transformer_in_feature_other_than_the_pixel_decoder_is_refused():
    with pytest.raises(ValueError, match="TRANSFORMER_IN_FEATURE"):
        build_on_meta("coco/panoptic", **{"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE": "res5"})


def test_no_inference_mode_on_is_refused():
    with pytest.raises(ValueError, match="SEMANTIC_ON, PANOPTIC_ON, INSTANCE_ON"):
        build_on_meta(
            "coco/instance",
            **{"MODEL.MASK_FORMER.TEST.INSTANCE_ON": False, "MODEL.MASK_FORMER.TEST.SEMANTIC_ON": False},
        )
