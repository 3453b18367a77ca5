"""HRViT backbone: the reference fixture, the released variants' names and sizes, any input size (520x520,
800x1333), the stripe padding and the fusion crop against formulas written out, norms, config keys, and the
HRViT-b3 Mask2Former configs (the DiNAT-L recipe with the backbone swapped, built on the meta device)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_backbone
from project_paths import CONFIGS, FIXTURES
from test_configs import build_on_meta

from dinat_m2f import get_project_cfg
from dinat_m2f.config import load_project_config
from dinat_m2f.layers import DropPath
from dinat_m2f.modeling.backbone.hrvit import (
    VARIANTS, HRViTFusion, build_variant, des_split, from_reference_config, half_heads, stripe_attention,
)
from conftest import load_fixture

# The smallest layout the model allows (4 modules opening one branch each), for the large input sizes.
TINY = dict(channels=8, channel_list=[[8], [8, 16], [8, 16, 16], [8, 16, 16, 16]],
            block_list=[[1], [1, 1], [1, 1, 1], [1, 1, 1, 1]], dim_head=8, ws_list=[1, 2, 7, 7],
            mlp_ratio_list=[2, 2, 2, 2])


@pytest.fixture(scope="module")
def reference():
    return load_fixture("backbone_hrvit_reference.pt")


def _reference_model(reference, **overrides):
    model = from_reference_config(reference["config"], **overrides).eval()
    model.load_state_dict(reference["state_dict"], strict=True)
    return model


def test_reproduces_the_reference_features(reference):
    model = _reference_model(reference)
    with torch.no_grad():
        features = model(reference["image"])
    for name, expected in reference["features"].items():
        assert features[name].shape == expected.shape, name
        assert (features[name] - expected).abs().max() <= 1e-4, name


def test_frozen_bn_loads_a_bn_checkpoint_strictly_and_keeps_the_numbers(reference):
    model = _reference_model(reference, norm="FrozenBN")
    assert isinstance(model.stem.bn1, FrozenBatchNorm2d)
    assert isinstance(model.features[1].branches[0][0].attn.attn_bn, FrozenBatchNorm2d)
    with torch.no_grad():
        features = model.train()(reference["image"])  # frozen: the same in train mode
    for name, expected in reference["features"].items():
        assert (features[name] - expected).abs().max() <= 1e-4, name


def test_bfloat16_autocast_close_to_float32(reference):
    model = _reference_model(reference)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        features = model(reference["image"])
    for name, expected in reference["features"].items():
        out = features[name].float()
        assert torch.isfinite(out).all()
        assert (out - expected).norm() / expected.norm() < 3e-2, name


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variants_have_the_reference_names_shapes_and_parameter_counts(name):
    manifest = json.loads((FIXTURES / "backbone_manifests.json").read_text())[name]
    with torch.device("meta"):
        model = build_variant(name)
    assert sum(p.numel() for p in model.parameters()) == manifest["params_backbone"]
    assert {k: list(p.shape) for k, p in model.named_parameters()} == manifest["param_keys"]
    buffers = {k: [list(b.shape), str(b.dtype).removeprefix("torch.")] for k, b in model.named_buffers()}
    assert buffers == manifest["persistent_buffers"]


def test_unknown_variant_and_reference_arguments_are_named():
    with pytest.raises(ValueError, match="hrvit_b4"):
        build_variant("hrvit_b4")
    with pytest.raises(ValueError, match=r"\['qkv_bias'\]"):
        from_reference_config(dict(VARIANTS["hrvit_b1"], qkv_bias=True))
    with pytest.raises(ValueError, match="dropout=0.1"):
        from_reference_config(dict(VARIANTS["hrvit_b1"], dropout=0.1))
    with pytest.raises(ValueError, match="last module must have 4 branches"):
        from_reference_config(dict(VARIANTS["hrvit_b1"], channel_list=[[32], [32, 64]], block_list=[[1], [1, 1]]))


@pytest.mark.parametrize("height,width", [(520, 520), (800, 1333)])
def test_any_input_size_runs_with_ceil_sized_outputs(height, width):
    torch.manual_seed(0)
    model = from_reference_config(TINY).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, height, width))
    for i, name in enumerate(("res2", "res3", "res4", "res5")):
        stride = 4 * 2 ** i
        assert features[name].shape == (1, 16 if i else 8, math.ceil(height / stride), math.ceil(width / stride))
        assert torch.isfinite(features[name]).all(), name


def test_odd_sizes_train():
    torch.manual_seed(0)
    model = from_reference_config(TINY, drop_path_rate=0.2).train()
    features = model(torch.randn(2, 3, 70, 99))
    assert features["res5"].shape == (2, 16, 3, 4)
    sum(f.square().mean() for f in features.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def _stripe_attention_by_hand(q, v, stripe, heads, scale):
    """Per stripe, softmax over its real tokens only (the last stripe is shorter)."""
    batch, height, width, channels = q.shape
    out = torch.empty_like(q)
    for top in range(0, height, stripe):
        rows = slice(top, min(top + stripe, height))
        qs = q[:, rows].reshape(batch, -1, heads, channels // heads).transpose(1, 2)
        vs = v[:, rows].reshape(batch, -1, heads, channels // heads).transpose(1, 2)
        weights = torch.softmax(qs @ vs.transpose(-1, -2) * scale, dim=-1)
        out[:, rows] = (weights @ vs).transpose(1, 2).reshape(batch, -1, width, channels)
    return out


@pytest.mark.parametrize("height,stripe,heads", [(10, 7, 1), (5, 7, 2), (9, 2, 2), (6, 1, 1)])
def test_stripe_padding_leaves_real_tokens_unchanged(height, stripe, heads):
    torch.manual_seed(0)
    q, v = torch.randn(2, height, 6, 8, dtype=torch.float64).unbind(0)
    q, v = q[None].repeat(2, 1, 1, 1), v[None].repeat(2, 1, 1, 1)
    out = stripe_attention(q, v, stripe, heads, scale=0.3)
    assert out.shape == q.shape
    assert (out - _stripe_attention_by_hand(q, v, stripe, heads, 0.3)).abs().max() < 1e-12


def test_fusion_crops_the_upsampled_map_to_the_finer_branch():
    """Two branches of 5x7 and 3x4 (an image that is no multiple of 32): output 0 = GELU(x0 + path(x1)[y // 2,
    x // 2]), output 1 = GELU(down(x0) + x1), and a new third branch at ceil(3/2) x ceil(4/2)."""
    torch.manual_seed(0)
    fusion = HRViTFusion([4, 6], [4, 6, 8], norm="BN").eval()
    x0, x1 = torch.randn(1, 4, 5, 7), torch.randn(1, 6, 3, 4)
    with torch.no_grad():
        out0, out1, out2 = fusion([x0, x1])
        up = fusion.blocks[0][1](x1)
        rows, columns = torch.arange(5) // 2, torch.arange(7) // 2
        assert torch.allclose(out0, F.gelu(x0 + up[:, :, rows][:, :, :, columns]))
        assert torch.allclose(out1, F.gelu(fusion.blocks[1][0](x0) + x1))
    assert out2.shape == (1, 8, 2, 2)


@pytest.mark.parametrize("dim,dim_head,expected", [(16, 16, (1, 8 ** -0.5)), (64, 16, (2, 16 ** -0.5)),
                                                   (32, 32, (1, 16 ** -0.5)), (240, 24, (5, 24 ** -0.5))])
def test_head_split(dim, dim_head, expected):
    assert half_heads(dim, dim_head) == pytest.approx(expected)


@pytest.mark.parametrize("dim,expected", [(16, (4, 4)), (32, (8, 4)), (64, (8, 8)), (128, (16, 8)), (12, (4, 3)),
                                          (24, (4, 6)), (48, (8, 6)), (96, (8, 12))])
def test_des_split_follows_the_reference(dim, expected):
    assert des_split(dim) == expected


def _cfg(**keys):
    cfg = get_project_cfg()
    cfg.MODEL.BACKBONE.NAME = "D2HRViT"
    for key, value in keys.items():
        cfg.MODEL.HRVIT[key] = value
    return cfg


def test_d2_backbone_from_config_keys():
    with torch.device("meta"):
        backbone = build_backbone(_cfg(VARIANT="hrvit_b2", DROP_PATH_RATE=0.2))
    shapes = {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()}
    assert shapes == {"res2": (48, 4), "res3": (96, 8), "res4": (240, 16), "res5": (384, 32)}
    assert backbone.size_divisibility == 32
    assert isinstance(backbone.stem.bn1, torch.nn.SyncBatchNorm)  # the default NORM
    rates = [m.drop_prob for m in backbone.modules() if isinstance(m, DropPath)]
    assert max(rates) == pytest.approx(0.2) and rates == sorted(rates)
    # A layout key replaces the variant's value; an empty VARIANT needs every layout key.
    with torch.device("meta"):
        backbone = build_backbone(_cfg(VARIANT="hrvit_b1", MLP_RATIO_LIST=[2, 2, 2, 2], NORM="BN"))
    assert backbone.features[1].branches[0][0].ffn.fc1.out_features == 64
    with pytest.raises(ValueError, match="MODEL.HRVIT.CHANNELS must be set"):
        build_backbone(_cfg(VARIANT="", **{k.upper(): v for k, v in TINY.items() if k != "channels"}))
    with pytest.raises(ValueError, match="NORM 'GN'"):
        build_backbone(_cfg(NORM="GN"))
    with pytest.raises(ValueError, match="'hrvit_b9'"):
        build_backbone(_cfg(VARIANT="hrvit_b9"))


def test_d2_backbone_runs_a_tiny_layout_and_selects_out_features():
    cfg = _cfg(VARIANT="", OUT_FEATURES=["res3", "res5"], **{k.upper(): v for k, v in TINY.items()})
    backbone = build_backbone(cfg).train()  # SyncBN in one process: plain batch statistics
    features = backbone(torch.randn(2, 3, 96, 64))
    sum(f.sum() for f in features.values()).backward()
    assert backbone.stem.bn1.running_mean.abs().sum() > 0
    assert {k: tuple(v.shape) for k, v in features.items()} == {"res3": (2, 16, 12, 8), "res5": (2, 16, 3, 2)}
    assert set(backbone.output_shape()) == {"res3", "res5"}
    with pytest.raises(ValueError, match="takes \\(N, C, H, W\\)"):
        backbone(torch.randn(3, 96, 64))


# The Mask2Former configs: (classes, queries, parameters of the whole model)
CONFIG_TABLE = {
    "ade20k/semantic": (150, 100, 45_304_015),
    "coco/panoptic": (133, 200, 45_350_846),
}
HRVIT_B3_PARAMETERS = 25_507_960  # backbone_manifests.json: hrvit_b3 params_backbone


@pytest.mark.parametrize("name", sorted(CONFIG_TABLE))
def test_hrvit_b3_config_merges_and_builds_with_the_expected_size(name):
    path = CONFIGS / name / "hrvit_b3.yaml"
    assert "!!python" not in path.read_text() and isinstance(yaml.safe_load(path.read_text()), dict)
    cfg = load_project_config(str(path))  # raises on an unknown key
    reference = load_project_config(str(CONFIGS / name / "dinat_l.yaml"))
    classes, queries, parameters = CONFIG_TABLE[name]
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
