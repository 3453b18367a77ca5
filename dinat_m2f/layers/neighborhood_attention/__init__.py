"""2-D dilated neighborhood attention with relative positional bias, NATTEN 0.14 semantics.

    window.py      the window rule (window start, RPB slot) that every backend and the reference use
    reference.py   na2d_reference: gather-based, exact, slow (tests, benchmark baseline)
    plan.py        the tiling plan of the tiled and export backends
    tiled.py       backend "tiled": dense tiles as a custom op with a recomputing backward (CPU default)
    flex.py        backend "flex": torch FlexAttention with a block mask (CUDA default)
    natten.py      backend "natten": NATTEN's fused kernels, without RPB (optional)
    export.py      backend "export": the tiles in standard operators (chosen while exporting)
    verify.py      the automatic choice's first-use check of flex against tiled, per kind of call
    dispatch.py    the backend table, the automatic choice, forcing a backend, the log line
    functional.py  na2d(q, k, v, kernel_size, dilation=1, rpb=None): checks, then the chosen backend
    module.py      NeighborhoodAttention2D, the channels-last layer of the DiNAT checkpoints

Index rules: docs/NEIGHBORHOOD_ATTENTION.md.
"""
from .dispatch import BACKEND_ENV, BACKENDS, PRIORITY, na_backend, select_backend
from .functional import na2d
from .module import NeighborhoodAttention2D
from .reference import na2d_reference

__all__ = ["na2d", "na2d_reference", "NeighborhoodAttention2D", "na_backend", "select_backend", "BACKENDS",
           "PRIORITY", "BACKEND_ENV"]
