from .drop_path import DropPath
from .neighborhood_attention import BACKENDS, NeighborhoodAttention2D, na2d, na2d_reference, na_backend, select_backend

__all__ = ["na2d", "na2d_reference", "NeighborhoodAttention2D", "na_backend", "select_backend", "BACKENDS",
           "DropPath"]
