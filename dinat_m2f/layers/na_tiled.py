"""Portable neighborhood attention: dense tiles as matrix products, on any device and dtype.

For every pair of (row class, column class) of the axis plans, the queries of its tiles are gathered into
blocks of tile_h*tile_w rows, their key runs into region_h*region_w rows, and
softmax(Q K^T + bias) V is computed with batched matrix products. The bias block (RPB plus -inf outside each
query's window) is shared by all tiles of the class pair. Tiles are processed in chunks so the score tensor
stays under a fixed budget: memory is O(B * heads * H * W * region^2) at most, never (H*W)^2.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .na_plan import AxisPlan, TileClass, axis_plan

# Score elements per chunk (B * heads * tiles * queries * keys): 2^25 float32 = 128 MiB.
SCORE_BUDGET = 1 << 25


def _class_bias(rpb: torch.Tensor | None, rows: TileClass, cols: TileClass,
                dtype: torch.dtype) -> torch.Tensor:
    """(heads or 1, Th*Tw, Rh*Rw) bias of one class pair: RPB inside the windows, -inf outside."""
    th, rh = rows.allowed.shape
    tw, rw = cols.allowed.shape
    allowed = rows.allowed[:, None, :, None] & cols.allowed[None, :, None, :]  # (Th, Tw, Rh, Rw)
    if rpb is None:
        bias = torch.zeros((1, th, tw, rh, rw), dtype=dtype, device=allowed.device)
    else:
        bias = rpb[:, rows.bias_index[:, None, :, None], cols.bias_index[None, :, None, :]].to(dtype)
    bias = bias.masked_fill(~allowed, float("-inf"))
    return bias.reshape(bias.shape[0], th * tw, rh * rw)


def _gather_blocks(x: torch.Tensor, row_index: torch.Tensor, col_index: torch.Tensor,
                   block_h: int, block_w: int) -> torch.Tensor:
    """x (B, heads, H, W, D) -> (B, heads, n_h * n_w, block_h * block_w, D) blocks at the given positions."""
    b, h, _, _, d = x.shape
    blocks = x.index_select(2, row_index).index_select(3, col_index)
    n_h, n_w = row_index.numel() // block_h, col_index.numel() // block_w
    blocks = blocks.view(b, h, n_h, block_h, n_w, block_w, d).permute(0, 1, 2, 4, 3, 5, 6)
    return blocks.reshape(b, h, n_h * n_w, block_h * block_w, d)


def _attend(q, k, v, bias, dropout_p: float) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2))
    # Half-precision scores are accumulated and normalized in float32.
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float() + bias.float()
    else:
        scores = scores + bias
    probs = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs.to(v.dtype), v)


def _class_pair_output(q, k, v, rpb, rows: TileClass, cols: TileClass, plan_h: AxisPlan,
                       plan_w: AxisPlan, dropout_p: float) -> torch.Tensor:
    """Outputs of all query slots of a class pair: (B, heads, rows_slots, cols_slots, D)."""
    b, heads, _, _, dim = q.shape
    th, tw, rh, rw = plan_h.tile, plan_w.tile, plan_h.region, plan_w.region
    score_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    bias = _class_bias(rpb, rows, cols, score_dtype)

    per_row_tile = b * heads * cols.num_tiles * th * tw * rh * rw
    tiles_per_chunk = max(1, SCORE_BUDGET // max(per_row_tile, 1))
    chunks = []
    for start in range(0, rows.num_tiles, tiles_per_chunk):
        stop = min(start + tiles_per_chunk, rows.num_tiles)
        q_rows = rows.query_index[start * th: stop * th]
        k_rows = rows.key_index[start * rh: stop * rh]
        q_blocks = _gather_blocks(q, q_rows, cols.query_index, th, tw)
        k_blocks = _gather_blocks(k, k_rows, cols.key_index, rh, rw)
        v_blocks = _gather_blocks(v, k_rows, cols.key_index, rh, rw)
        out = _attend(q_blocks, k_blocks, v_blocks, bias[:, None], dropout_p)
        n_h = stop - start
        out = out.view(b, heads, n_h, cols.num_tiles, th, tw, dim).permute(0, 1, 2, 4, 3, 5, 6)
        chunks.append(out.reshape(b, heads, n_h * th, cols.num_tiles * tw, dim))
    return torch.cat(chunks, dim=2) if len(chunks) > 1 else chunks[0]


def na2d_tiled(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int,
               rpb: torch.Tensor | None, dropout_p: float = 0.0) -> torch.Tensor:
    """Neighborhood attention by dense tiles; inputs already validated, q already scaled."""
    height, width = q.shape[2], q.shape[3]
    plan_h = axis_plan(height, kernel_size, dilation, q.device)
    plan_w = axis_plan(width, kernel_size, dilation, q.device)
    row_bands = []
    for rows in plan_h.classes:
        band = [_class_pair_output(q, k, v, rpb, rows, cols, plan_h, plan_w, dropout_p)
                for cols in plan_w.classes]
        row_bands.append(torch.cat(band, dim=3) if len(band) > 1 else band[0])
    slots = torch.cat(row_bands, dim=2) if len(row_bands) > 1 else row_bands[0]
    return slots.index_select(2, plan_h.slot_of_position).index_select(3, plan_w.slot_of_position)
