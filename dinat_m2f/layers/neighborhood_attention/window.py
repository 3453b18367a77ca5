"""The window rule of dilated neighborhood attention along one axis (NATTEN 0.14-0.17), shared by every
backend and by `na2d_reference`: which keys a query attends to, and which RPB slot each key uses.

Along an axis of length L with kernel k and dilation d, position i is member p = i // d of dilation group
r = i % d, a group of L_r = ceil((L - r) / d) members. Its window is the k consecutive members of its group
starting at clamp(p - k//2, 0, L_r - k): shifted at the borders, never truncated, each group clamped against
its own length. The key at member m uses RPB slot (k - 1) + m - p. Spec: docs/NEIGHBORHOOD_ATTENTION.md,
sections 1-2; the two axes of a 2-D map are independent.
"""
from __future__ import annotations

import torch


def axis_window_starts(length: int, kernel_size: int, dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(member, window start) of each position of one axis, both in group coordinates, as (length,) tensors."""
    position = torch.arange(length)
    residue, member = position % dilation, position // dilation
    group_len = (length - residue + dilation - 1) // dilation
    return member, torch.minimum((member - kernel_size // 2).clamp(min=0), group_len - kernel_size)


def rpb_slot(query_member, key_member, kernel_size: int):
    """RPB index along one axis of the key at `key_member` for the query at `query_member` (group coordinates,
    ints or tensors): (k - 1) + offset, the offset counted in dilated steps, so one table serves every dilation."""
    return kernel_size - 1 + key_member - query_member


def axis_neighbors(length: int, kernel_size: int, dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(length, k) key positions and (length, k) RPB slots of every query of one axis, keys in increasing order."""
    member, start = axis_window_starts(length, kernel_size, dilation)
    key_member = start[:, None] + torch.arange(kernel_size)
    residue = torch.arange(length) % dilation
    return key_member * dilation + residue[:, None], rpb_slot(member[:, None], key_member, kernel_size)
