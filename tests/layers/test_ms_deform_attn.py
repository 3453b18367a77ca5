"""The embedding_bag form of multi-scale deformable attention against grid_sample (the reference)."""
import pytest
import torch

from dinat_m2f.layers.ms_deform_attn import (
    MSDeformAttn,
    ms_deform_attn,
    ms_deform_attn_embedding_bag,
    ms_deform_attn_grid_sample,
)

SHAPES = [(3, 5), (6, 10), (12, 7)]  # uneven, non-square levels


def _inputs(n=2, queries=37, heads=4, dim=8, points=3, spread=1.4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    total = sum(h * w for h, w in SHAPES)
    value = torch.randn(n, total, heads, dim, generator=generator)
    # Many samples fall outside the map (zero padding) or straddle its border.
    locations = torch.rand(n, queries, heads, len(SHAPES), points, 2, generator=generator) * spread - (spread - 1) / 2
    weights = torch.rand(n, queries, heads, len(SHAPES), points, generator=generator)
    return value, locations, weights


def test_equals_grid_sample_inside_outside_and_on_pixel_centres():
    value, locations, weights = _inputs()
    # Exactly on pixel centres and edges of the first level, and far outside every map.
    h, w = SHAPES[0]
    locations[0, 0, :, :, 0] = torch.tensor([0.5 / w, 0.5 / h])
    locations[0, 1, :, :, 0] = torch.tensor([0.0, 1.0])
    locations[0, 2, :, :, :] = torch.tensor([1e6, -1e6])
    expected = ms_deform_attn_grid_sample(value, SHAPES, locations, weights)
    result = ms_deform_attn_embedding_bag(value, SHAPES, locations, weights)
    assert result.shape == expected.shape == (2, 37, 4 * 8)
    assert (result - expected).abs().max() < 1e-5
    assert result[0, 2].abs().max() == 0  # nothing sampled outside the maps


def test_gradients_equal_grid_samples():
    inputs = _inputs(n=1, queries=11)
    grads = []
    for implementation in (ms_deform_attn_grid_sample, ms_deform_attn_embedding_bag):
        value, locations, weights = (t.clone().requires_grad_() for t in inputs)
        implementation(value, SHAPES, locations, weights).pow(2).sum().backward()
        grads.append((value.grad, locations.grad, weights.grad))
    for reference, ours in zip(*grads):
        assert (ours - reference).abs().max() <= 1e-5 * reference.abs().max()


def test_half_inputs_sum_in_float32_and_autocast_gives_float32():
    value, locations, weights = _inputs()
    expected = ms_deform_attn_grid_sample(value, SHAPES, locations, weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = ms_deform_attn_grid_sample(value.bfloat16(), SHAPES, locations, weights)
        result = ms_deform_attn_embedding_bag(value.bfloat16(), SHAPES, locations, weights)
    assert result.dtype == reference.dtype == torch.float32
    assert (result - reference).abs().max() < 1e-5  # the same bfloat16 values, summed in float32
    assert (result - expected).abs().max() < 0.05
    plain = ms_deform_attn_embedding_bag(value.bfloat16(), SHAPES, locations.bfloat16(), weights.bfloat16())
    assert plain.dtype == torch.bfloat16


def test_dispatch_bag_for_cpu_inference_grid_sample_for_training():
    value, locations, weights = _inputs()
    bag = ms_deform_attn_embedding_bag(value, SHAPES, locations, weights)
    grid = ms_deform_attn_grid_sample(value, SHAPES, locations, weights)
    assert not torch.equal(bag, grid)  # the two sum in different orders: the check below can tell them apart
    with torch.no_grad():
        assert torch.equal(ms_deform_attn(value, SHAPES, locations, weights), bag)
    trained = ms_deform_attn(value.requires_grad_(), SHAPES, locations, weights)
    assert torch.equal(trained.detach(), grid) and trained.requires_grad


@pytest.mark.parametrize("padding", [False, True])
def test_module_inference_equals_reference_path(padding):
    torch.manual_seed(0)
    module = MSDeformAttn(d_model=32, n_levels=len(SHAPES), n_heads=4, n_points=3).eval()
    torch.nn.init.normal_(module.sampling_offsets.weight, std=0.5)  # offsets that vary with the query
    total = sum(h * w for h, w in SHAPES)
    query, memory = torch.randn(1, 20, 32), torch.randn(1, total, 32)
    reference_points = torch.rand(1, 20, len(SHAPES), 2)
    mask = torch.rand(1, total) < 0.2 if padding else None
    with torch.no_grad():
        fast = module(query, reference_points, memory, SHAPES, mask)
    # With a gradient needed the module runs grid_sample.
    slow = module(query, reference_points, memory.requires_grad_(), SHAPES, mask)
    assert (fast - slow.detach()).abs().max() < 1e-5
