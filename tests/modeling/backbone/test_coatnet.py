"""CoAtNet backbone: timm's fixtures (native and resized input), the table resize, the released variants'
parameter counts, the bias cache and its gradients, windowed attention, any input size, bfloat16, config; the
CoAtNet Mask2Former configs (plain YAML over the DiNAT-L recipes, the models they build on the meta device)."""
import copy
import json

import pytest
import torch
import yaml
from conftest import load_fixture
from detectron2.modeling import build_backbone
from project_paths import CONFIGS, FIXTURES
from test_configs import TABLE, build_on_meta

from dinat_m2f import get_project_cfg
from dinat_m2f.config import load_project_config
from dinat_m2f.modeling.backbone import coatnet
from dinat_m2f.modeling.backbone.coatnet import (
    VARIANTS, Attention2d, RelPosBias, TransformerCfg, build_variant, from_reference_config,
    resize_rel_pos_bias_table, resize_table,
)

FIXTURE_FILES = ["backbone_coatnet_reference.pt", "backbone_coatnet_rmlp_reference.pt"]
RELEASED = ["coatnet_0_rw_224", "coatnet_1_rw_224", "coatnet_2_rw_224", "coatnet_rmlp_2_rw_224"]
PAPER = ["coatnet_0_224", "coatnet_1_224", "coatnet_2_224", "coatnet_3_224"]


@pytest.fixture(scope="module", params=FIXTURE_FILES)
def reference(request):
    return load_fixture(request.param)


def _fixture_model(reference):
    model = from_reference_config(reference["config"]).eval()
    model.load_state_dict(reference["state_dict"], strict=True)
    return model


def _max_error(features, expected):
    assert set(features) == set(expected)
    return {name: (features[name] - value).abs().max().item() for name, value in expected.items()}


def test_fixture_native_size(reference):
    model = _fixture_model(reference)
    with torch.no_grad():
        features = model(reference["image"])
    for name, error in _max_error(features, reference["features"]).items():
        assert error <= 1e-4, (name, error)


def test_resize_reproduces_the_fixture_tables(reference):
    resized = reference["state_dict_resized"]
    for key, value in reference["state_dict"].items():
        if key not in reference["resized_keys"]:
            assert torch.equal(resized[key], value), key
            continue
        res = f"res{int(key.split('.')[1]) + 2}"
        table = resize_rel_pos_bias_table(value, reference["stage_grids"][res], reference["stage_grids_resized"][res])
        assert table.shape == resized[key].shape
        assert (table - resized[key]).abs().max() < 1e-5, key
    assert len(reference["resized_keys"]) == (0 if reference["variant"] == "rmlp_reference" else 4)


def test_fixture_other_size_equals_timm_rebuilt_and_resized(reference):
    """The model built at the native size, run on the resized image, equals timm's model rebuilt for that size
    with its tables resized: the bias follows the grid."""
    model = _fixture_model(reference)
    assert reference["image_resized"].shape[-2:] != reference["image"].shape[-2:]
    with torch.no_grad():
        features = model(reference["image_resized"])
    for name, error in _max_error(features, reference["features_resized"]).items():
        assert error <= 1e-4, (name, error)


@pytest.mark.parametrize("src,dst", [((14, 14), (14, 18)), ((7, 7), (5, 7)), ((10, 14), (16, 12)),
                                     ((14, 14), (64, 64)), ((7, 7), (2, 3)), ((5, 7), (1, 1))])
def test_resize_equals_timm(src, dst):
    timm_layers = pytest.importorskip("timm.layers")
    table = torch.randn((2 * src[0] - 1) * (2 * src[1] - 1), 3)
    new_shape = ((2 * dst[0] - 1) * (2 * dst[1] - 1), 3)
    expected = timm_layers.resize_rel_pos_bias_table(table, dst, new_shape, old_window_size=src)
    assert (resize_rel_pos_bias_table(table, src, dst) - expected).abs().max() < 1e-5


def test_resize_keeps_a_table_of_the_same_grid_and_resamples_both_axes_otherwise():
    table = torch.randn(2, 27, 27)
    assert resize_table(table, (27, 27)) is table
    wider = resize_table(table, (27, 35))
    assert not torch.allclose(wider[:, :, 4:31], table[:, :, :27])  # the unchanged axis is re-sampled too
    # the centre offset (0, 0) keeps its value; far offsets beyond the source take the edge value
    assert torch.allclose(wider[:, 13, 17], table[:, 13, 13])
    assert torch.allclose(resize_table(table, (1, 1))[:, 0, 0], table[:, 13, 13])


def test_resize_is_differentiable():
    table = torch.randn(1, 5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: resize_table(t, (9, 3)), (table,))


# -- released variants and the paper's layouts ---------------------------------------------------------------

@pytest.fixture(scope="module")
def manifests():
    return json.loads((FIXTURES / "backbone_manifests.json").read_text())


@pytest.mark.parametrize("name", RELEASED)
def test_released_variant_has_timms_names_shapes_and_parameter_count(name, manifests):
    manifest = manifests[name]
    with torch.device("meta"):
        model = build_variant(name)
    assert sum(p.numel() for p in model.parameters()) == manifest["params_backbone_with_added"]
    expected = dict(manifest["param_keys"])
    expected.update({k: shape for k, (shape, _) in manifest["persistent_buffers"].items()})
    expected.update(manifest["added"])
    state = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert state == {k: list(v) for k, v in expected.items()}
    assert not any("relative_position_index" in k or "rel_coords_log" in k for k in state)


@pytest.mark.parametrize("name", PAPER)
def test_paper_layouts_have_timms_names_and_shapes(name):
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        reference = timm.create_model(name)
        model = build_variant(name)
    expected = {k: v.shape for k, v in reference.state_dict().items()
                if not k.startswith("head.") and "relative_position_index" not in k}
    state = {k: v.shape for k, v in model.state_dict().items() if not k.startswith(("norm0", "norm1", "norm2", "norm3"))}
    assert state == expected


def _small(config: dict, **cfg) -> dict:
    config = copy.deepcopy(config)
    config["cfg"].update(dict(embed_dim=[16, 32, 48, 64], depths=[2, 2, 2, 2], stem_width=16), **cfg)
    config["cfg"]["transformer_cfg"]["dim_head"] = 16
    config["img_size"] = [64, 96]
    return config


def test_paper_flags_compute_what_timm_computes():
    """No fixture covers the paper family's flags (GELU, BN-only pre-norm, expansion from the output width,
    attention at the output width, biased 1x1 convs): compare with timm itself on a small model."""
    pytest.importorskip("timm")
    from timm.models.maxxvit import MaxxVit, MaxxVitCfg, MaxxVitConvCfg, MaxxVitTransformerCfg

    config = _small(VARIANTS["coatnet_0_224"])
    cfg = dict(config["cfg"])
    cfg["conv_cfg"] = MaxxVitConvCfg(**cfg["conv_cfg"])
    cfg["transformer_cfg"] = MaxxVitTransformerCfg(**cfg["transformer_cfg"])
    torch.manual_seed(0)
    reference = MaxxVit(MaxxVitCfg(**cfg), img_size=config["img_size"], num_classes=0).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.1 * torch.randn_like(p))  # leave no zero-initialized tensor
    model = from_reference_config(config).eval()
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith(("head.", "norm."))
             and "relative_position_index" not in k}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert sorted(missing) == [f"norm{i}.{p}" for i in range(4) for p in ("bias", "weight")] and not unexpected
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        x, y = model.stem(image), reference.stem(image)
        for ours, theirs in zip(model.stages, reference.stages):
            x, y = ours(x), theirs(y)
            assert (x - y).abs().max() < 1e-4


# -- the bias follows the grid: cache, invalidation, gradients ---------------------------------------------

def _tiny(**kwargs):
    config = _small(VARIANTS["coatnet_0_rw_224"], stem_width=[16, 16])
    return from_reference_config(config, **kwargs)


def test_resized_table_is_made_once_per_grid_and_dtype():
    model = _tiny().eval()
    rel_pos = model.stages[2].blocks[1].attn.rel_pos
    with torch.no_grad():
        first = rel_pos.table((6, 8), torch.float32)
        assert rel_pos.table((6, 8), torch.float32) is first
        assert rel_pos.table((4, 6), torch.float32) is not first
        assert rel_pos.table((6, 8), torch.bfloat16).dtype == torch.bfloat16
        assert rel_pos.table((6, 8), torch.float32) is first
    assert rel_pos.table((6, 8), torch.float32) is not first  # gradients flow: computed each call


def test_cache_sees_loaded_weights_and_optimizer_steps():
    torch.manual_seed(0)
    model = _tiny().eval()
    image = torch.randn(1, 3, 80, 112)  # not the 64x96 the tables were made for
    with torch.no_grad():
        before = model(image)
        model.load_state_dict({k: v + 0.1 * torch.randn_like(v) if "relative_position" in k else v
                               for k, v in model.state_dict().items()})
        loaded = model(image)
    fresh = _tiny().eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = fresh(image)
    assert (loaded["res5"] - before["res5"]).abs().max() > 1e-3
    assert (loaded["res5"] - expected["res5"]).abs().max() < 1e-6

    for fused in (False, True):  # the fused AdamW does not bump the parameters' version counters
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused)
        model.train()
        sum(f.square().mean() for f in model(image).values()).backward()
        optimizer.step()
        model.eval()
        fresh.load_state_dict(model.state_dict())
        with torch.no_grad():
            stepped, expected = model(image), fresh(image)
        for name in stepped:
            assert (stepped[name] - expected[name]).abs().max() < 1e-6, (fused, name)


def test_training_backpropagates_into_the_table_through_the_resize():
    torch.manual_seed(0)
    model = _tiny().train()
    image = torch.randn(2, 3, 96, 80)
    tables = [m.relative_position_bias_table for m in model.modules() if isinstance(m, RelPosBias)]
    assert len(tables) == 4
    for _ in range(2):  # a second step must not reuse a graph from the first
        model.zero_grad()
        sum(f.square().mean() for f in model(image).values()).backward()
        assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in tables)

    # the gradient equals the one through an explicit float64 bias of the resized table
    block = model.stages[3].blocks[1]
    x = torch.randn(1, block.attn.qkv.in_channels, 3, 5, dtype=torch.float64)
    block = block.double().eval()
    table = block.attn.rel_pos.relative_position_bias_table
    grad = torch.autograd.grad(block.attn(x).sum(), table)[0]
    reference = _reference_attention(block.attn, x, grid=(3, 5))
    expected = torch.autograd.grad(reference.sum(), table)[0]
    assert (grad - expected).abs().max() < 1e-10


def _reference_attention(attn: Attention2d, x: torch.Tensor, grid, window: int = 0) -> torch.Tensor:
    """Softmax attention written out per query: the window of a query is the one of its position // window
    along each axis, moved back inside the map at the end; the bias is the table resized to that grid."""
    batch, _, height, width = x.shape
    heads, d = attn.num_heads, attn.dim_head
    if attn.head_first:  # channels: q, k, v of head 0, then of head 1, ...
        q, k, v = attn.qkv(x).view(batch, heads, 3, d, height, width).unbind(2)
    else:  # q of every head, then k, then v
        q, k, v = attn.qkv(x).view(batch, 3, heads, d, height, width).unbind(1)
    wh, ww = (min(height, window), min(width, window)) if window else (height, width)
    table = attn.rel_pos._make_table((wh, ww))
    out = torch.zeros(batch, heads, d, height, width, dtype=x.dtype)
    for y in range(height):
        for xx in range(width):
            y0 = min((y // window) * window, height - wh) if window else 0
            x0 = min((xx // window) * window, width - ww) if window else 0
            keys = k[:, :, :, y0:y0 + wh, x0:x0 + ww].flatten(3)
            values = v[:, :, :, y0:y0 + wh, x0:x0 + ww].flatten(3)
            ky, kx = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
            bias = table[:, (y - y0) - ky.flatten() + wh - 1, (xx - x0) - kx.flatten() + ww - 1]
            logits = torch.einsum("bhd,bhdn->bhn", q[:, :, :, y, xx], keys) * d ** -0.5 + bias
            out[:, :, :, y, xx] = torch.einsum("bhn,bhdn->bhd", logits.softmax(-1), values)
    return attn.proj(out.reshape(batch, heads * d, height, width))


@pytest.mark.parametrize("head_first", [True, False])
def test_global_attention_equals_the_written_out_formula(head_first):
    torch.manual_seed(0)
    cfg = TransformerCfg(dim_head=8, head_first=head_first)
    attn = Attention2d(16, 16, cfg, RelPosBias(2, (4, 4))).double().eval()
    x = torch.randn(2, 16, 5, 3, dtype=torch.float64)
    with torch.no_grad():
        assert (attn(x) - _reference_attention(attn, x, (5, 3))).abs().max() < 1e-10


def test_window_attention_equals_the_written_out_formula():
    torch.manual_seed(0)
    attn = Attention2d(16, 16, TransformerCfg(dim_head=8), RelPosBias(2, (4, 4)), window=4).double().eval()
    x = torch.randn(1, 16, 10, 7, dtype=torch.float64)  # windows: rows 0-3, 4-7, 6-9; cols 0-3, 3-6
    with torch.no_grad():
        assert (attn(x) - _reference_attention(attn, x, (10, 7), window=4)).abs().max() < 1e-10
        small = torch.randn(1, 16, 4, 3, dtype=torch.float64)  # fits in one window: global attention
        assert (attn(small) - _reference_attention(attn, small, (4, 3))).abs().max() < 1e-10


def test_window_of_the_pretraining_grid_uses_the_table_unresized():
    model = _tiny(attn_window=4).eval()  # pretraining grids 4x6 (stride 16) and 2x3 (stride 32)
    attn = model.stages[2].blocks[1].attn
    assert (attn.window, model.stages[3].blocks[1].attn.window) == (4, 2)
    table = attn.rel_pos.relative_position_bias_table
    with torch.no_grad():
        assert torch.equal(attn.rel_pos.table((4, 6), torch.float32), table.view(7, 11, -1).permute(2, 0, 1))
        model(torch.randn(1, 3, 160, 224))  # 10x14 at stride 16: windowed


# -- any size, bfloat16 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("stride_mode", ["pool", "dw"])
@pytest.mark.parametrize("size", [(520, 520), (800, 1333), (97, 61)])
def test_any_input_size_runs(size, stride_mode):
    config = _small(VARIANTS["coatnet_0_rw_224"], depths=[1, 1, 1, 1], stem_width=[8, 16])
    config["cfg"]["conv_cfg"]["stride_mode"] = stride_mode
    model = from_reference_config(config).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, *size))
    height, width = ((s - 1) // 2 + 1 for s in size)  # the stem
    for name, channels in zip(("res2", "res3", "res4", "res5"), (16, 32, 48, 64)):
        height, width = (height - 1) // 2 + 1, (width - 1) // 2 + 1
        assert features[name].shape == (1, channels, height, width)
        assert torch.isfinite(features[name]).all()


def test_ceil_pooling_averages_the_real_pixels_of_a_partial_window():
    x = torch.arange(15.0).view(1, 1, 3, 5)
    pooled = coatnet.Downsample2d(1, 1)(x)
    assert pooled.shape == (1, 1, 2, 3)
    assert pooled[0, 0, 1, 2] == x[0, 0, 2, 4] and pooled[0, 0, 0, 2] == (x[0, 0, 0, 4] + x[0, 0, 1, 4]) / 2


def test_bfloat16_autocast_close_to_float32():
    reference = load_fixture(FIXTURE_FILES[0])
    model = _fixture_model(reference)
    image = reference["image_resized"][..., :128, :160]  # not the native size: resized tables
    with torch.no_grad():
        expected = model(image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = model(image)
    for name, ref in expected.items():
        out = features[name].float()
        assert torch.isfinite(out).all()
        assert (out - ref).norm() / ref.norm() < 2e-2, name


# -- detectron2 config --------------------------------------------------------------------------------------

def _cfg(**keys):
    cfg = get_project_cfg()
    cfg.MODEL.BACKBONE.NAME = "D2CoAtNet"
    for key, value in keys.items():
        setattr(cfg.MODEL.COATNET, key, value)
    return cfg


def test_d2_backbone_from_a_variant_and_with_its_layout_replaced():
    with torch.device("meta"):
        backbone = build_backbone(_cfg(VARIANT="coatnet_2_rw_224"))
    shapes = {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()}
    assert shapes == {"res2": (128, 4), "res3": (256, 8), "res4": (512, 16), "res5": (1024, 32)}
    assert backbone.size_divisibility == 32
    assert backbone.stages[2].blocks[0].attn.rel_pos.grid == (14, 14)

    backbone = build_backbone(_cfg(EMBED_DIM=[16, 32, 48, 64], DEPTHS=[1, 1, 2, 1], STEM_WIDTH=[8, 16], DIM_HEAD=16,
                                   PRETRAIN_IMG_SIZE=[160, 160], ATTN_WINDOW=6, OUT_FEATURES=["res3", "res5"]))
    assert backbone.stages[3].blocks[0].attn.rel_pos.grid == (5, 5)
    assert backbone.stages[2].blocks[1].attn.window == 6 and backbone.stages[3].blocks[0].attn.window == 3
    features = backbone.eval()(torch.randn(1, 3, 128, 192))
    assert {k: tuple(v.shape) for k, v in features.items()} == {"res3": (1, 32, 16, 24), "res5": (1, 64, 4, 6)}


@pytest.mark.parametrize("keys,message", [
    (dict(VARIANT="coatnet_9"), "MODEL.COATNET.VARIANT: unknown CoAtNet variant 'coatnet_9'"),
    (dict(ATTN_WINDOW=-1), "attn_window must be 0"),
    (dict(DIM_HEAD=20), "attention width 192 is not a multiple of dim_head 20"),
])
def test_config_errors_name_the_key(keys, message):
    with pytest.raises(ValueError, match=message):
        with torch.device("meta"):
            build_backbone(_cfg(**keys))


def test_unsupported_reference_fields_are_named():
    config = copy.deepcopy(VARIANTS["coatnet_0_rw_224"])
    config["cfg"]["transformer_cfg"]["rel_pos_type"] = "bias_tf"
    with pytest.raises(ValueError, match=r"transformer_cfg.rel_pos_type = 'bias_tf' is not supported"):
        from_reference_config(config)
    config = copy.deepcopy(VARIANTS["coatnet_0_rw_224"])
    config["cfg"]["conv_cfg"]["expand_outputs"] = True
    with pytest.raises(ValueError, match="unknown CoAtNet conv_cfg field 'expand_outputs'"):
        from_reference_config(config)


# The Mask2Former configs: (variant, ATTN_WINDOW, whole model, pixel decoder); backbones as in backbone_manifests.json
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

    model = build_on_meta(cfg)
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
    model = build_on_meta(cfg)
    assert sum(p.numel() for p in model.parameters()) == 1_641_200
    assert model.backbone.stages[3].blocks[0].attn.rel_pos.grid == (5, 5)  # 160 px crops
