"""DiNAT backbone: fixture features, bfloat16 autocast, variants, config errors, frozen stages, padding."""
import pytest
import torch
from detectron2.modeling import build_backbone

from dinat_m2f import get_project_cfg
from dinat_m2f.modeling.backbone.dinat import DINAT_VARIANTS, build_dinat_variant


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


@pytest.mark.parametrize("name,millions", [("mini", 20), ("tiny", 28), ("small", 51), ("base", 90), ("large", 200)])
def test_named_variants_have_the_papers_sizes(name, millions):
    with torch.device("meta"):
        model = build_dinat_variant(name)
    channels = model.num_features[-1]
    # The paper counts the ImageNet model: a final norm and a 1000-way head instead of norm0..norm3.
    out_norms = sum(getattr(model, f"norm{i}").weight.numel() * 2 for i in range(4))
    params = sum(p.numel() for p in model.parameters()) - out_norms + 2 * channels + channels * 1000 + 1000
    assert abs(params / 1e6 - millions) < 0.03 * millions
    assert (name == "base") == model.levels[0].blocks[0].layer_scale
    assert [b.attn.dilation for b in model.levels[1].blocks] == [1, 4, 1, 4]
    assert set(DINAT_VARIANTS) == {"mini", "tiny", "small", "base", "large"}


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
