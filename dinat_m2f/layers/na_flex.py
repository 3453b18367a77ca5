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


_layouts: dict[tuple, tuple[torch.Tensor, ...]] = {}


@torch.compiler.assume_constant_result  # constants of a compiled graph, not ops traced into it
def _layout(height: int, width: int, kernel_size: int, dilation: int, device: torch.device):
    """(order, inverse order, padded order, and the BlockMask's kv_num_blocks, kv_indices, q_num_blocks,
    q_indices) for one map size on one device, made once."""
    key = (height, width, kernel_size, dilation, device)
    if key not in _layouts:
        if len(_layouts) >= 64:
            _layouts.clear()
        _layouts[key] = _make_layout(height, width, kernel_size, dilation, device)
    return _layouts[key]


def _make_layout(height: int, width: int, kernel_size: int, dilation: int, device: torch.device):
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
    touched = torch.zeros(blocks, blocks, dtype=torch.bool)  # [query block, key block]
    touched[query_block.reshape(-1), key_block.reshape(-1)] = True
    padded_order = torch.zeros(blocks * BLOCK, dtype=torch.long)
    padded_order[:n] = order
    layout = [order, inverse, padded_order]
    for blocks_of in (touched, touched.T):  # key blocks of each query block, query blocks of each key block
        layout.append(blocks_of.sum(1).to(torch.int32)[None, None])
        layout.append(torch.argsort((~blocks_of).to(torch.int8), dim=1, stable=True).to(torch.int32)[None, None])
    return tuple(t.to(device) for t in layout)


def _block_mask(height: int, width: int, kernel_size: int, dilation: int, device: torch.device) -> BlockMask:
    _, _, padded_order, kv_num_blocks, kv_indices, q_num_blocks, q_indices = _layout(
        height, width, kernel_size, dilation, device)
    # The constructor, not from_kv_blocks: no ops on the constant layout, so a compiled graph traces none.
    return BlockMask(seq_lengths=(height * width,) * 2, kv_num_blocks=kv_num_blocks, kv_indices=kv_indices,
                     full_kv_num_blocks=None, full_kv_indices=None, q_num_blocks=q_num_blocks,
                     q_indices=q_indices, full_q_num_blocks=None, full_q_indices=None, BLOCK_SIZE=(BLOCK, BLOCK),
                     mask_mod=_window_mask_mod(height, width, kernel_size, dilation, padded_order))


def _window_mask_mod(height: int, width: int, kernel_size: int, dilation: int, padded_order: torch.Tensor):
    """Keeps each query's exact k x k window (NATTEN's shifted windows, per dilation group)."""
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

    return mask_mod


def _rpb_score_mod(width: int, kernel_size: int, dilation: int, padded_order: torch.Tensor, rpb: torch.Tensor):
    """Adds rpb[h, (k-1) + dy/d, (k-1) + dx/d] to each score; its gradient reaches `rpb`."""

    def score_mod(score, b, h, q_idx, kv_idx):
        q_pos, k_pos = padded_order[q_idx], padded_order[kv_idx]
        # Also evaluated at masked entries of kept blocks: clamp the slot into the table.
        row = torch.clamp((kernel_size - 1) + (k_pos // width - q_pos // width) // dilation, 0, 2 * kernel_size - 2)
        col = torch.clamp((kernel_size - 1) + (k_pos % width - q_pos % width) // dilation, 0, 2 * kernel_size - 2)
        return score + rpb[h, row, col].to(score.dtype)

    return score_mod


def na2d_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int,
              rpb: torch.Tensor | None) -> torch.Tensor:
    """Neighborhood attention by FlexAttention; inputs already validated, q already scaled."""
    batch, heads, height, width, dim = q.shape
    n = height * width
    order, inverse, padded_order, *_ = _layout(height, width, kernel_size, dilation, q.device)
    block_mask = _block_mask(height, width, kernel_size, dilation, q.device)
    score_mod = None if rpb is None else _rpb_score_mod(width, kernel_size, dilation, padded_order, rpb)
    q, k, v = (t.reshape(batch, heads, n, dim).index_select(2, order) for t in (q, k, v))
    # Inside a compiled graph flex_attention is captured and compiled with it.
    flex = flex_attention if torch.compiler.is_compiling() else _compiled_flex()
    out = flex(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1.0)
    return out.index_select(2, inverse).view(batch, heads, height, width, dim)
