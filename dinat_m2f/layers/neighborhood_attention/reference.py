"""`na2d_reference`: neighborhood attention by gathering every query's k x k keys and values (plain PyTorch, exact,
slow and memory-hungry: B * heads * H * W * k^2 * D gathered elements per row chunk). The tests' brute force and
the benchmark's `gather` row; not a backend."""
from __future__ import annotations

import torch

from .functional import check_inputs
from .window import axis_neighbors


def na2d_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int = 1,
                   rpb: torch.Tensor | None = None, *, rows_per_chunk: int = 8) -> torch.Tensor:
    """softmax(q k^T + rpb) v over each query's window, as `na2d` (same arguments and shapes), `rows_per_chunk`
    query rows at a time. Differentiable in q, k, v and rpb; the softmax runs in float32 for half types."""
    check_inputs(q, k, v, kernel_size, dilation, rpb)
    height, width = q.shape[2], q.shape[3]
    rows, row_slots = (t.to(q.device) for t in axis_neighbors(height, kernel_size, dilation))
    cols, col_slots = (t.to(q.device) for t in axis_neighbors(width, kernel_size, dilation))
    softmax_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    outputs = []
    for first in range(0, height, rows_per_chunk):
        chunk = slice(first, first + rows_per_chunk)
        r, c = rows[chunk][:, None, :, None], cols[None, :, None, :]  # (rows, 1, k, 1), (1, W, 1, k)
        keys, values = k[:, :, r, c], v[:, :, r, c]  # (B, heads, rows, W, k, k, D)
        logits = torch.einsum("bhijd,bhijacd->bhijac", q[:, :, chunk], keys)
        if rpb is not None:
            logits = logits + rpb[:, row_slots[chunk][:, None, :, None], col_slots[None, :, None, :]][None]
        probs = logits.flatten(-2).to(softmax_dtype).softmax(-1).to(v.dtype).view_as(logits)
        outputs.append(torch.einsum("bhijac,bhijacd->bhijd", probs, values))
    return torch.cat(outputs, dim=2)
