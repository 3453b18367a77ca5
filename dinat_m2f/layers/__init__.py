from .neighborhood_attention import NeighborhoodAttention2D, na2d

__all__ = ["na2d", "NeighborhoodAttention2D"]
