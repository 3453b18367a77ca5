"""NATTEN's fused kernels as an optional backend (CUDA, no RPB): NATTEN >= 0.20's `natten.na2d`.

Same window rule as this project for odd kernels and stride 1 (spec section 5); NATTEN lays tensors out
as (B, H, W, heads, D).
"""
from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def natten_na2d():
    """NATTEN's functional na2d, or None when NATTEN (>= 0.20) is not importable."""
    try:
        import natten
    except ImportError:
        return None
    return getattr(natten, "na2d", None)


def na2d_natten(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """Neighborhood attention without RPB by NATTEN's fused kernels; q already scaled."""
    q, k, v = (t.permute(0, 2, 3, 1, 4) for t in (q, k, v))
    out = natten_na2d()(q, k, v, kernel_size=kernel_size, dilation=dilation, scale=1.0)
    return out.permute(0, 3, 1, 2, 4)
