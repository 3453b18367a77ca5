"""The `flex` backend: neighborhood attention through torch FlexAttention (the default on CUDA).

The H*W positions are reordered so that every dilation group is contiguous and, inside a group, tiles of
16x8 positions are contiguous: a 128-query block then needs only the few key blocks that its windows cover.
The BlockMask is built from that window structure (never by evaluating the mask densely over (H*W)^2), the
mask_mod keeps each query's exact k x k window, and the score_mod adds the relative positional bias (its
gradient reaches `rpb`). Both read a per-position table (dilation group, group coordinates, window starts),
so the kernels do no integer division and hold no map size or dilation: one compiled kernel serves every map
size and dilation. FlexAttention has no backward on CPU: on CPU this backend is forward-only.
"""
from __future__ import annotations

import functools
import inspect

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention
from torch.torch_version import TorchVersion

from .window import axis_neighbors, axis_window_starts, rpb_slot

NAME = "flex"
# FlexAttention's CUDA kernels (Triton tl.dot) need a head dim of at least 16.
MIN_HEAD_DIM = 16

BLOCK = 128
# Rows x columns of one 128-position tile. FlexAttention's work is one block product per (query block, key
# block) pair visited; over DiNAT-L's 30 layers at 800x1216, 16x8 tiles visit 11% fewer pairs than 8x16, 28%
# fewer than 4x32 (at 1024x1024: 1% more than 8x16); tests/layers/test_na_backends.py keeps that count.
TILE = (16, 8)


# What this torch offers, read once (the backend choice also runs inside compiled graphs). torch 2.5's BlockMask
# takes no seq_lengths; torch 2.7.1's CPU FlexAttention kernel is generated as C++ that does not compile (also
# for a plain causal flex_attention), and 2.5 has no CPU kernel at all.
_BLOCK_MASK_TAKES_SEQ_LENGTHS = "seq_lengths" in inspect.signature(BlockMask.__init__).parameters
_CPU_KERNEL_COMPILES = TorchVersion(torch.__version__) >= "2.8"


def flex_unavailable(device_type: str) -> str | None:
    """Why this torch cannot run the flex backend on this device type; None if it can."""
    if not _BLOCK_MASK_TAKES_SEQ_LENGTHS:
        return f"torch {torch.__version__}'s BlockMask takes no seq_lengths (torch >= 2.6 does)"
    if device_type == "cpu" and not _CPU_KERNEL_COMPILES:
        return f"torch {torch.__version__} has no CPU FlexAttention kernel that compiles (torch >= 2.8 has)"
    return None


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    # Automatic dynamic shapes: a second map size compiles one shape-generic kernel that serves all later
    # ones (every image size of an evaluation). Static shapes would compile per size and, past dynamo's
    # recompile limit, fall back to the unfused path that holds all (H*W)^2 scores.
    return torch.compile(flex_attention)


def _sequence_order(height: int, width: int, dilation: int) -> torch.Tensor:
    """order[s] = flat position (i * W + j) placed at sequence index s: groups, then 16x8 tiles, then rows."""
    i = torch.arange(height).view(-1, 1).expand(height, width)
    j = torch.arange(width).view(1, -1).expand(height, width)
    pi, pj = i // dilation, j // dilation
    keys = [i % dilation, j % dilation, pi // TILE[0], pj // TILE[1], pi % TILE[0], pj % TILE[1]]
    composite = torch.zeros(height, width, dtype=torch.long)
    for key, size in zip(keys, [dilation, dilation, height, width, TILE[0], TILE[1]]):
        composite = composite * size + key
    return composite.flatten().argsort()


def _position_table(height: int, width: int, kernel_size: int, dilation: int, order: torch.Tensor,
                    padded_len: int) -> tuple[torch.Tensor, ...]:
    """Five (padded_len,) int32 vectors indexed by sequence index: its dilation group (-1 past the end), its row
    and column inside the group, and the first row and column of its window (NATTEN's shifted windows).
    Separate 1-D vectors, not rows of one 2-D table: torch 2.7's dynamo fails on a 2-D table indexed inside
    mask_mod / score_mod (InternalTorchDynamoError "FlexAttentionHigherOrderVariable() has no type")."""
    i, j = order // width, order % width
    group, row, col, row_start, col_start = (torch.full((padded_len,), -1, dtype=torch.int32) for _ in range(5))
    group[:order.numel()] = (i % dilation) * dilation + j % dilation
    for member_of, start_of, coordinate, length in ((row, row_start, i, height), (col, col_start, j, width)):
        member, start = axis_window_starts(length, kernel_size, dilation)
        member_of[:order.numel()] = member[coordinate]
        start_of[:order.numel()] = start[coordinate]
    return group, row, col, row_start, col_start


_layouts: dict[tuple, tuple[torch.Tensor, ...]] = {}


@torch.compiler.assume_constant_result  # constants of a compiled graph, not ops traced into it
def _layout(height: int, width: int, kernel_size: int, dilation: int, device: torch.device):
    """(order, inverse order, the five position vectors of `_position_table`, and the BlockMask's kv_num_blocks,
    kv_indices, q_num_blocks, q_indices) for one map size on one device, made once."""
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
    rows = axis_neighbors(height, kernel_size, dilation)[0]
    cols = axis_neighbors(width, kernel_size, dilation)[0]
    keys = (rows[:, None, :, None] * width + cols[None, :, None, :]).reshape(n, -1)  # (N, k*k) flat positions
    query_block = (inverse // BLOCK).view(n, 1).expand_as(keys)
    key_block = inverse[keys] // BLOCK
    blocks = -(-n // BLOCK)
    touched = torch.zeros(blocks, blocks, dtype=torch.bool)  # [query block, key block]
    touched[query_block.reshape(-1), key_block.reshape(-1)] = True
    layout = [order, inverse, *_position_table(height, width, kernel_size, dilation, order, blocks * BLOCK)]
    for blocks_of in (touched, touched.T):  # key blocks of each query block, query blocks of each key block
        layout.append(blocks_of.sum(1).to(torch.int32)[None, None])
        layout.append(torch.argsort((~blocks_of).to(torch.int8), dim=1, stable=True).to(torch.int32)[None, None])
    return tuple(t.to(device) for t in layout)


def _block_mask(height: int, width: int, kernel_size: int, dilation: int, device: torch.device) -> BlockMask:
    _, _, *positions, kv_num_blocks, kv_indices, q_num_blocks, q_indices = _layout(
        height, width, kernel_size, dilation, device)
    # The constructor, not from_kv_blocks: no ops on the constant layout, so a compiled graph traces none.
    return BlockMask(seq_lengths=(height * width,) * 2, kv_num_blocks=kv_num_blocks, kv_indices=kv_indices,
                     full_kv_num_blocks=None, full_kv_indices=None, q_num_blocks=q_num_blocks,
                     q_indices=q_indices, full_q_num_blocks=None, full_q_indices=None, BLOCK_SIZE=(BLOCK, BLOCK),
                     mask_mod=_window_mask_mod(kernel_size, positions))


def _window_mask_mod(kernel_size: int, positions: list[torch.Tensor]):
    """Keeps each query's exact k x k window: same dilation group, group coordinates inside the window."""
    group, row, col, row_start, col_start = positions

    def mask_mod(b, h, q_idx, kv_idx):
        return ((group[q_idx] == group[kv_idx])
                & (row[kv_idx] >= row_start[q_idx]) & (row[kv_idx] < row_start[q_idx] + kernel_size)
                & (col[kv_idx] >= col_start[q_idx]) & (col[kv_idx] < col_start[q_idx] + kernel_size))

    return mask_mod


def _rpb_score_mod(kernel_size: int, positions: list[torch.Tensor], rpb: torch.Tensor):
    """Adds rpb[h, (k-1) + dy/d, (k-1) + dx/d] to each score; its gradient reaches `rpb`."""
    _, row, col, _, _ = positions

    def score_mod(score, b, h, q_idx, kv_idx):
        # Also evaluated at masked entries of kept blocks: clamp the slot into the table.
        dy = torch.clamp(rpb_slot(row[q_idx], row[kv_idx], kernel_size), 0, 2 * kernel_size - 2)
        dx = torch.clamp(rpb_slot(col[q_idx], col[kv_idx], kernel_size), 0, 2 * kernel_size - 2)
        return score + rpb[h, dy, dx].to(score.dtype)

    return score_mod


def why_not(q: torch.Tensor, rpb: torch.Tensor | None, dropout_p: float, needs_grad: bool) -> str | None:
    if dropout_p > 0.0 or (needs_grad and q.device.type == "cpu"):
        return "has no attention dropout, and no backward on CPU: use 'tiled'"
    if q.dtype == torch.float64:
        return "takes float32, float16 or bfloat16, got torch.float64: use 'tiled'"
    if q.device.type == "cuda" and q.shape[-1] < MIN_HEAD_DIM:
        return f"needs a head dim of at least {MIN_HEAD_DIM} on CUDA, got {q.shape[-1]}: use 'tiled'"
    unavailable = flex_unavailable(q.device.type)
    if unavailable is not None:
        return f"cannot run here: {unavailable}; use 'tiled'"
    return None


def na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int,
         rpb: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
    """Neighborhood attention by FlexAttention; inputs already validated, q already scaled."""
    batch, heads, height, width, dim = q.shape
    n = height * width
    order, inverse, *layout = _layout(height, width, kernel_size, dilation, q.device)
    positions = layout[:5]
    block_mask = _block_mask(height, width, kernel_size, dilation, q.device)
    score_mod = None if rpb is None else _rpb_score_mod(kernel_size, positions, rpb)
    q, k, v = (t.reshape(batch, heads, n, dim).index_select(2, order) for t in (q, k, v))
    # Inside a compiled graph flex_attention is captured and compiled with it.
    flex = flex_attention if torch.compiler.is_compiling() else _compiled_flex()
    out = flex(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1.0)
    return out.index_select(2, inverse).view(batch, heads, height, width, dim)
