"""`NeighborhoodAttention2D`, the channels-last layer whose parameters (`qkv`, `rpb`, `proj`) match the released
DiNAT checkpoints (NATTEN 0.14 semantics, spec section 4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .functional import check_window, na2d


class NeighborhoodAttention2D(nn.Module):
    """Neighborhood attention layer on channels-last input (B, H, W, C), as NATTEN 0.14 defined it.

    Maps smaller than kernel_size * dilation are zero-padded at the bottom/right before the qkv projection
    and cropped before the output projection, which is what the released checkpoints were trained with.
    """

    def __init__(self, dim: int, num_heads: int, kernel_size: int, dilation: int = 1,
                 rel_pos_bias: bool = True, qkv_bias: bool = True, qk_scale: float | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        check_window(kernel_size, dilation)
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
