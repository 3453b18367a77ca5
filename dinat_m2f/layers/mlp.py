"""The transformer blocks' two-layer perceptron (DiNAT/NAT, Swin, LaViT)."""
import torch
from torch import nn

__all__ = ["Mlp"]


class Mlp(nn.Module):
    """fc1 (dim -> hidden), GELU, dropout, fc2 (hidden -> dim), dropout; on the last axis."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))
