from .drop_path import DropPath, drop_path_rates
from .mlp import Mlp
from .neighborhood_attention import BACKENDS, NeighborhoodAttention2D, na2d, na2d_reference, na_backend, select_backend
from .patch_embed import PatchEmbed
from .windows import window_partition, window_reverse

__all__ = ["na2d", "na2d_reference", "NeighborhoodAttention2D", "na_backend", "select_backend", "BACKENDS",
           "DropPath", "drop_path_rates", "Mlp", "PatchEmbed", "window_partition", "window_reverse"]
