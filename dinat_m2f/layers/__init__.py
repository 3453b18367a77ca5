from .drop_path import DropPath, drop_path_rates
from .mlp import Mlp
from .neighborhood_attention import BACKENDS, NeighborhoodAttention2D, na2d, na2d_reference, na_backend, select_backend
from .patch_embed import PatchEmbed

__all__ = ["na2d", "na2d_reference", "NeighborhoodAttention2D", "na_backend", "select_backend", "BACKENDS",
           "DropPath", "drop_path_rates", "Mlp", "PatchEmbed"]
