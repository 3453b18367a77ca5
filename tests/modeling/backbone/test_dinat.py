"""DiNAT/NAT backbone: fixture features, bfloat16 autocast, variants, dilation rules, layer scale, reference configs,
config errors, frozen stages, padding; the NAT and DiNAT-T/S/B Mask2Former configs (ADE20K semantic, COCO
panoptic) and the synthetic nat_mini: plain YAML, only the backbone differs from the DiNAT-L (or dinat_mini)
config, and the models they build (meta device) have the variants' parameter counts."""
import pytest
import torch
import yaml
from detectron2.modeling import build_backbone
from project_paths import CONFIGS
from test_configs import build_on_meta, without_backbone

from dinat_m2f import get_project_cfg
from dinat_m2f.config import load_project_config
from dinat_m2f.modeling.backbone.dinat import (
    VARIANTS,
    build_variant,
    from_reference_config,
    gradual_dilations,
    imagenet_dilations,
)

DINAT_L_M2F_DILATIONS = [[1, 14, 1], [1, 4, 1, 7], [1, 2, 1, 3] * 4 + [1, 3], [1] * 5]  # specs/mask2former.md


def _fixture_backbone(m2f_reference):
    cfg = get_project_cfg()
    for key, value in m2f_reference["config"].items():
        if key.startswith(("MODEL.DINAT.", "MODEL.BACKBONE.", "MODEL.PIXEL_")):
            cfg.merge_from_list([key, value])
    backbone = build_backbone(cfg).eval()
    state = {k[len("backbone."):]: v for k, v in m2f_reference["state_dict"].items() if k.startswith("backbone.")}
    backbone.load_state_dict(state, strict=True)
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(1, 3, 1, 1)
    image = (m2f_reference["image"].float()[None] - mean) / std
    return backbone, image


def test_backbone_reproduces_fixture_features(m2f_reference):
    backbone, image = _fixture_backbone(m2f_reference)
    with torch.no_grad():
        features = backbone(image)
    assert set(features) == {"res2", "res3", "res4", "res5"}
    for name, expected in m2f_reference["backbone_features"].items():
        assert features[name].shape == expected.shape
        assert (features[name] - expected).abs().max() < 1e-3, name


def test_bfloat16_autocast_close_to_float32(m2f_reference):
    backbone, image = _fixture_backbone(m2f_reference)
    with torch.no_grad():
        reference = backbone(image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = backbone(image)
    for name, ref in reference.items():
        out = features[name].float()
        assert torch.isfinite(out).all()
        assert (out - ref).norm() / ref.norm() < 2e-2, name


def test_output_shape_and_size_divisibility():
    cfg = get_project_cfg()
    cfg.MODEL.BACKBONE.NAME = "D2DiNAT"
    cfg.MODEL.DINAT.KERNEL_SIZE = 11
    cfg.MODEL.DINAT.DILATIONS = [[1, 14, 1], [1, 4, 1, 7], [1, 2, 1, 3] * 4 + [1, 3], [1] * 5]
    with torch.device("meta"):
        backbone = build_backbone(cfg)
    shapes = {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()}
    assert shapes == {"res2": (192, 4), "res3": (384, 8), "res4": (768, 16), "res5": (1536, 32)}
    assert backbone.size_divisibility == 32
    assert backbone.levels[0].blocks[1].attn.dilation == 14
    assert backbone.levels[2].blocks[17].attn.dilation == 3
    assert tuple(backbone.levels[0].blocks[0].attn.rpb.shape) == (6, 21, 21)


# The papers' parameter counts (whole millions) are of the ImageNet classifiers: a final norm and a 1000-way
# head instead of norm0..norm3. Here: NAT/DiNAT Mini 19.98M, Tiny 27.90M, Small 50.74M, Base 89.77M, Large 200.94M.
PAPER_MILLIONS = {"nat_mini": 20, "nat_tiny": 28, "nat_small": 51, "nat_base": 90,
                  "dinat_mini": 20, "dinat_tiny": 28, "dinat_small": 51, "dinat_base": 90, "dinat_large": 200}


def classifier_parameters(backbone) -> int:
    channels = backbone.num_features[-1]
    out_norms = sum(p.numel() for name, p in backbone.named_parameters() if name.startswith("norm"))
    return sum(p.numel() for p in backbone.parameters()) - out_norms + 2 * channels + channels * 1000 + 1000


@pytest.mark.parametrize("name", sorted(PAPER_MILLIONS))
def test_named_variants_have_the_papers_sizes_and_dilations(name):
    with torch.device("meta"):
        model = build_variant(name)
    assert abs(classifier_parameters(model) / 1e6 - PAPER_MILLIONS[name]) < 1
    assert model.levels[0].blocks[0].layer_scale == name.endswith(("small", "base"))
    dilations = [[b.attn.dilation for b in level.blocks] for level in model.levels]
    if name.startswith("nat_"):
        assert all(d == 1 for level in dilations for d in level)
    else:
        assert dilations == imagenet_dilations(VARIANTS[name]["depths"])
    assert model.levels[0].blocks[0].attn.kernel_size == 7


def test_variant_table_and_unknown_name():
    assert set(VARIANTS) == set(PAPER_MILLIONS)
    with pytest.raises(ValueError, match=r"unknown NAT/DiNAT variant 'nat_large'; known: \['dinat_base'"):
        build_variant("nat_large")


def test_imagenet_rule_at_224_is_8_4_2_1_on_every_second_block():
    assert imagenet_dilations([3, 4, 6, 5]) == [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 3, [1] * 5]
    assert imagenet_dilations([3, 4, 18, 5]) == [[1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5]


def test_gradual_rule_reproduces_dinat_l_mask2former_lists_from_the_640_crop():
    assert gradual_dilations([3, 4, 18, 5], kernel_size=11, size=640) == DINAT_L_M2F_DILATIONS
    # the largest dilation follows the map size: 1024 crops (COCO LSJ) allow 23 / 11 / 5 / 2
    assert gradual_dilations([3, 4, 18, 5], kernel_size=11, size=1024) == [
        [1, 23, 1], [1, 6, 1, 11], [1, 3, 1, 5] * 4 + [1, 5], [1, 1, 1, 2, 1]]
    # maps no larger than the kernel: dilation 1
    assert gradual_dilations([2, 2, 2, 2], kernel_size=7, size=64) == [[1, 2], [1, 1], [1, 1], [1, 1]]


def _small_nat(layer_scale):
    config = dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], mlp_ratio=2.0, kernel_size=5,
                  drop_path_rate=0.0, layer_scale=layer_scale)
    torch.manual_seed(0)
    return from_reference_config(config).eval()


def test_layer_scale_checkpoint_loads_strictly_and_acts():
    image = torch.randn(1, 3, 64, 96)
    plain = _small_nat(None)
    scaled = _small_nat(1e-5)
    checkpoint = dict(plain.state_dict())
    gammas = {f"levels.{i}.blocks.{j}.gamma{n}" for i, d in enumerate([1, 1, 2, 1]) for j in range(d) for n in (1, 2)}
    assert set(scaled.state_dict()) - set(checkpoint) == gammas
    generator = torch.Generator().manual_seed(1)
    checkpoint.update({k: 0.5 + 0.5 * torch.rand(scaled.state_dict()[k].shape, generator=generator) for k in gammas})
    scaled.load_state_dict(checkpoint, strict=True)
    for key in gammas:
        assert torch.equal(scaled.state_dict()[key], checkpoint[key])
    # without LAYER_SCALE the gammas would be unexpected keys: they cannot be lost silently
    with pytest.raises(RuntimeError, match="Unexpected key.*gamma1"):
        plain.load_state_dict(checkpoint, strict=True)
    with torch.no_grad():
        reference = plain(image)
        changed = scaled(image)
        for key in gammas:
            scaled.state_dict()[key].fill_(1.0)
        ones = scaled(image)
        for key in gammas:
            scaled.state_dict()[key].fill_(0.0)
        zeros = scaled(image)
    for name in reference:
        assert torch.equal(ones[name], reference[name]), name  # gamma = 1 is no layer scale
        assert (changed[name] - reference[name]).abs().max() > 1e-2, name
    # gamma = 0 turns every block into the identity: res2 is norm0 of the tokenizer's output
    tokens = plain.patch_embed(image)
    torch.testing.assert_close(zeros["res2"], plain.norm0(tokens).permute(0, 3, 1, 2), rtol=0, atol=1e-6)


def test_layer_scale_key_reads_yaml_strings_and_rejects_others():
    cfg = _tiny_cfg()
    cfg.MODEL.DINAT.LAYER_SCALE = "1e-5"  # what YAML makes of 1e-5 written without a dot
    with torch.device("meta"):
        backbone = build_backbone(cfg)
    assert backbone.levels[0].blocks[0].gamma1.shape == (16,)
    cfg.MODEL.DINAT.LAYER_SCALE = "small"
    with pytest.raises(ValueError, match="MODEL.DINAT.LAYER_SCALE must be a number or None, got 'small'"):
        build_backbone(cfg)


def test_from_reference_config_maps_the_constructor_arguments():
    config = dict(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], mlp_ratio=3.0, kernel_size=5,
                  dilations=[[1, 4], [1, 2], [1, 1], [1, 1]], layer_scale=1e-5, qkv_bias=False,
                  out_indices=(1, 2, 3), num_classes=1000, in_chans=4)
    with torch.device("meta"):
        backbone = from_reference_config(config)
    assert backbone._out_features == ["res3", "res4", "res5"] and not hasattr(backbone, "norm0")
    assert backbone.patch_embed.proj[0].in_channels == 4
    assert backbone.levels[0].blocks[1].attn.dilation == 4
    assert backbone.levels[0].blocks[0].attn.qkv.bias is None
    assert backbone.levels[0].blocks[0].mlp.fc1.out_features == 96
    assert backbone.levels[3].blocks[1].drop_path.drop_prob == pytest.approx(0.2)  # the reference's default
    with pytest.raises(ValueError, match=r"unknown NAT/DiNAT constructor arguments \['window_size'\]"):
        from_reference_config(dict(config, window_size=7))
    with pytest.raises(ValueError, match=r"\['mlp_ratio'\] are required"):
        from_reference_config({k: v for k, v in config.items() if k != "mlp_ratio"})


def test_dilations_mismatch_names_the_level():
    cfg = get_project_cfg()
    cfg.MODEL.BACKBONE.NAME = "D2DiNAT"
    cfg.MODEL.DINAT.DILATIONS = [[1, 14, 1], [1, 4, 1], [1] * 18, [1] * 5]
    with pytest.raises(ValueError, match=r"DILATIONS level 1 has 3 values \[1, 4, 1\] but DEPTHS\[1\] = 4"):
        with torch.device("meta"):
            build_backbone(cfg)
    cfg.MODEL.DINAT.DILATIONS = [[1, 14, 1]]
    with pytest.raises(ValueError, match="one list per level"):
        with torch.device("meta"):
            build_backbone(cfg)
    cfg.MODEL.DINAT.DILATIONS = None
    cfg.MODEL.DINAT.NUM_HEADS = [6, 12, 24]
    with pytest.raises(ValueError, match=r"MODEL.DINAT.NUM_HEADS \[6, 12, 24\] must have one entry per level"):
        with torch.device("meta"):
            build_backbone(cfg)


def _tiny_cfg():
    cfg = get_project_cfg()
    cfg.MODEL.BACKBONE.NAME = "D2DiNAT"
    cfg.MODEL.DINAT.EMBED_DIM = 16
    cfg.MODEL.DINAT.DEPTHS = [1, 1, 2, 1]
    cfg.MODEL.DINAT.NUM_HEADS = [1, 2, 2, 4]
    cfg.MODEL.DINAT.KERNEL_SIZE = 5
    cfg.MODEL.DINAT.DILATIONS = [[6], [3], [1, 2], [1]]
    return cfg


def test_frozen_stages_stop_gradients_and_stay_in_eval():
    cfg = _tiny_cfg()
    cfg.MODEL.DINAT.FROZEN_STAGES = 1
    backbone = build_backbone(cfg).train()
    assert not any(p.requires_grad for p in backbone.patch_embed.parameters())
    assert not any(p.requires_grad for p in backbone.levels[0].parameters())
    assert all(p.requires_grad for p in backbone.levels[1].parameters())
    assert not backbone.levels[0].training and backbone.levels[1].training


def test_small_images_are_padded_not_rejected():
    # 64x96 input: stage 1 is 16x24 but k*d = 30 there; NeighborhoodAttention2D zero-pads as NATTEN 0.14 did.
    backbone = build_backbone(_tiny_cfg()).train()
    features = backbone(torch.randn(2, 3, 64, 96))
    assert features["res2"].shape == (2, 16, 16, 24)
    assert features["res5"].shape == (2, 128, 2, 3)
    features["res5"].sum().backward()
    assert backbone.levels[0].blocks[0].attn.rpb.grad is not None


CONFIG_TASKS = ["ade20k/semantic", "coco/panoptic"]
CONFIG_VARIANTS = {"nat_t": "nat_tiny", "nat_s": "nat_small", "nat_b": "nat_base",
                   "dinat_t": "dinat_tiny", "dinat_s": "dinat_small", "dinat_b": "dinat_base"}
# Whole-model parameter counts (tools/analyze_model.py; docs/BACKBONES.md).
TOTAL_PARAMETERS = {
    "ade20k/semantic": {"nat_t": 47_185_533, "nat_s": 69_894_576, "nat_b": 108_788_259, "dinat_t": 47_185_533,
                        "dinat_s": 69_894_576, "dinat_b": 108_788_259},
    "coco/panoptic": {"nat_t": 47_232_364, "nat_s": 69_941_407, "nat_b": 108_835_090, "dinat_t": 47_232_364,
                      "dinat_s": 69_941_407, "dinat_b": 108_835_090},
}


def test_every_task_has_every_variant_config_as_plain_yaml():
    for task in CONFIG_TASKS:
        found = sorted(p.stem for p in (CONFIGS / task).glob("*.yaml") if p.stem in CONFIG_VARIANTS)
        assert found == sorted(CONFIG_VARIANTS), task
        for name in CONFIG_VARIANTS:
            text = (CONFIGS / task / f"{name}.yaml").read_text()
            assert "!!python" not in text and isinstance(yaml.safe_load(text), dict)


@pytest.mark.parametrize("task", CONFIG_TASKS)
@pytest.mark.parametrize("name", sorted(CONFIG_VARIANTS))
def test_config_changes_only_the_backbone_and_builds_with_the_variants_count(task, name):
    variant = CONFIG_VARIANTS[name]
    cfg = load_project_config(str(CONFIGS / task / f"{name}.yaml"))  # raises on an unknown key
    assert without_backbone(cfg) == without_backbone(load_project_config(str(CONFIGS / task / "dinat_l.yaml")))
    assert cfg.MODEL.WEIGHTS.endswith(".pkl") and variant.split("_")[-1] in cfg.MODEL.WEIGHTS
    reference, d = VARIANTS[variant], cfg.MODEL.DINAT
    assert cfg.MODEL.BACKBONE.NAME == "D2DiNAT" and d.KERNEL_SIZE == 7
    assert (d.EMBED_DIM, d.DEPTHS, d.NUM_HEADS, d.MLP_RATIO) == (
        reference["embed_dim"], reference["depths"], reference["num_heads"], reference["mlp_ratio"])
    assert d.LAYER_SCALE == reference.get("layer_scale")
    assert d.DILATIONS == (None if name.startswith("nat") else gradual_dilations(d.DEPTHS, 7, 640))

    model = build_on_meta(cfg)
    with torch.device("meta"):
        assert sum(p.numel() for p in model.backbone.parameters()) == sum(
            p.numel() for p in build_variant(variant).parameters())
    assert sum(p.numel() for p in model.parameters()) == TOTAL_PARAMETERS[task][name]
    if name.endswith(("_s", "_b")):
        assert model.backbone.levels[2].blocks[17].gamma2.shape == (4 * d.EMBED_DIM,)


def test_synthetic_nat_config_changes_only_the_backbone():
    synthetic = CONFIGS / "synthetic" / "panoptic"
    cfg = load_project_config(str(synthetic / "nat_mini.yaml"))
    assert without_backbone(cfg) == without_backbone(load_project_config(str(synthetic / "dinat_mini.yaml")))
    assert cfg.OUTPUT_DIR == "./output/synthetic/panoptic/nat_mini"
    assert cfg.MODEL.DINAT.DILATIONS is None
    model = build_on_meta(cfg)
    assert sum(p.numel() for p in model.backbone.parameters()) == 1_229_699  # dinat_mini's backbone: 1.23M
