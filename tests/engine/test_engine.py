"""Trainer pieces of dinat_m2f.engine on small real modules: parameter groups, full-model gradient
clipping, WarmupPolyLR, the mixed-precision step with its finite-loss check, and semantic TTA."""
import math

import pytest
import torch
from detectron2.modeling import DatasetMapperTTA
from torch import nn

from dinat_m2f.config import get_project_cfg
from dinat_m2f.engine import (
    MixedPrecisionTrainer,
    SemanticSegmentorWithTTA,
    autocast_dtype,
    build_lr_scheduler,
    build_optimizer,
    get_param_groups,
)
from dinat_m2f.layers import NeighborhoodAttention2D


class TinyBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.norm = nn.LayerNorm(8)
        self.attn = NeighborhoodAttention2D(dim=8, num_heads=2, kernel_size=3)


class TinyHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.query_embed = nn.Embedding(4, 8)
        self.norm = nn.GroupNorm(2, 8)
        self.class_embed = nn.Linear(8, 3)


class TinySegmenter(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = TinyBackbone()
        self.sem_seg_head = TinyHead()


def _solver_cfg(**solver):
    cfg = get_project_cfg()
    cfg.SOLVER.BASE_LR = 1e-4
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def _hyperparams_by_name(model, groups):
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    return {name: by_param[id(p)] for name, p in model.named_parameters()}


def test_param_groups_backbone_multiplier_and_no_decay_for_norms_embeddings_rpb():
    model = TinySegmenter()
    hyper = _hyperparams_by_name(model, get_param_groups(_solver_cfg(), model))
    assert len(hyper) == len(list(model.parameters()))
    expected = {
        "backbone.stem.weight": (1e-5, 0.05),
        "backbone.stem.bias": (1e-5, 0.05),
        "backbone.norm.weight": (1e-5, 0.0),
        "backbone.attn.rpb": (1e-5, 0.0),
        "backbone.attn.qkv.weight": (1e-5, 0.05),
        "sem_seg_head.query_embed.weight": (1e-4, 0.0),
        "sem_seg_head.norm.bias": (1e-4, 0.0),
        "sem_seg_head.class_embed.weight": (1e-4, 0.05),
    }
    for name, (lr, weight_decay) in expected.items():
        assert hyper[name][0] == pytest.approx(lr), name
        assert hyper[name][1] == weight_decay, name


def test_embed_and_norm_decay_follow_their_keys():
    model = TinySegmenter()
    cfg = _solver_cfg(WEIGHT_DECAY_NORM=0.01, WEIGHT_DECAY_EMBED=0.02)
    hyper = _hyperparams_by_name(model, get_param_groups(cfg, model))
    assert hyper["backbone.norm.weight"][1] == 0.01
    assert hyper["sem_seg_head.query_embed.weight"][1] == 0.02
    assert hyper["backbone.attn.rpb"][1] == 0.0


def test_build_optimizer_types_and_bad_name():
    model = TinySegmenter()
    assert isinstance(build_optimizer(_solver_cfg(), model), torch.optim.AdamW)
    assert isinstance(build_optimizer(_solver_cfg(OPTIMIZER="SGD"), model), torch.optim.SGD)
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER.*LAMB"):
        build_optimizer(_solver_cfg(OPTIMIZER="LAMB"), model)


def _clipping_cfg(clip_type):
    cfg = _solver_cfg(OPTIMIZER="SGD", BASE_LR=1.0, MOMENTUM=0.0, WEIGHT_DECAY=0.0, BACKBONE_MULTIPLIER=1.0)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.01
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0
    return cfg


@pytest.mark.parametrize("clip_type", ["full_model", "norm"])
def test_gradient_clipping_full_model_vs_per_parameter(clip_type):
    model = nn.Module()
    model.a = nn.Parameter(torch.zeros(2))
    model.b = nn.Parameter(torch.zeros(2))
    optimizer = build_optimizer(_clipping_cfg(clip_type), model)
    model.a.grad = torch.tensor([3.0, 0.0])
    model.b.grad = torch.tensor([0.0, 4.0])
    optimizer.step()
    if clip_type == "full_model":  # one norm (5) over all gradients: directions and ratio kept
        expected_a, expected_b = [-0.006, 0.0], [0.0, -0.008]
    else:  # detectron2's per-parameter clipping: each parameter's gradient clipped to norm 0.01
        expected_a, expected_b = [-0.01, 0.0], [0.0, -0.01]
    torch.testing.assert_close(model.a.detach(), torch.tensor(expected_a))
    torch.testing.assert_close(model.b.detach(), torch.tensor(expected_b))


def test_unknown_clip_type_is_named():
    with pytest.raises(ValueError, match="CLIP_TYPE.*'global'"):
        build_optimizer(_clipping_cfg("global"), TinySegmenter())


def _lrs(scheduler, optimizer, iterations):
    values = []
    for _ in range(iterations):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_warmup_poly_lr_follows_formula_and_resumes():
    cfg = _solver_cfg(
        LR_SCHEDULER_NAME="WarmupPolyLR", MAX_ITER=100, WARMUP_ITERS=10, WARMUP_FACTOR=0.01, POLY_LR_POWER=0.9
    )
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1e-4)
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = _lrs(scheduler, optimizer, 60)
    assert lrs[0] == pytest.approx(1e-6)  # warmup starts at WARMUP_FACTOR * BASE_LR
    for i in range(10, 60):
        assert lrs[i] == pytest.approx(1e-4 * (1 - i / 100) ** 0.9), i
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))  # rising during warmup

    # A scheduler rebuilt from the saved state continues at the saved LR (what --resume relies on).
    state = scheduler.state_dict()
    optimizer2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-4)
    resumed = build_lr_scheduler(cfg, optimizer2)
    resumed.load_state_dict(state)
    optimizer2.step()
    resumed.step()
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(1e-4 * (1 - 61 / 100) ** 0.9)


def test_poly_constant_ending_and_multistep_still_available():
    cfg = _solver_cfg(
        LR_SCHEDULER_NAME="WarmupPolyLR", MAX_ITER=100, WARMUP_ITERS=0, POLY_LR_POWER=1.0, POLY_LR_CONSTANT_ENDING=0.2
    )
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    lrs = _lrs(build_lr_scheduler(cfg, optimizer), optimizer, 100)
    assert lrs[50] == pytest.approx(0.5)
    assert lrs[90] == pytest.approx(0.2)  # 0.1 floored at 0.2

    cfg = _solver_cfg(LR_SCHEDULER_NAME="WarmupMultiStepLR", MAX_ITER=100, WARMUP_ITERS=0, STEPS=(50, 80))
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    lrs = _lrs(build_lr_scheduler(cfg, optimizer), optimizer, 100)
    assert (lrs[49], lrs[50], lrs[80]) == pytest.approx((1.0, 0.1, 0.01))


class RegressionModel(nn.Module):
    """Returns a loss dict like a detectron2 model; records the dtype its linear layer computes in."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.seen_dtypes = []

    def forward(self, batch):
        x, y = batch
        out = self.linear(x)
        self.seen_dtypes.append(out.dtype)
        return {"loss_mse": ((out.float() - y) ** 2).mean(), "loss_l1": (out.float() - y).abs().mean()}


def _batches(n, nan_at=None):
    generator = torch.Generator().manual_seed(0)
    batches = []
    for i in range(n):
        x = torch.randn(8, 4, generator=generator)
        if i == nan_at:
            x[0, 0] = float("nan")
        batches.append((x, x.sum(dim=1, keepdim=True)))
    return batches


@pytest.mark.parametrize("precision", ["bfloat16", "float16", None])
def test_mixed_precision_step_on_cpu(precision):
    torch.manual_seed(0)
    model = RegressionModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    dtype = autocast_dtype(precision is not None, precision or "bfloat16")
    trainer = MixedPrecisionTrainer(model, _batches(30), optimizer, device_type="cpu", precision=dtype)
    with torch.no_grad():
        first_loss = model(_batches(1)[0])["loss_mse"].item()
    model.seen_dtypes.clear()
    trainer.train(0, 30)
    assert set(model.seen_dtypes) == {dtype or torch.float32}
    assert (trainer.grad_scaler is not None) == (precision == "float16")
    assert ("grad_scaler" in trainer.state_dict()) == (precision == "float16")
    final_loss = trainer.storage.history("loss_mse").latest()
    assert math.isfinite(final_loss) and final_loss < first_loss


def test_bad_precision_is_named():
    with pytest.raises(ValueError, match="SOLVER.AMP.PRECISION.*'float8'"):
        autocast_dtype(True, "float8")
    assert autocast_dtype(False, "float8") is None


def test_nan_loss_stops_before_the_step_and_names_the_iteration():
    torch.manual_seed(0)
    model = RegressionModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    trainer = MixedPrecisionTrainer(model, _batches(10, nan_at=3), optimizer, precision=torch.bfloat16)
    weights_seen = []
    trainer.after_backward = lambda: weights_seen.append(model.linear.weight.detach().clone())
    with pytest.raises(FloatingPointError, match=r"iteration=3\b"):
        trainer.train(0, 10)
    assert len(weights_seen) == 3  # iterations 0, 1, 2 reached backward; 3 stopped before it
    assert torch.isfinite(model.linear.weight).all()
    assert model.linear.weight.grad is None or torch.isfinite(model.linear.weight.grad).all()


def test_floating_point_error_inside_the_model_gets_the_iteration():
    class FailingAtTwo(RegressionModel):
        def forward(self, batch):
            if len(self.seen_dtypes) == 2:
                raise FloatingPointError("matching cost is NaN")
            return super().forward(batch)

    model = FailingAtTwo()
    trainer = MixedPrecisionTrainer(model, _batches(5), torch.optim.SGD(model.parameters(), lr=0.05))
    with pytest.raises(FloatingPointError, match=r"iteration=2\b.*matching cost is NaN"):
        trainer.train(0, 5)


class LeftChannelModel(nn.Module):
    """A stand-in semantic model: class scores = the image's first channel, resized to the requested size."""

    def forward(self, batched_inputs):
        outputs = []
        for inputs in batched_inputs:
            image = inputs["image"][:1].float()[None]
            scores = nn.functional.interpolate(image, size=(inputs["height"], inputs["width"]), mode="nearest")
            outputs.append({"sem_seg": scores[0]})
        return outputs


def test_semantic_tta_flips_back_and_averages_scales():
    image = torch.zeros(3, 32, 48, dtype=torch.uint8)
    image[:, :, :16] = 200  # the left third is bright: a flipped prediction left unflipped would move it right
    inputs = {"image": image, "height": 32, "width": 48}
    tta_mapper = DatasetMapperTTA(min_sizes=[16, 32, 64], max_size=1000, flip=True)
    model = SemanticSegmentorWithTTA(get_project_cfg(), LeftChannelModel(), tta_mapper=tta_mapper)
    sem_seg = model([inputs])[0]["sem_seg"]
    assert sem_seg.shape == (1, 32, 48)
    # Away from the edge (which resizing blurs) every scale and flip agrees with the image.
    torch.testing.assert_close(sem_seg[:, :, :12], torch.full((1, 32, 12), 200.0))
    torch.testing.assert_close(sem_seg[:, :, 20:], torch.zeros(1, 32, 28))
