"""2-D dilated neighborhood attention with relative positional bias, NATTEN 0.14 semantics.

`na2d` is the functional op (q, k, v of shape (B, heads, H, W, D), q already scaled); the module
`NeighborhoodAttention2D` is the channels-last layer whose parameters (`qkv`, `rpb`, `proj`) match the
released DiNAT checkpoints. Index rules: shared/specs/neighborhood_attention.md.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .na_flex import na2d_flex
from .na_natten import na2d_natten, natten_na2d
from .na_tiled import na2d_tiled

logger = logging.getLogger(__name__)

BACKENDS = ("tiled", "flex", "natten")
BACKEND_ENV = "DINAT_M2F_NA_BACKEND"
_forced_backend: list[str] = []
_logged_choices: set[tuple] = set()


@contextlib.contextmanager
def na_backend(name: str) -> Iterator[None]:
    """Force a neighborhood-attention backend ("tiled", "flex", "natten" or "auto") inside the block."""
    _check_backend_name(name, "na_backend")
    _forced_backend.append(name)
    try:
        yield
    finally:
        _forced_backend.pop()


def _check_backend_name(name: str, where: str) -> None:
    if name not in BACKENDS + ("auto",):
        raise ValueError(f"{where}: unknown neighborhood attention backend {name!r}; "
                         f"choose from {BACKENDS + ('auto',)}")


# FlexAttention's CUDA kernels (Triton tl.dot) need a head dim of at least 16.
FLEX_MIN_HEAD_DIM = 16


def automatic_backend(device_type: str, dtype: torch.dtype, head_dim: int, has_rpb: bool, dropout_p: float) -> str:
    """The automatic choice by device, dtype, shape and availability: NATTEN's fused kernels on CUDA without
    RPB when installed, FlexAttention on CUDA (float32 and half types, head dim >= 16), the tiled op
    otherwise (CPU, float64, attention dropout, smaller heads)."""
    if device_type != "cuda" or dropout_p > 0.0 or dtype == torch.float64:
        return "tiled"
    if not has_rpb and natten_na2d() is not None:
        return "natten"
    return "flex" if head_dim >= FLEX_MIN_HEAD_DIM else "tiled"


def select_backend(q: torch.Tensor, rpb: torch.Tensor | None, dropout_p: float, requested: str | None = None) -> str:
    """The backend for these inputs: the request (argument, then context manager, then env var), else
    `automatic_backend`. A forced backend that cannot run these inputs is a ValueError saying why."""
    name = requested or (_forced_backend[-1] if _forced_backend else None) or os.environ.get(BACKEND_ENV, "auto")
    _check_backend_name(name, f"backend (argument, na_backend() or ${BACKEND_ENV})")
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or (rpb is not None and rpb.requires_grad))
    if name == "auto":
        name = automatic_backend(q.device.type, q.dtype, q.shape[-1], rpb is not None, dropout_p)
    elif name == "natten" and (rpb is not None or natten_na2d() is None or dropout_p > 0.0):
        raise ValueError("backend 'natten' needs NATTEN >= 0.20 installed, rpb=None and no attention dropout")
    elif name in ("flex", "natten") and (dropout_p > 0.0 or (needs_grad and q.device.type == "cpu")):
        # NATTEN runs FlexAttention on CPU, which has no backward there.
        raise ValueError(f"backend {name!r} has no attention dropout, and no backward on CPU: use 'tiled'")
    elif name == "flex" and q.device.type == "cuda" and q.shape[-1] < FLEX_MIN_HEAD_DIM:
        raise ValueError(f"backend 'flex' needs a head dim of at least {FLEX_MIN_HEAD_DIM} on CUDA, "
                         f"got {q.shape[-1]}: use 'tiled'")
    choice = (name, q.device.type, q.dtype)
    if choice not in _logged_choices and not torch.compiler.is_compiling():  # logging would break the graph
        _logged_choices.add(choice)
        logger.info("neighborhood attention backend: %s (%s, %s)", name, q.device.type, q.dtype)
    return name


def _check_window(kernel_size: int, dilation: int) -> None:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 3 \
            or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd integer >= 3, got {kernel_size!r}")
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be an integer >= 1, got {dilation!r}")


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int,
                  rpb: torch.Tensor | None) -> None:
    _check_window(kernel_size, dilation)
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
    probabilities (only pass it while training). `backend` forces "tiled", "flex" or "natten"
    (default: chosen by device, dtype and availability; see `select_backend`).
    """
    _check_inputs(q, k, v, kernel_size, dilation, rpb)
    name = select_backend(q, rpb, dropout_p, backend)
    if name == "flex":
        return na2d_flex(q, k, v, kernel_size, dilation, rpb)
    if name == "natten":
        return na2d_natten(q, k, v, kernel_size, dilation)
    return na2d_tiled(q, k, v, kernel_size, dilation, rpb, dropout_p)


class NeighborhoodAttention2D(nn.Module):
    """Neighborhood attention layer on channels-last input (B, H, W, C), as NATTEN 0.14 defined it.

    Maps smaller than kernel_size * dilation are zero-padded at the bottom/right before the qkv projection
    and cropped before the output projection, which is what the released checkpoints were trained with.
    """

    def __init__(self, dim: int, num_heads: int, kernel_size: int, dilation: int = 1,
                 rel_pos_bias: bool = True, qkv_bias: bool = True, qk_scale: float | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        _check_window(kernel_size, dilation)
        if num_heads < 1 or dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1))
            nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        else:
            self.register_parameter("rpb", None)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"NeighborhoodAttention2D expects (B, H, W, {self.dim}) input, "
                             f"got {tuple(x.shape)}")
        batch, height, width, _ = x.shape
        window = self.kernel_size * self.dilation
        pad_h, pad_w = max(0, window - height), max(0, window - width)
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        padded_h, padded_w = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(batch, padded_h, padded_w, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)
        q = q * self.scale
        dropout_p = self.attn_drop if self.training else 0.0
        out = na2d(q, k, v, self.kernel_size, self.dilation, self.rpb, dropout_p=dropout_p)
        out = out.permute(0, 2, 3, 1, 4).reshape(batch, padded_h, padded_w, self.dim)
        if pad_h or pad_w:
            out = out[:, :height, :width, :]
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, rel_pos_bias={self.rpb is not None}")
