"""The functional op `na2d`: checks its inputs, then runs the backend that `choose_backend` picks."""
from __future__ import annotations

import torch
from torch._dynamo.exc import BackendCompilerFailed

from . import verify
from .dispatch import BACKENDS, CHECKED, choose_backend


def check_window(kernel_size: int, dilation: int) -> None:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 3 \
            or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd integer >= 3, got {kernel_size!r}")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be an integer >= 1, got {dilation!r}")


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int,
                 rpb: torch.Tensor | None) -> None:
    check_window(kernel_size, dilation)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 5:
            raise ValueError(f"{name} must have shape (B, heads, H, W, D), got a {t.dim()}-d tensor "
                             f"of shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating point tensor, got {t.dtype}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must have the same dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    height, width = q.shape[2], q.shape[3]
    window = kernel_size * dilation
    if height < window or width < window:
        raise ValueError(
            f"each spatial axis must be >= kernel_size * dilation = {kernel_size} * {dilation} = {window}, "
            f"got H={height}, W={width} (NeighborhoodAttention2D pads small maps; na2d does not)"
        )
    if rpb is not None:
        expected = (q.shape[1], 2 * kernel_size - 1, 2 * kernel_size - 1)
        if tuple(rpb.shape) != expected:
            raise ValueError(f"rpb must have shape (heads, 2*kernel_size-1, 2*kernel_size-1) = {expected}, "
                             f"got {tuple(rpb.shape)}")


def na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int = 1,
         rpb: torch.Tensor | None = None, *, dropout_p: float = 0.0, backend: str | None = None) -> torch.Tensor:
    """softmax(q k^T + rpb) v over each query's dilated k x k neighborhood.

    q, k, v: (B, heads, H, W, D), q already multiplied by the scale; rpb: (heads, 2k-1, 2k-1) or None.
    Returns (B, heads, H, W, D). Differentiable in q, k, v and rpb. `dropout_p` drops attention
    probabilities (only pass it while training). `backend` forces one of BACKENDS ("tiled", "flex",
    "natten", "export"; default: chosen by device, dtype, shape and availability, flex checked against tiled on
    first use per kind of call and replaced by it for the kind where a later call fails to compile, see
    `select_backend`).
    """
    check_inputs(q, k, v, kernel_size, dilation, rpb)
    name, checked_kind = choose_backend(q, rpb, dropout_p, backend, kernel_size=kernel_size, dilation=dilation)
    try:
        return BACKENDS[name].na2d(q, k, v, kernel_size, dilation, rpb, dropout_p)
    except BackendCompilerFailed as error:  # Inductor's compile errors; a kernel's run-time errors propagate
        if checked_kind is None:  # forced, unchecked or traced: the error is the caller's
            raise
        fallback = BACKENDS[CHECKED[name]]
        verify.fail_later(BACKENDS[name], fallback, checked_kind, q, rpb, error)
        return fallback.na2d(q, k, v, kernel_size, dilation, rpb, dropout_p)
