"""Neighborhood attention through torch FlexAttention (the GPU backend).

The H*W positions are reordered so that every dilation group is contiguous and, inside a group, tiles of
8x16 positions are contiguous: a 128-query block then needs only the few key blocks that its windows cover.
The BlockMask is built from that window structure (never by evaluating the mask densely over (H*W)^2), the
mask_mod keeps each query's exact k x k window, and the score_mod adds the relative positional bias (its
gradient reaches `rpb`). FlexAttention has no backward on CPU: on CPU this backend is forward-only.
"""
from __future__ import annotations

import functools

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from .na_plan import window_start

BLOCK = 128
TILE = (8, 16)


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


def _axis_windows(length: int, kernel_size: int, dilation: int) -> torch.Tensor:
    """(length, k) key positions of each query of one axis."""
    rows = []
    for i in range(length):
        r, p = i % dilation, i // dilation
        group_len = -(-(length - r) // dilation)
        start = window_start(p, group_len, kernel_size)
        rows.append([(start + n) * dilation + r for n in range(kernel_size)])
    return torch.tensor(rows)


def _sequence_order(height: int, width: int, dilation: int) -> torch.Tensor:
    """order[s] = flat position (i * W + j) placed at sequence index s: groups, then 8x16 tiles, then rows."""
    i = torch.arange(height).view(-1, 1).expand(height, width)
    j = torch.arange(width).view(1, -1).expand(height, width)
    pi, pj = i // dilation, j // dilation
    keys = [i % dilation, j % dilation, pi // TILE[0], pj // TILE[1], pi % TILE[0], pj % TILE[1]]
    composite = torch.zeros(height, width, dtype=torch.long)
    for key, size in zip(keys, [dilation, dilation, height, width, TILE[0], TILE[1]]):
        composite = composite * size + key
    return composite.flatten().argsort()


@functools.lru_cache(maxsize=64)
def _layout(height: int, width: int, kernel_size: int, dilation: int):
    """(order, inverse order, BlockMask tensors) for one map size; built on CPU, once."""
    n = height * width
    order = _sequence_order(height, width, dilation)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n)
    rows = _axis_windows(height, kernel_size, dilation)
    cols = _axis_windows(width, kernel_size, dilation)
    keys = (rows[:, None, :, None] * width + cols[None, :, None, :]).reshape(n, -1)  # (N, k*k) flat positions
    query_block = (inverse // BLOCK).view(n, 1).expand_as(keys)
    key_block = inverse[keys] // BLOCK
    blocks = -(-n // BLOCK)
    touched = torch.zeros(blocks, blocks, dtype=torch.bool)
    touched[query_block.reshape(-1), key_block.reshape(-1)] = True
    kv_num_blocks = touched.sum(1).to(torch.int32)
    kv_indices = torch.argsort((~touched).to(torch.int8), dim=1, stable=True).to(torch.int32)
    padded_order = torch.zeros(blocks * BLOCK, dtype=torch.long)
    padded_order[:n] = order
    return order, inverse, padded_order, kv_num_blocks, kv_indices


def _window_mods(height: int, width: int, kernel_size: int, dilation: int, padded_order: torch.Tensor,
                 rpb: torch.Tensor | None):
    ns = kernel_size // 2

    def in_window(query: torch.Tensor, key: torch.Tensor, length: int) -> torch.Tensor:
        r, p = query % dilation, query // dilation
        group_len = (length - r + dilation - 1) // dilation
        start = torch.minimum(torch.clamp(p - ns, min=0), group_len - kernel_size)
        key_p = key // dilation
        return (key % dilation == r) & (key_p >= start) & (key_p < start + kernel_size)

    def mask_mod(b, h, q_idx, kv_idx):
        q_pos, k_pos = padded_order[q_idx], padded_order[kv_idx]
        return in_window(q_pos // width, k_pos // width, height) & in_window(q_pos % width, k_pos % width, width)

    if rpb is None:
        return mask_mod, None

    def score_mod(score, b, h, q_idx, kv_idx):
        q_pos, k_pos = padded_order[q_idx], padded_order[kv_idx]
        # Also evaluated at masked entries of kept blocks: clamp the slot into the table.
        row = torch.clamp((kernel_size - 1) + (k_pos // width - q_pos // width) // dilation, 0, 2 * kernel_size - 2)
        col = torch.clamp((kernel_size - 1) + (k_pos % width - q_pos % width) // dilation, 0, 2 * kernel_size - 2)
        return score + rpb[h, row, col].to(score.dtype)

    return mask_mod, score_mod


def na2d_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int,
              rpb: torch.Tensor | None) -> torch.Tensor:
    """Neighborhood attention by FlexAttention; inputs already validated, q already scaled."""
    batch, heads, height, width, dim = q.shape
    n = height * width
    device = q.device
    order, inverse, padded_order, kv_num_blocks, kv_indices = (
        t.to(device) for t in _layout(height, width, kernel_size, dilation))
    mask_mod, score_mod = _window_mods(height, width, kernel_size, dilation, padded_order, rpb)
    block_mask = BlockMask.from_kv_blocks(kv_num_blocks[None, None], kv_indices[None, None], BLOCK_SIZE=BLOCK,
                                          mask_mod=mask_mod, seq_lengths=(n, n))
    q, k, v = (t.reshape(batch, heads, n, dim).index_select(2, order) for t in (q, k, v))
    out = _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1.0)
    return out.index_select(2, inverse).view(batch, heads, height, width, dim)
