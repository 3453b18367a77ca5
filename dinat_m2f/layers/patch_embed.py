"""Non-overlapping patch embedding of the windowed transformers (Swin, LaViT)."""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PatchEmbed"]


class PatchEmbed(nn.Module):
    """Conv patch_size x patch_size, stride patch_size (input zero-padded at the bottom/right to a multiple),
    then an optional LayerNorm; output channels-last (B, H, W, C)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, patch_norm: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        x = F.pad(x, (0, -width % self.patch_size, 0, -height % self.patch_size))
        x = self.proj(x).permute(0, 2, 3, 1)
        return x if self.norm is None else self.norm(x)
