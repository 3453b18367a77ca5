"""The `tiled` backend: dense tiles as matrix products, on any device and dtype (the CPU default).

q, k, v are taken position-major, (H*W, B*heads, D) rows (NeighborhoodAttention2D's q, k, v are laid out so,
which makes this a view for one image): gathering a position then copies all heads' channels as one row, several
times faster than a gather per head. For every (row class, column class) pair of the plan (see plan.py), the
queries of its tiles are gathered into blocks of Th*Tw rows and their key runs into Rh*Rw rows, and
softmax(Q K^T + bias) V is computed per block. The bias block (RPB inside each query's window, -inf outside) is
shared by all tiles of the pair.

The forward runs each chunk of tiles as one fused scaled_dot_product_attention (the CPU flash kernel: no score
tensor). The backward recomputes each chunk's probabilities (flash-attention style) with batched matrix
products, in chunks small enough that the scores stay in cache, and accumulates the gradients of q, k, v and
rpb into one buffer each; memory is O(chunk), never (H*W)^2. Forward and backward are torch custom ops
(dinat_m2f::na2d_tiled and dinat_m2f::na2d_tiled_backward). Attention dropout takes `tiles_by_standard_ops`,
the same tiles through plain autograd, which is also the `export` backend.
"""
from __future__ import annotations

from typing import Callable, Iterator, List, Optional

import torch
import torch.nn.functional as F

from .plan import ClassPair, Plan2D, plan_2d

NAME = "tiled"

# Score elements per chunk (B * heads * tiles * queries * keys): 2^18 float32 = 1 MiB, cache-sized.
SCORE_BUDGET = 1 << 18
# The fused forward holds no scores: its chunks bound the gathered queries, keys and values (16 MiB float32).
GATHER_BUDGET = 1 << 22

_HALF = (torch.float16, torch.bfloat16)


def pair_bias(rpb: torch.Tensor | None, pair: ClassPair, dtype: torch.dtype) -> torch.Tensor:
    """(heads or 1, Th*Tw, Rh*Rw) bias of one class pair: RPB inside the windows, -inf outside (one gather of
    the plan's flat slots: advanced indexing with broadcast 4-D indices cost several times more)."""
    if rpb is None:
        bias = torch.zeros((1, pair.blocked.numel()), dtype=dtype, device=pair.blocked.device)
    else:
        bias = rpb.reshape(rpb.shape[0], -1).index_select(1, pair.bias_slots).to(dtype)
    return bias.masked_fill_(pair.blocked, float("-inf")).view(bias.shape[0], *pair.block)


def _scores(queries: int, keys: int) -> int:
    return queries * keys


def _chunks(plan: Plan2D, batch: int, heads: int, budget: int | None = SCORE_BUDGET,
            tile_cost: Callable[[int, int], int] = _scores
            ) -> Iterator[tuple[int, tuple[int, int], int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(pair number, (queries, keys) per tile, tiles in chunk, query index, key index, query validity) for
    each chunk of at most `budget` elements, tile_cost(queries, keys) per tile and head (default: its scores;
    None: one chunk per class pair)."""
    for number, pair in enumerate(plan.pairs):
        queries, keys = pair.block
        tiles = pair.rows.num_tiles * pair.cols.num_tiles
        step = tiles if budget is None else max(1, budget // (batch * heads * tile_cost(queries, keys)))
        for first in range(0, tiles, step):
            n = min(step, tiles - first)
            q_slice = slice(first * queries, (first + n) * queries)
            yield (number, pair.block, n, pair.query_index[q_slice],
                   pair.key_index[first * keys: (first + n) * keys], pair.query_valid[q_slice])


def to_rows(t: torch.Tensor) -> torch.Tensor:
    """(B, heads, H, W, D) as the position-major (H*W, B*heads, D) rows the tiles gather from (a view for B = 1
    when heads and channels are innermost, as NeighborhoodAttention2D's q, k, v are)."""
    batch, heads, height, width, dim = t.shape
    return t.permute(2, 3, 0, 1, 4).reshape(height * width, batch * heads, dim)


def from_rows(rows: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """(H*W, B*heads, D) rows back as a (B, heads, H, W, D) view."""
    return rows.view(height, width, batch, -1, rows.shape[-1]).permute(2, 3, 0, 1, 4)


def _gatherable(rows: torch.Tensor) -> torch.Tensor:
    """`rows` itself where each position's channels (all heads) are one contiguous run, however far apart the
    positions are (k and v of NeighborhoodAttention2D: views into its qkv output; index_select reads such rows
    as fast as packed ones), else a contiguous copy (done once: index_select would copy at every chunk)."""
    if rows.stride(-1) == 1 and rows.stride(-2) == rows.shape[-1]:
        return rows
    return rows.contiguous()


def _gather(rows: torch.Tensor, index: torch.Tensor, n: int, size: int, batch: int) -> torch.Tensor:
    """The rows at `index` as (B, heads, n, size, D) blocks: one gather of whole positions (all heads' channels
    are one contiguous row, several times faster than gathering per head), then a view."""
    flat = rows.reshape(rows.shape[0], -1)  # a 2-D gather takes the fast row-copy path
    return flat.index_select(0, index).view(n, size, batch, -1, rows.shape[-1]).permute(2, 3, 0, 1, 4)


def _scatter_rows(blocks: torch.Tensor) -> torch.Tensor:
    """(B, heads, n, size, D) blocks as (n * size, B*heads, D) rows (a view where they are position-major)."""
    batch, heads, n, size, dim = blocks.shape
    return blocks.permute(2, 3, 0, 1, 4).reshape(n * size, batch * heads, dim)


def _probabilities(q_blocks: torch.Tensor, k_blocks: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    scores = torch.matmul(q_blocks, k_blocks.transpose(-1, -2))
    # Half-precision scores are normalized in float32.
    if scores.dtype in _HALF:
        scores = scores.float()
    scores += bias
    return torch.softmax(scores, dim=-1)


def _attention_mask(rpb: torch.Tensor | None, pair: ClassPair, dtype: torch.dtype, batch: int
                    ) -> torch.Tensor | None:
    """The pair's bias as an SDPA mask for (B*heads, tiles, Th*Tw, D) blocks: (B*heads or 1, 1, Th*Tw, Rh*Rw),
    None where it is zero (no RPB, every key of the run in every window)."""
    if rpb is None and not bool(pair.blocked.any()):
        return None
    bias = pair_bias(rpb, pair, dtype)
    if bias.shape[0] > 1:  # one bias per head, the same for every image: (B*heads, ...) as a view when B = 1
        bias = bias.expand(batch, *bias.shape).reshape(-1, *bias.shape[1:])
    return bias[:, None]


@torch.library.custom_op("dinat_m2f::na2d_tiled", mutates_args=())
def _forward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: Optional[torch.Tensor], batch: int,
                heads: int, height: int, width: int, kernel_size: int, dilation: int) -> torch.Tensor:
    """softmax(q k^T + rpb) v on position-major (H*W, B*heads, D) rows (see to_rows). A custom op, so that jit
    tracing, fvcore and torch.compile see one node instead of the per-chunk loop (which would unroll and break
    graphs).

    Each chunk is one fused scaled_dot_product_attention (a flash kernel on CPU: no score tensor, no separate
    bias, softmax and product passes), in float32 for half types as the backward's probabilities."""
    plan = plan_2d(height, width, kernel_size, dilation, q.device)
    dim = q.shape[-1]
    score_dtype = torch.float32 if q.dtype in _HALF else q.dtype
    masks = [_attention_mask(rpb, pair, score_dtype, batch) for pair in plan.pairs]
    out = torch.empty_like(q)
    gathered = lambda queries, keys: (queries + 2 * keys) * dim  # noqa: E731
    for number, (tq, tk), n, q_index, k_index, _ in _chunks(plan, batch, heads, GATHER_BUDGET, gathered):
        q_blocks, k_blocks, v_blocks = (_gather(rows, index, n, size, batch).flatten(0, 1).to(score_dtype)
                                        for rows, index, size in ((q, q_index, tq), (k, k_index, tk), (v, k_index, tk)))
        blocks = F.scaled_dot_product_attention(q_blocks, k_blocks, v_blocks, attn_mask=masks[number], scale=1.0)
        # Straight to the queries' positions; a slot repeating a query past its group's end has that
        # query's window, so it writes the same output again.
        out.index_copy_(0, q_index, _scatter_rows(blocks.view(batch, heads, n, tq, dim)).to(q.dtype))
    return out


@_forward_op.register_fake
def _(q, k, v, rpb, batch, heads, height, width, kernel_size, dilation):
    return torch.empty_like(q)


@torch.library.custom_op("dinat_m2f::na2d_tiled_backward", mutates_args=())
def _backward_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 rpb: Optional[torch.Tensor], out: torch.Tensor, batch: int, heads: int, height: int, width: int,
                 kernel_size: int, dilation: int, need_rpb: bool) -> List[torch.Tensor]:
    """Gradients of q, k, v and rpb (an empty tensor when not needed), recomputing each chunk's probabilities."""
    plan = plan_2d(height, width, kernel_size, dilation, q.device)
    work_dtype = torch.float32 if q.dtype in _HALF else q.dtype
    grad_out = grad_out.contiguous()
    # delta_i = sum_e dO_ie O_ie = sum_j P_ij dP_ij, the softmax backward's row term.
    delta = (grad_out.to(work_dtype) * out.to(work_dtype)).sum(-1, keepdim=True)
    # Gradients are summed head-major, (B*heads, H*W, D): index_add_ along positions is fastest there.
    grad_q = torch.zeros(q.shape[1], q.shape[0], q.shape[2], dtype=work_dtype, device=q.device)
    grad_k = torch.zeros_like(grad_q)
    grad_v = torch.zeros_like(grad_q)
    need_rpb = need_rpb and rpb is not None
    biases = [pair_bias(rpb, pair, work_dtype)[None, :, None] for pair in plan.pairs]
    # The bias gradient is summed per class pair over all its tiles, and scattered into the RPB table once.
    grad_bias = [torch.zeros(heads, bias.shape[-2] * bias.shape[-1], dtype=work_dtype, device=q.device)
                 for bias in biases] if need_rpb else None

    for number, (tq, tk), n, q_index, k_index, valid in _chunks(plan, batch, heads):
        # Head-major copies once: each block feeds two matrix products, which would copy a strided view each.
        q_blocks = _gather(q, q_index, n, tq, batch).contiguous()
        k_blocks = _gather(k, k_index, n, tk, batch).contiguous()
        v_blocks = _gather(v, k_index, n, tk, batch).contiguous()
        probs = _probabilities(q_blocks, k_blocks, biases[number])
        # Slots that repeat a query past its group's end must not count twice: zero their upstream grad.
        keep = valid.view(1, 1, n, tq, 1).to(work_dtype)
        grad_o = _gather(grad_out, q_index, n, tq, batch).contiguous().to(work_dtype) * keep
        row_delta = _gather(delta, q_index, n, tq, batch) * keep
        heads_major = (batch * heads, -1, grad_q.shape[-1])
        grad_v.index_add_(1, k_index, torch.matmul(probs.transpose(-1, -2), grad_o).view(heads_major))
        grad_p = torch.matmul(grad_o, v_blocks.to(work_dtype).transpose(-1, -2))
        grad_s = probs.mul_(grad_p.sub_(row_delta))  # dS = P * (dP - delta), written over P
        grad_q.index_add_(1, q_index, torch.matmul(grad_s, k_blocks.to(work_dtype)).view(heads_major))
        grad_k.index_add_(1, k_index, torch.matmul(grad_s.transpose(-1, -2), q_blocks.to(work_dtype)).view(heads_major))
        if need_rpb:
            grad_bias[number] += grad_s.sum(dim=(0, 2)).reshape(heads, -1)

    grad_rpb = torch.zeros((heads, (2 * kernel_size - 1) ** 2), dtype=work_dtype, device=q.device)
    if need_rpb:
        for pair, grad in zip(plan.pairs, grad_bias):
            grad_rpb.index_add_(1, pair.bias_slots, grad)
    grad_rpb = grad_rpb.view(heads, 2 * kernel_size - 1, 2 * kernel_size - 1).to(
        rpb.dtype if rpb is not None else q.dtype)
    return [g.transpose(0, 1).to(t.dtype).contiguous() for g, t in ((grad_q, q), (grad_k, k), (grad_v, v))] + [grad_rpb]


@_backward_op.register_fake
def _(grad_out, q, k, v, rpb, out, batch, heads, height, width, kernel_size, dilation, need_rpb):
    side = 2 * kernel_size - 1
    grad_rpb = q.new_empty((heads, side, side), dtype=rpb.dtype if rpb is not None else q.dtype)
    return [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), grad_rpb]


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, rpb, *sizes = inputs
    ctx.save_for_backward(q, k, v, rpb, output)
    ctx.sizes = sizes


def _backward(ctx, grad_out):
    q, k, v, rpb, out = ctx.saved_tensors
    need_rpb = rpb is not None and ctx.needs_input_grad[3]
    grad_q, grad_k, grad_v, grad_rpb = _backward_op(grad_out, q, k, v, rpb, out, *ctx.sizes, need_rpb)
    return grad_q, grad_k, grad_v, grad_rpb if need_rpb else None, None, None, None, None, None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def tiles_by_standard_ops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rpb: torch.Tensor | None,
                          plan: Plan2D, batch: int, heads: int, dropout_p: float = 0.0,
                          score_budget: int | None = SCORE_BUDGET) -> torch.Tensor:
    """The custom op's computation through plain autograd and standard ops only (index_select, matmul, add,
    softmax, cat, and an index_select back to the queries' order), on position-major (H*W, B*heads, D) rows."""
    score_dtype = torch.float32 if q.dtype in _HALF else q.dtype
    biases = [pair_bias(rpb, pair, score_dtype)[None, :, None] for pair in plan.pairs]
    outputs = []
    for number, (tq, tk), n, q_index, k_index, _ in _chunks(plan, batch, heads, score_budget):
        q_blocks, k_blocks, v_blocks = (_gather(rows, index, n, size, batch)
                                        for rows, index, size in ((q, q_index, tq), (k, k_index, tk), (v, k_index, tk)))
        scores = torch.matmul(q_blocks, k_blocks.transpose(-1, -2)).to(score_dtype) + biases[number]
        probs = scores.softmax(dim=-1)
        if dropout_p > 0.0:
            probs = F.dropout(probs, p=dropout_p)
        outputs.append(_scatter_rows(torch.matmul(probs.to(v.dtype), v_blocks)))
    return torch.cat(outputs, dim=0).index_select(0, plan.output_index)


def why_not(q: torch.Tensor, rpb: torch.Tensor | None, dropout_p: float, needs_grad: bool) -> str | None:
    """Runs every input: any device, float dtype, head dim, attention dropout, backward."""
    return None


def na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int,
         rpb: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
    """Neighborhood attention by dense tiles; inputs already validated, q already scaled."""
    batch, heads, height, width, dim = q.shape
    q, k, v = (_gatherable(to_rows(t)) for t in (q, k, v))
    if dropout_p > 0.0:
        plan = plan_2d(height, width, kernel_size, dilation, q.device)
        out = tiles_by_standard_ops(q, k, v, rpb, plan, batch, heads, dropout_p)
    else:
        out = _forward_op(q, k, v, rpb, batch, heads, height, width, kernel_size, dilation)
    return from_rows(out, batch, height, width)
