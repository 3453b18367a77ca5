"""One contract over every backbone the project registers (as timm tests every model of `list_models()`): each
is built from the small synthetic config that uses it and checked for what the head relies on."""
import io
import math

import pytest
import torch
import yaml
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone
from project_paths import CONFIGS

import dinat_m2f  # noqa: F401  (registers the backbones)
from dinat_m2f.config import load_project_config
from dinat_m2f.modeling.backbone import MultiScaleBackbone
from dinat_m2f.utils.benchmark import saved_for_backward

PROJECT_BACKBONES = sorted(name for name, cls in BACKBONE_REGISTRY if cls.__module__.startswith("dinat_m2f."))
ODD_SIZES = [(97, 131), (160, 224)]


def _small_configs() -> dict[str, str]:
    """Backbone name -> the first synthetic panoptic config (by file name) that builds it."""
    found = {}
    for path in sorted((CONFIGS / "synthetic" / "panoptic").glob("*.yaml")):
        name = load_project_config(str(path)).MODEL.BACKBONE.NAME
        found.setdefault(name, path)
    return found


SMALL_CONFIGS = _small_configs()


def _cfg(name: str, **keys):
    cfg = load_project_config(str(SMALL_CONFIGS[name]))
    cfg.MODEL.DEVICE = "cpu"
    for key, value in keys.items():
        cfg.merge_from_list([key, value])
    return cfg


def _build(name: str, seed: int = 0, **keys) -> MultiScaleBackbone:
    torch.manual_seed(seed)
    return build_backbone(_cfg(name, **keys))


def _loss(features: dict) -> torch.Tensor:
    return sum(feature.square().mean() for feature in features.values())


def test_every_project_backbone_has_a_small_config():
    assert PROJECT_BACKBONES == sorted(SMALL_CONFIGS), "a registered backbone without a synthetic config"
    assert PROJECT_BACKBONES == sorted(OUT_FEATURES_KEYS)
    assert {"D2DiNAT", "D2SwinTransformer", "D2ShiftViT", "D2HRViT", "D2CoAtNet", "D2LaViT",
            "D2TimmBackbone"} <= set(PROJECT_BACKBONES)
    for path in SMALL_CONFIGS.values():
        assert "!!python" not in path.read_text() and isinstance(yaml.safe_load(path.read_text()), dict)


@pytest.mark.parametrize("name", PROJECT_BACKBONES)
def test_derives_from_the_project_base(name):
    assert issubclass(BACKBONE_REGISTRY.get(name), MultiScaleBackbone)


@pytest.mark.parametrize("height,width", ODD_SIZES)
@pytest.mark.parametrize("name", PROJECT_BACKBONES)
def test_outputs_are_what_output_shape_says_and_train_at_odd_sizes(name, height, width):
    backbone = _build(name).train()
    image = torch.randn(2, 3, height, width, requires_grad=True)
    features = backbone(image)
    shapes = backbone.output_shape()
    assert list(features) == list(shapes) == backbone._out_features
    for key, spec in shapes.items():
        expected = (2, spec.channels, math.ceil(height / spec.stride), math.ceil(width / spec.stride))
        assert tuple(features[key].shape) == expected, key
        assert torch.isfinite(features[key]).all(), key
    assert backbone.size_divisibility == 32
    _loss(features).backward()
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
    trained = [(key, p) for key, p in backbone.named_parameters() if p.requires_grad]
    assert trained and all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in trained), \
        [key for key, p in trained if p.grad is None or not torch.isfinite(p.grad).all()]


# Each backbone's OUT_FEATURES key (None: the backbone always returns res2..res5).
OUT_FEATURES_KEYS = {"D2DiNAT": "MODEL.DINAT.OUT_FEATURES", "D2SwinTransformer": "MODEL.SWIN.OUT_FEATURES",
                     "D2ShiftViT": "MODEL.SHIFTVIT.OUT_FEATURES", "D2HRViT": "MODEL.HRVIT.OUT_FEATURES",
                     "D2CoAtNet": "MODEL.COATNET.OUT_FEATURES", "D2LaViT": "MODEL.LAVIT.OUT_FEATURES",
                     "D2TimmBackbone": None}


@pytest.mark.parametrize("name", PROJECT_BACKBONES)
def test_out_features_are_checked_and_select_the_outputs(name):
    key = OUT_FEATURES_KEYS[name]
    if key is None:
        assert list(_build(name).output_shape()) == ["res2", "res3", "res4", "res5"]
        return
    with pytest.raises(ValueError, match=rf"{key} has unknown names \['res6', 'p5'\]; choose from \('res2'"):
        _build(name, **{key: '["res3", "res6", "p5"]'})
    backbone = _build(name, **{key: '["res3", "res5"]'}).eval()
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 97, 131))
    assert list(features) == list(backbone.output_shape()) == ["res3", "res5"]
    assert tuple(features["res5"].shape[-2:]) == (4, 5)


@pytest.mark.parametrize("name", PROJECT_BACKBONES)
def test_input_without_a_batch_axis_is_named(name):
    with pytest.raises(ValueError, match=rf"{name} takes \(N, C, H, W\) input, got shape \(3, 64, 64\)"):
        _build(name)(torch.randn(3, 64, 64))


@pytest.mark.parametrize("name", PROJECT_BACKBONES)
def test_state_dict_round_trip_loads_strictly_and_gives_the_same_features(name):
    saved = _build(name, seed=0).eval()
    buffer = io.BytesIO()
    torch.save(saved.state_dict(), buffer)
    buffer.seek(0)
    loaded = _build(name, seed=1).eval()
    image = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        before = loaded(image)
        loaded.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
        expected, features = saved(image), loaded(image)
    assert any(not torch.equal(before[key], expected[key]) for key in expected)  # the seeds made other weights
    for key in expected:
        assert torch.equal(features[key], expected[key]), key


@pytest.mark.parametrize("name", PROJECT_BACKBONES)
def test_builds_on_the_meta_device(name):
    with torch.device("meta"):
        on_meta = build_backbone(_cfg(name))
    assert all(t.device.type == "meta" for t in [*on_meta.parameters(), *on_meta.buffers()])
    on_cpu = _build(name)
    assert on_meta.output_shape() == on_cpu.output_shape()
    assert {k: v.shape for k, v in on_meta.state_dict().items()} == {k: v.shape for k, v in on_cpu.state_dict().items()}


@pytest.mark.parametrize("name", PROJECT_BACKBONES)
def test_activation_checkpointing_gives_the_same_gradients_and_keeps_less(name):
    image = torch.randn(2, 3, 97, 131)
    runs = {}
    for enabled in (False, True):
        backbone = _build(name, **{"MODEL.BACKBONE.ACTIVATION_CHECKPOINTING": str(enabled)}).train()
        assert backbone.activation_checkpointing is enabled
        torch.manual_seed(3)
        features, kept = saved_for_backward(lambda: backbone(image), exclude=backbone.parameters())
        _loss(features).backward()
        runs[enabled] = backbone, kept
    (plain, kept_plain), (checkpointed, kept_checkpointed) = runs[False], runs[True]
    assert kept_checkpointed < 0.7 * kept_plain, (kept_checkpointed, kept_plain)
    for (key, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        assert (a.grad is None) == (b.grad is None), key
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0, msg=key)
    for (key, a), b in zip(plain.named_buffers(), checkpointed.buffers()):  # BatchNorm statistics: one update
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=key)
