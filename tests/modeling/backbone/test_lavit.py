"""LaViT: each of the paper's parts against its formula written out on small tensors (VA scores, the LA
transform, the attention residual, the diagonality-preserving loss), gradients, any input size, the global
form, the loss in Mask2Former's loss dict, config errors, the variants and the LaViT-T Mask2Former configs."""
import math

import pytest
import torch
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import Instances

import dinat_m2f.data  # noqa: F401  (registers the synthetic dataset the config names)
import dinat_m2f.maskformer_model  # noqa: F401  (registers MaskFormer)
from dinat_m2f.config import get_project_cfg, load_project_config
from dinat_m2f.modeling.backbone.lavit import (
    VARIANTS, AttentionResidual, D2LaViT, LessAttention, VanillaAttention, build_variant,
    diagonality_preserving_loss, from_reference_config, window_grid,
)
from project_paths import CONFIGS
from test_configs import build_on_meta, load_backbone_config

TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), va_depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), drop_path_rate=0.0)


def _randomize(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype))


def test_vanilla_attention_returns_its_pre_softmax_scores():
    dim, heads, n = 4, 2, 4
    attn = VanillaAttention(dim, heads)
    _randomize(attn, 0)
    x = torch.randn(1, 1, n, dim)
    residual = torch.randn(1, 1, heads, n, n)
    grid = window_grid(2, 2, 2, x.device)
    out, scores = attn(x, grid, residual)

    wq, wk, wv = attn.qkv.weight.chunk(3)
    bq, bk, bv = attn.qkv.bias.chunk(3)
    q, k, v = x[0, 0] @ wq.T + bq, x[0, 0] @ wk.T + bk, x[0, 0] @ wv.T + bv
    d = dim // heads
    heads_out = []
    for h in range(heads):
        qh, kh, vh = (t[:, h * d:(h + 1) * d] for t in (q, k, v))
        a = qh @ kh.T / math.sqrt(d) + residual[0, 0, h]
        torch.testing.assert_close(scores[0, 0, h], a)
        heads_out.append(torch.softmax(a, dim=-1) @ vh)
    expected = torch.cat(heads_out, dim=-1) @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(out[0, 0], expected)


def test_less_attention_transform_on_a_hand_made_matrix():
    attn = LessAttention(dim=4, num_heads=1, num_tokens=3)
    a = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0], [4.0, 0.0, 1.0]])
    # Identity start: an untrained LA layer reuses the previous attention.
    torch.testing.assert_close(attn.transform(a), a)

    w_psi = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    w_theta = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    with torch.no_grad():
        attn.psi.weight.copy_(w_psi)
        attn.theta.weight.copy_(w_theta)
    # A^l = Psi(Theta(A)^T)^T with Linear maps y = x W^T: entry (i, j) = sum_k sum_m Psi_ik A_km Theta_jm.
    expected = torch.tensor([[sum(w_psi[i, k] * a[k, m] * w_theta[j, m] for k in range(3) for m in range(3))
                              for j in range(3)] for i in range(3)])
    torch.testing.assert_close(attn.transform(a), expected)
    torch.testing.assert_close(attn.transform(a), w_psi @ a @ w_theta.T)
    # Psi mixes queries (rows) and Theta keys (columns); the transposes matter: Psi A Theta^T != Theta A Psi^T.
    assert not torch.allclose(attn.transform(a), w_theta @ a @ w_psi.T)
    assert expected.tolist() == [[2.0, 18.0, -2.0], [1.0, 0.0, -3.0], [3.0, 2.0, -3.0]]  # by hand


def test_less_attention_projects_only_the_values():
    dim, n = 4, 4
    attn = LessAttention(dim, num_heads=2, num_tokens=n)
    _randomize(attn, 1)
    assert [name for name, _ in attn.named_children()] == ["v", "theta", "psi", "proj"]
    assert attn.v.weight.shape == (dim, dim)  # one projection where VA has three (qkv: 3 dim x dim)
    x = torch.randn(1, 1, n, dim)
    previous = torch.randn(1, 1, 2, n, n)
    out, scores = attn(x, window_grid(2, 2, 2, x.device), previous)
    expected_scores = attn.psi.weight @ previous @ attn.theta.weight.T
    torch.testing.assert_close(scores, expected_scores)
    v = (x @ attn.v.weight.T + attn.v.bias).view(1, 1, n, 2, 2).transpose(2, 3)
    weighted = (torch.softmax(expected_scores, -1) @ v).transpose(2, 3).reshape(1, 1, n, dim)
    torch.testing.assert_close(out, weighted @ attn.proj.weight.T + attn.proj.bias)


@pytest.mark.parametrize("previous_side,side,previous_map,map_", [(4, 4, 8, 4), (4, 2, 4, 2)],
                         ids=["windows", "global"])
def test_attention_residual_formula(previous_side, side, previous_map, map_):
    """Windows: a stage-m window spans 2x2 stage-(m-1) windows; global: one window per stage."""
    in_heads, out_heads = 2, 3
    ar = AttentionResidual(in_heads, out_heads, layer_scale=0.5)
    _randomize(ar, 2)
    previous_grid = window_grid(previous_map, previous_map, previous_side, torch.device("cpu"))
    grid = window_grid(map_, map_, side, torch.device("cpu"))
    n0 = previous_side ** 2
    previous = torch.randn(1, previous_grid.rows * previous_grid.cols, in_heads, n0, n0)
    residual = ar(previous, previous_grid, grid)
    assert residual.shape == (1, grid.rows * grid.cols, out_heads, side * side, side * side)

    half = previous_side // 2

    def source(token):  # stage-m map position -> (stage-(m-1) window, parent position inside it)
        y, x = token
        return (y // half) * previous_grid.cols + x // half, (y % half, x % half)

    def child(parent, dy, dx):  # index of a child token inside its stage-(m-1) window
        return (2 * parent[0] + dy) * previous_side + 2 * parent[1] + dx

    w, b = ar.weight.detach(), ar.bias.detach()
    mix, mix_bias, gamma = ar.head_mix.weight.detach(), ar.head_mix.bias.detach(), ar.layer_scale.detach()
    for p in range(side * side):
        for q in range(side * side):
            (wp, pp), (wq, pq) = source(divmod(p, side)), source(divmod(q, side))
            for g in range(out_heads):
                if wp != wq:  # the previous stage never related these tokens
                    assert residual[0, 0, g, p, q] == 0
                    continue
                conv = [sum(w[h, a, bb, c, d] * previous[0, wp, h, child(pp, a, bb), child(pq, c, d)]
                            for a in range(2) for bb in range(2) for c in range(2) for d in range(2)) + b[h]
                        for h in range(in_heads)]
                expected = gamma[g] * (sum(mix[g, h] * conv[h] for h in range(in_heads)) + mix_bias[g])
                torch.testing.assert_close(residual[0, 0, g, p, q], expected, rtol=1e-5, atol=1e-5)


def test_diagonality_preserving_loss_is_zero_exactly_for_symmetric_diagonally_dominant_scores():
    dominant = torch.tensor([[5.0, 1.0, 2.0], [1.0, 4.0, -1.0], [2.0, -1.0, 3.0]])
    assert diagonality_preserving_loss(dominant) == 0

    asymmetric = dominant.clone()
    asymmetric[1, 0] = 0.0  # |A_01 - A_10| = 1, counted at (0, 1) and (1, 0), over 9 pairs; still dominant
    torch.testing.assert_close(diagonality_preserving_loss(asymmetric), torch.tensor(2 / 9))

    not_dominant = torch.tensor([[1.0, 3.0], [3.0, 2.0]])  # symmetric, but row 0 prefers token 1
    # max(0, 3 - 1) + max(0, 3 - 2) over the 2 off-diagonal pairs
    torch.testing.assert_close(diagonality_preserving_loss(not_dominant), torch.tensor(1.5))

    # Padded pairs do not count: a third, padded token with arbitrary scores leaves the loss unchanged.
    padded = torch.tensor([[1.0, 3.0, 9.0], [3.0, 2.0, -7.0], [0.0, 8.0, 5.0]])
    valid = torch.tensor([True, True, False])
    pair_mask = valid[:, None] & valid[None, :]
    torch.testing.assert_close(diagonality_preserving_loss(padded, pair_mask), torch.tensor(1.5))


def test_padded_keys_get_no_attention():
    """A 3x3 map in 2x2 windows: what the padded tokens hold changes nothing for the real ones."""
    attn = VanillaAttention(4, 2)
    _randomize(attn, 3)
    grid = window_grid(3, 3, 2, torch.device("cpu"))
    x = torch.randn(1, 4, 4, 4)
    noisy = x.clone()
    noisy[:, ~grid.valid] = 100.0
    out, scores = attn(x, grid)
    out_noisy, scores_noisy = attn(noisy, grid)
    torch.testing.assert_close(out[:, grid.valid], out_noisy[:, grid.valid])
    torch.testing.assert_close(scores, scores_noisy)
    padded_pairs = ~grid.pair_mask.expand_as(scores)
    assert padded_pairs.any() and (scores[padded_pairs] == 0).all()  # zero in the kept scores


def test_gradients_reach_psi_theta_and_the_attention_residual():
    torch.manual_seed(0)
    model = D2LaViT(**TINY).train()
    features = model(torch.randn(2, 3, 64, 48))
    losses = model.training_losses()
    assert set(losses) == {"loss_lavit_dp"} and losses["loss_lavit_dp"] > 0
    (sum(f.square().mean() for f in features.values()) + losses["loss_lavit_dp"]).backward()
    checked = []
    for m, stage in enumerate(model.layers):
        params = {f"layers.{m}.blocks.1.attn.{n}": p for n, p in stage.blocks[1].attn.named_parameters()
                  if n.startswith(("psi", "theta"))}
        if stage.attn_residual is not None:
            params.update({f"layers.{m}.attn_residual.{n}": p for n, p in stage.attn_residual.named_parameters()})
        for name, p in params.items():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            checked.append(name)
    assert len(checked) == 4 * 2 + 3 * 5  # psi, theta per stage; weight, bias, head_mix (2), layer_scale

    # The DP loss alone reaches Psi and Theta.
    model.zero_grad()
    model(torch.randn(1, 3, 32, 32))
    model.training_losses()["loss_lavit_dp"].backward()
    assert model.layers[0].blocks[1].attn.psi.weight.grad.abs().sum() > 0
    assert model.layers[0].blocks[1].attn.theta.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [(520, 520), (97, 131)])
def test_any_input_size(size):
    model = D2LaViT(**TINY).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, *size))
    shapes = model.output_shape()
    assert {k: v.stride for k, v in shapes.items()} == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    for name, spec in shapes.items():
        expected = tuple(math.ceil(s / spec.stride) for s in size)
        assert features[name].shape == (1, spec.channels) + expected, name
        assert torch.isfinite(features[name]).all()
    assert model.size_divisibility == 32


def test_global_form_attends_over_the_whole_map_at_the_pretraining_size():
    model = D2LaViT(**TINY, global_attention=True, pretrain_img_size=64).train()
    assert model.window_sizes == [16, 8, 4, 2]
    assert model.layers[0].blocks[1].attn.psi.weight.shape == (256, 256)  # N x N for the 16x16 map
    seen = []
    model.layers[0].blocks[0].attn.register_forward_hook(lambda mod, args, out: seen.append(out[1].shape))
    model(torch.randn(1, 3, 64, 64))
    assert seen == [(1, 1, 1, 256, 256)]  # one window: every token attends to every token
    assert model.training_losses()["loss_lavit_dp"] > 0
    # Another size runs in windows of the pretraining grid.
    features = model(torch.randn(1, 3, 96, 80))
    assert features["res5"].shape == (1, 128, 3, 3)


def test_bfloat16_autocast_runs():
    model = D2LaViT(**TINY).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = model(torch.randn(1, 3, 64, 64))
        loss = model.training_losses()["loss_lavit_dp"]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(f.float()).all() for f in features.values())


def _synthetic_lavit_cfg(**overrides):
    cfg = load_project_config(str(CONFIGS / "synthetic" / "panoptic" / "lavit_mini.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.LAVIT.EMBED_DIM", 16, "MODEL.LAVIT.NUM_HEADS", [1, 1, 2, 2],
                         "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", 256])
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def _panoptic_sample(seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8, generator=generator)
    masks = torch.zeros(2, 64, 80, dtype=torch.bool)
    masks[0, 8:30, 10:40] = True
    masks[1, 32:] = True
    instances = Instances((64, 80))
    instances.gt_classes = torch.tensor([0, 3])
    instances.gt_masks = masks
    return {"image": image, "height": 64, "width": 80, "instances": instances}


def test_maskformer_adds_the_weighted_dp_loss_to_its_loss_dict():
    torch.manual_seed(0)
    model = build_model(_synthetic_lavit_cfg(**{"MODEL.LAVIT.DP_LOSS_WEIGHT": 0.5})).train()
    losses = model([_panoptic_sample(0), _panoptic_sample(1)])
    assert "loss_lavit_dp" in losses and "loss_ce" in losses
    torch.testing.assert_close(losses["loss_lavit_dp"], 0.5 * model.backbone._dp_loss)
    sum(losses.values()).backward()
    assert model.backbone.layers[1].attn_residual.weight.grad.abs().sum() > 0

    off = build_model(_synthetic_lavit_cfg(**{"MODEL.LAVIT.DP_LOSS_WEIGHT": 0.0})).train()
    assert "loss_lavit_dp" not in off([_panoptic_sample(0)])


def test_config_defaults_are_lavit_tiny_and_reference_config_builds_the_same():
    cfg = get_project_cfg()
    cfg.MODEL.BACKBONE.NAME = "D2LaViT"
    with torch.device("meta"):
        from_cfg = build_backbone(cfg)
        tiny = build_variant("lavit_tiny")
        reference = from_reference_config(dict(VARIANTS["lavit_tiny"]))
    counts = [sum(p.numel() for p in m.parameters()) for m in (from_cfg, tiny, reference)]
    assert counts[0] == counts[1] == counts[2]
    assert {k: (v.channels, v.stride) for k, v in from_cfg.output_shape().items()} == {
        "res2": (96, 4), "res3": (192, 8), "res4": (384, 16), "res5": (768, 32)}


@pytest.mark.parametrize("name,params", [("lavit_tiny", 25_097_555), ("lavit_small", 44_091_219),
                                         ("lavit_base", 78_236_268)])
def test_variants(name, params):
    with torch.device("meta"):
        model = build_variant(name)
    assert sum(p.numel() for p in model.parameters()) == params
    heads = VARIANTS[name]["num_heads"]
    assert [s.blocks[0].attn.num_heads for s in model.layers] == list(heads)
    assert all(32 * h == c for h, c in zip(heads, model.num_features))  # head dim 32


@pytest.mark.parametrize("overrides,message", [
    ({"va_depths": (1, 1, 1)}, r"VA_DEPTHS \[1, 1, 1\] must have one entry per stage"),
    ({"va_depths": (1, 0, 1, 1)}, r"VA_DEPTHS\[1\] = 0 must be between 1 and DEPTHS\[1\] = 2"),
    ({"va_depths": (1, 3, 1, 1)}, r"VA_DEPTHS\[1\] = 3"),
    ({"window_size": 7}, r"WINDOW_SIZE 7 does not fit the attention residual"),
    ({"num_heads": (3, 2, 2, 4)}, r"stage 0 has 16 channels, not divisible by NUM_HEADS\[0\] = 3"),
])
def test_bad_arguments_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        D2LaViT(**{**TINY, **overrides})


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown LaViT variant 'lavit_huge'; known: \['lavit_base'"):
        build_variant("lavit_huge")


@pytest.mark.parametrize("name", ["ade20k/semantic/lavit_t.yaml", "coco/panoptic/lavit_t.yaml"])
def test_mask2former_config_builds_with_the_expected_parameter_counts(name):
    cfg = load_backbone_config(name, "D2LaViT")
    assert cfg.MODEL.WEIGHTS == ""
    model = build_on_meta(cfg)
    assert sum(p.numel() for p in model.backbone.parameters()) == 25_097_555
    total = {"ade20k/semantic/lavit_t.yaml": 45_016_490, "coco/panoptic/lavit_t.yaml": 45_063_321}[name]
    assert sum(p.numel() for p in model.parameters()) == total
    assert {k: v.stride for k, v in model.backbone.output_shape().items()} == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
