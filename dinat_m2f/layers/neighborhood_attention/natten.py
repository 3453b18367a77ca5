"""The `natten` backend: NATTEN's fused kernels (NATTEN >= 0.20's `natten.na2d`; optional, CUDA, no RPB).

Same window rule as this project for odd kernels and stride 1 (spec section 5); NATTEN lays tensors out
as (B, H, W, heads, D). On CPU NATTEN runs FlexAttention unfused: forward only, the whole score matrix in memory.
"""
from __future__ import annotations

import functools

import torch

NAME = "natten"


@functools.lru_cache(maxsize=None)
def natten_na2d():
    """NATTEN's functional na2d, or None when NATTEN (>= 0.20) is not importable."""
    try:
        import natten
    except ImportError:
        return None
    return getattr(natten, "na2d", None)


def why_not(q: torch.Tensor, rpb: torch.Tensor | None, dropout_p: float, needs_grad: bool) -> str | None:
    if rpb is not None or natten_na2d() is None or dropout_p > 0.0:
        return "needs NATTEN >= 0.20 installed, rpb=None and no attention dropout"
    if needs_grad and q.device.type == "cpu":  # FlexAttention underneath, which has no backward on CPU
        return "has no attention dropout, and no backward on CPU: use 'tiled'"
    if q.dtype == torch.float64:
        return "takes float32, float16 or bfloat16, got torch.float64: use 'tiled'"
    return None


def na2d(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int,
         rpb: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
    """Neighborhood attention without RPB by NATTEN's fused kernels; q already scaled."""
    q, k, v = (t.permute(0, 2, 3, 1, 4) for t in (q, k, v))
    out = natten_na2d()(q, k, v, kernel_size=kernel_size, dilation=dilation, scale=1.0)
    return out.permute(0, 3, 1, 2, 4)
