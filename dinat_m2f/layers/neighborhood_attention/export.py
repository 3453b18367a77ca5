"""The `export` backend: the tiled backend's tiles and numbers in standard operators only, for torch.export and
ONNX (chosen automatically while exporting).

The `tiled` backend's custom op would be one opaque node that ONNX Runtime, TensorRT or AOTInductor do not
know. Here every class pair of the plan is one block of batched products (no chunk loop to unroll): index_select
gathers the queries and key runs, matmul + bias + softmax + matmul attend, and an index_select puts the outputs
back in the queries' order; the plan's indices and the bias blocks' masks become constants of the exported
graph. Memory is the tiled backend's unchunked bound, O(B * heads * H * W * region^2) scores.
"""
from __future__ import annotations

import torch

from .plan import plan_2d
from .tiled import from_rows, tiles_by_standard_ops, to_rows

NAME = "export"


def why_not(q: torch.Tensor, rpb: torch.Tensor | None, dropout_p: float, needs_grad: bool) -> str | None:
    """Runs every input (plain autograd gives the backward)."""
    return None


def na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int,
         rpb: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
    """Neighborhood attention by the plan's tiles, one block per class pair; inputs already validated."""
    batch, heads, height, width, dim = q.shape
    q, k, v = (to_rows(t) for t in (q, k, v))
    plan = plan_2d(height, width, kernel_size, dilation, q.device)
    out = tiles_by_standard_ops(q, k, v, rpb, plan, batch, heads, dropout_p, score_budget=None)
    return from_rows(out, batch, height, width)
