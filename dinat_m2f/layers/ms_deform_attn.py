"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch.

The original project compiles a CUDA op for this; the bilinear sampling it does is exactly
``F.grid_sample(..., mode="bilinear", padding_mode="zeros", align_corners=False)`` on each level, which
`ms_deform_attn_grid_sample` uses (the reference: any device and dtype, differentiable, exportable). On the CPU
`ms_deform_attn_embedding_bag` computes the same sums as one weighted embedding_bag over (position, head) rows
of the values: each sample's four corners are four rows, weighted by their bilinear weights times the sample's
attention weight. grid_sample reads a channel-first map one channel at a time per sample; the bag reads whole
rows of head_dim channels: 4-5x faster forward, not faster with the backward (tools/benchmark_msdeformattn.py),
so `ms_deform_attn` takes it for inference on the CPU.
"""
import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .neighborhood_attention.dispatch import is_exporting

__all__ = ["ms_deform_attn", "ms_deform_attn_embedding_bag", "ms_deform_attn_grid_sample", "MSDeformAttn"]


def ms_deform_attn_grid_sample(
    value: torch.Tensor,
    spatial_shapes: Sequence[Tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Sample every level at the given locations and sum the samples with the given weights.

    Args:
        value: (N, S, heads, D) with S = sum of H_l * W_l, levels concatenated in ``spatial_shapes`` order.
        spatial_shapes: (H_l, W_l) of each level.
        sampling_locations: (N, Lq, heads, levels, points, 2), (x, y) in [0, 1] of each level's extent.
        attention_weights: (N, Lq, heads, levels, points), normally softmaxed over levels * points.

    Returns:
        (N, Lq, heads * D).
    """
    n, _, heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    value_per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    # grid_sample wants coordinates in [-1, 1]; with align_corners=False, -1 and 1 are the outer pixel edges.
    sampling_grids = 2 * sampling_locations - 1
    samples = []
    for level, (h, w) in enumerate(spatial_shapes):
        # (N, H*W, heads, D) -> (N*heads, D, H, W)
        value_l = value_per_level[level].flatten(2).transpose(1, 2).reshape(n * heads, head_dim, h, w)
        # (N, Lq, heads, points, 2) -> (N*heads, Lq, points, 2)
        grid_l = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(
            F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        )
    # (N*heads, D, Lq, levels*points) weighted by (N*heads, 1, Lq, levels*points)
    weights = attention_weights.transpose(1, 2).reshape(n * heads, 1, num_queries, num_levels * num_points)
    output = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)
    return output.view(n, heads * head_dim, num_queries).transpose(1, 2).contiguous()


_CORNERS = ((0, 0), (1, 0), (0, 1), (1, 1))  # (dx, dy) of the four bilinear neighbours


def ms_deform_attn_embedding_bag(
    value: torch.Tensor,
    spatial_shapes: Sequence[Tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """`ms_deform_attn_grid_sample`'s result (same arguments) as one weighted embedding_bag: bag (n, query,
    head) sums its samples' corner rows of `value` viewed as (N*S*heads, D) rows, a corner outside the map
    weighing 0 (grid_sample's zero padding). Half types are summed in float32; under autocast the result is
    float32, as grid_sample's is."""
    n, total, heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    device = value.device
    out_dtype = torch.float32 if torch.is_autocast_enabled(device.type) else value.dtype
    work_dtype = torch.float32 if value.dtype in (torch.float16, torch.bfloat16) else value.dtype
    # Row of (image, position, head) = (image * S + position) * heads + head.
    base = (torch.arange(n, device=device).view(n, 1, 1, 1) * total * heads
            + torch.arange(heads, device=device).view(1, 1, heads, 1))
    rows, weights = [], []
    start = 0
    for level, (h, w) in enumerate(spatial_shapes):
        location = sampling_locations[:, :, :, level].to(work_dtype)
        # Pixel coordinates (align_corners=False: pixel i spans [i, i+1)); clamped so that far-away points stay
        # out of the map without overflowing the integer conversion.
        x = (location[..., 0] * w - 0.5).clamp(-2, w + 1)
        y = (location[..., 1] * h - 0.5).clamp(-2, h + 1)
        x0, y0 = x.floor(), y.floor()
        fx, fy = x - x0, y - y0
        weight = attention_weights[:, :, :, level].to(work_dtype)
        for dx, dy in _CORNERS:
            xc, yc = x0 + dx, y0 + dy
            inside = (xc >= 0) & (xc < w) & (yc >= 0) & (yc < h)
            position = start + yc.clamp(0, h - 1).long() * w + xc.clamp(0, w - 1).long()
            rows.append(base + position * heads)
            weights.append(weight * (fx if dx else 1 - fx) * (fy if dy else 1 - fy) * inside)
        start += h * w
    rows = torch.cat(rows, dim=-1).view(n * num_queries * heads, -1)
    weights = torch.cat(weights, dim=-1).view(n * num_queries * heads, -1)
    output = F.embedding_bag(rows, value.reshape(-1, head_dim).to(work_dtype), per_sample_weights=weights,
                             mode="sum")
    return output.view(n, num_queries, heads * head_dim).to(out_dtype)


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: Sequence[Tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention (arguments as `ms_deform_attn_grid_sample`): the embedding_bag sums on
    the CPU when no gradient is needed, else grid_sample (its backward is as fast as embedding_bag's there, and
    grid_sample is what CUDA and the exported graphs run: ONNX has no weighted EmbeddingBag)."""
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (value, sampling_locations, attention_weights))
    if value.device.type == "cpu" and not needs_grad and not is_exporting():
        return ms_deform_attn_embedding_bag(value, spatial_shapes, sampling_locations, attention_weights)
    return ms_deform_attn_grid_sample(value, spatial_shapes, sampling_locations, attention_weights)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module; parameter names are the original's
    (``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``)."""

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Offsets start as rings around the reference point: head h looks in direction 2*pi*h/heads,
        # point p at distance p+1 (in pixels of the level).
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        grid = directions.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        spatial_shapes: List[Tuple[int, int]],
        input_padding_mask: torch.Tensor = None,
    ) -> torch.Tensor:
        """
        Args:
            query: (N, Lq, C).
            reference_points: (N, Lq, levels, 2), (x, y) in [0, 1] (top-left is (0, 0)).
            input_flatten: (N, S, C), the levels' maps flattened and concatenated.
            spatial_shapes: (H_l, W_l) of each level.
            input_padding_mask: (N, S), True at padded positions (their values are zeroed).
        Returns:
            (N, Lq, C).
        """
        n, num_queries, _ = query.shape
        _, num_values, _ = input_flatten.shape
        if sum(h * w for h, w in spatial_shapes) != num_values:
            raise ValueError(f"spatial_shapes {spatial_shapes} do not add up to the {num_values} values given")

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, num_values, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(n, num_queries, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(n, num_queries, self.n_heads, self.n_levels * self.n_points)
        weights = F.softmax(weights, -1).view(n, num_queries, self.n_heads, self.n_levels, self.n_points)
        # Offsets are in pixels of each level: normalize by (W_l, H_l).
        normalizer = torch.tensor(
            [[w, h] for h, w in spatial_shapes], dtype=offsets.dtype, device=offsets.device
        )
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        output = ms_deform_attn(value, spatial_shapes, locations, weights)
        return self.output_proj(output)
