"""ShiftViT backbone: the SPACH reference fixture, the registry variants' names and sizes, the shift, padding
of any input size, config errors; the Shift-T/S Mask2Former configs (ADE20K semantic, COCO panoptic) and the
synthetic shiftvit_mini: plain YAML, only the backbone differs from the DiNAT-L (or dinat_mini) config, and the
models they build (meta device) have the variants' parameter counts."""
import json

import pytest
import torch
import yaml
from detectron2.modeling import build_backbone

from conftest import load_fixture
from dinat_m2f import get_project_cfg
from dinat_m2f.config import load_project_config
from dinat_m2f.modeling.backbone.shiftvit import VARIANTS, build_variant, from_reference_config, shift_channels
from project_paths import CONFIGS, FIXTURES
from test_configs import build_on_meta, without_backbone

MANIFEST_VARIANTS = ["shiftvit_light_tiny", "shiftvit_r2_tiny", "shiftvit_r2_small", "shiftvit_r2_base"]


@pytest.fixture(scope="module")
def reference():
    return load_fixture("backbone_shiftvit_reference.pt")


@pytest.fixture(scope="module")
def manifests():
    return json.loads((FIXTURES / "backbone_manifests.json").read_text())


def test_reproduces_the_reference_stage_outputs_and_features(reference):
    backbone = from_reference_config(reference["config"]).eval()
    backbone.load_state_dict(reference["state_dict"], strict=True)
    stage_outputs = {}
    for i, layer in enumerate(backbone.layers):
        layer.register_forward_hook(lambda module, args, out, i=i: stage_outputs.update({f"res{i + 2}": out[1]}))
    with torch.no_grad():
        features = backbone(reference["image"])
    for name, expected in reference["stage_outputs"].items():
        assert stage_outputs[name].shape == expected.shape
        assert (stage_outputs[name] - expected).abs().max() <= 1e-4, name
    for name, expected in reference["features"].items():
        assert features[name].shape == expected.shape
        assert (features[name] - expected).abs().max() <= 1e-4, name
    assert {k: v.channels for k, v in backbone.output_shape().items()} == reference["channels"]
    assert {k: v.stride for k, v in backbone.output_shape().items()} == reference["strides"]


@pytest.mark.parametrize("name", MANIFEST_VARIANTS)
def test_registry_variants_have_the_manifest_names_shapes_and_counts(manifests, name):
    manifest = manifests[name]
    with torch.device("meta"):
        backbone = build_variant(name)
    expected = {**manifest["param_keys"], **manifest["added"]}
    assert {k: list(v.shape) for k, v in backbone.state_dict().items()} == expected
    assert sum(p.numel() for p in backbone.parameters()) == manifest["params_backbone_with_added"]
    constructor = {k: v for k, v in manifest["constructor"].items() if k not in ("registry_function", "num_classes")}
    assert VARIANTS[name] == constructor


def test_light_small_is_the_specs_33_8m_model():
    with torch.device("meta"):
        backbone = build_variant("shiftvit_light_small")
    # the spec's 33.8M counts the classifier: the final GN1 and a 1000-way head instead of norm0..norm3
    params = sum(p.numel() for p in backbone.parameters())
    out_norms = sum(p.numel() for k, p in backbone.named_parameters() if k.startswith("norm"))
    assert round((params - out_norms + 2 * 768 + 768 * 1000 + 1000) / 1e5) == 338
    assert set(VARIANTS) == set(MANIFEST_VARIANTS) | {"shiftvit_light_small"}


def test_shift_moves_one_group_per_direction_and_fills_zeros():
    x = torch.arange(1, 1 + 9 * 3 * 3, dtype=torch.float32).reshape(1, 9, 3, 3)  # C=9, n_div=4: g=2
    out = shift_channels(x, n_div=4)
    for c in (0, 1):  # left: out(col c) = in(col c+1)
        assert torch.equal(out[0, c, :, :2], x[0, c, :, 1:]) and not out[0, c, :, 2].any()
    for c in (2, 3):  # right
        assert torch.equal(out[0, c, :, 1:], x[0, c, :, :2]) and not out[0, c, :, 0].any()
    for c in (4, 5):  # up: out(row r) = in(row r+1)
        assert torch.equal(out[0, c, :2], x[0, c, 1:]) and not out[0, c, 2].any()
    for c in (6, 7):  # down
        assert torch.equal(out[0, c, 1:], x[0, c, :2]) and not out[0, c, 0].any()
    assert torch.equal(out[0, 8], x[0, 8])  # channels >= 4g stay


def _small_cfg():
    cfg = get_project_cfg()
    cfg.MODEL.BACKBONE.NAME = "D2ShiftViT"
    cfg.MODEL.SHIFTVIT.EMBED_DIM = 16
    cfg.MODEL.SHIFTVIT.DEPTHS = [1, 1, 2, 1]
    cfg.MODEL.SHIFTVIT.DROP_PATH_RATE = 0.0
    return cfg


def test_any_input_size_is_padded_to_32_and_cropped_back():
    torch.manual_seed(0)
    backbone = build_backbone(_small_cfg()).eval()
    assert backbone.size_divisibility == 32
    image = torch.randn(2, 3, 100, 70)
    padded = torch.nn.functional.pad(image, (0, 26, 0, 28))  # 128 x 96, what the meta-architecture feeds
    with torch.no_grad():
        features, reference = backbone(image), backbone(padded)
    for name, (height, width) in {"res2": (25, 18), "res3": (13, 9), "res4": (7, 5), "res5": (4, 3)}.items():
        assert features[name].shape[-2:] == (height, width)
        assert torch.equal(features[name], reference[name][..., :height, :width])
    backbone.train()
    backbone(torch.randn(1, 3, 37, 45))["res5"].sum().backward()
    assert backbone.layers[0].blocks[0].mlp.fc1.weight.grad is not None


def test_batch_norm_option_and_out_features():
    cfg = _small_cfg()
    cfg.MODEL.SHIFTVIT.NORM = "BN"
    cfg.MODEL.SHIFTVIT.OUT_FEATURES = ["res3", "res5"]
    backbone = build_backbone(cfg)
    assert "layers.0.blocks.0.norm2.running_var" in backbone.state_dict()
    assert not hasattr(backbone, "norm0") and hasattr(backbone, "norm3")
    assert {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()} == {"res3": (32, 8), "res5": (128, 32)}
    assert set(backbone(torch.randn(2, 3, 64, 64))) == {"res3", "res5"}


@pytest.mark.parametrize("key,value,message", [
    ("DEPTHS", [2, 2, 6], r"MODEL.SHIFTVIT.DEPTHS must have one entry per level res2..res5 \(4\), got 3"),
    ("DEPTHS", [2, 2, -1, 2], r"MODEL.SHIFTVIT.DEPTHS level 2 must be a block count >= 0, got -1"),
    ("NORM", "LN", r"MODEL.SHIFTVIT.NORM 'LN' is unknown; known: \['BN', 'GN1'\]"),
    ("N_DIV", 3, r"MODEL.SHIFTVIT.N_DIV must be >= 4"),
])
def test_bad_config_values_name_the_key(key, value, message):
    cfg = _small_cfg()
    cfg.MODEL.SHIFTVIT[key] = value
    with pytest.raises(ValueError, match=message):
        with torch.device("meta"):
            build_backbone(cfg)


def test_bad_reference_config_and_unknown_variant():
    with pytest.raises(ValueError, match=r"unknown ShiftViT variant 'shiftvit_tiny'; known: \['shiftvit_light_small', "):
        build_variant("shiftvit_tiny")
    with pytest.raises(ValueError, match=r"unknown ShiftViT constructor arguments \['window_size'\]"):
        from_reference_config({"window_size": 7})
    with pytest.raises(ValueError, match=r"ShiftViT patch_size=8 is not supported \(only the reference's 4\)"):
        from_reference_config({"patch_size": 8})


CONFIG_TASKS = ["ade20k/semantic", "coco/panoptic"]
CONFIG_VARIANTS = {"shiftvit_t": "shiftvit_r2_tiny", "shiftvit_s": "shiftvit_r2_small"}
# Whole-model parameter counts (tools/analyze_model.py; docs/BACKBONES.md).
TOTAL_PARAMETERS = {"ade20k/semantic": {"shiftvit_t": 47_717_943, "shiftvit_s": 69_455_415},
                    "coco/panoptic": {"shiftvit_t": 47_764_774, "shiftvit_s": 69_502_246}}


@pytest.mark.parametrize("task", CONFIG_TASKS)
@pytest.mark.parametrize("name", sorted(CONFIG_VARIANTS))
def test_config_changes_only_the_backbone_and_builds_with_the_variants_count(manifests, task, name):
    variant = CONFIG_VARIANTS[name]
    path = CONFIGS / task / f"{name}.yaml"
    assert "!!python" not in path.read_text() and isinstance(yaml.safe_load(path.read_text()), dict)
    cfg = load_project_config(str(path))  # raises on an unknown key
    assert without_backbone(cfg) == without_backbone(load_project_config(str(CONFIGS / task / "dinat_l.yaml")))
    assert cfg.MODEL.WEIGHTS.endswith(".pkl") and variant.split("_")[-1] in cfg.MODEL.WEIGHTS
    reference, s = VARIANTS[variant], cfg.MODEL.SHIFTVIT
    assert cfg.MODEL.BACKBONE.NAME == "D2ShiftViT" and s.NORM == "GN1"
    assert (s.EMBED_DIM, s.DEPTHS, s.MLP_RATIO, s.N_DIV) == (
        reference["embed_dim"], reference["depths"], reference["mlp_ratio"], reference["n_div"])

    model = build_on_meta(cfg)
    assert sum(p.numel() for p in model.backbone.parameters()) == manifests[variant]["params_backbone_with_added"]
    assert sum(p.numel() for p in model.parameters()) == TOTAL_PARAMETERS[task][name]


def test_synthetic_shiftvit_config_changes_only_the_backbone():
    synthetic = CONFIGS / "synthetic" / "panoptic"
    cfg = load_project_config(str(synthetic / "shiftvit_mini.yaml"))
    assert without_backbone(cfg) == without_backbone(load_project_config(str(synthetic / "dinat_mini.yaml")))
    assert cfg.OUTPUT_DIR == "./output/synthetic/panoptic/shiftvit_mini"
    backbone = sum(p.numel() for p in build_on_meta(cfg).backbone.parameters())
    assert 0.8e6 < backbone < 1.3e6  # dinat_mini's backbone: 1.23M
