"""Index plan of dilated neighborhood attention along one axis (NATTEN 0.14-0.17 rules).

The queries of an axis are cut into tiles of `tile` consecutive members of one dilation group. Every tile
attends to one contiguous run of `region` members of its group (the union of its queries' windows), so the
2-D work is dense blocks: (tile x tile) queries against (region x region) keys, with a mask for the keys
outside each query's own window and the relative positional bias (RPB) added per (query, key) pair.

Tiles whose mask and RPB pattern are equal form one *class*; in 2-D, a pair of row/column classes shares one
bias block, which is what keeps the RPB cheap. See shared/specs/neighborhood_attention.md, sections 1-2.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch


def window_start(p: int, group_len: int, kernel_size: int) -> int:
    """First neighbor of group member `p`, in group coordinates: clamp(p - k//2, 0, L_r - k)."""
    return min(max(p - kernel_size // 2, 0), group_len - kernel_size)


@dataclass(frozen=True)
class TileClass:
    """Tiles of one axis that share their mask and RPB pattern.

    query_index: (n * tile,) axis positions of the queries of the n tiles (invalid slots repeat a valid one).
    key_index:   (n * region,) axis positions of each tile's key run (positions past the axis are clamped;
                 they are always masked).
    allowed:     (tile, region) bool, key j of the run is in the window of query a.
    bias_index:  (tile, region) RPB slot (k-1) + (key - query)/dilation, clamped into [0, 2k-2] where masked.
    """

    query_index: torch.Tensor
    key_index: torch.Tensor
    allowed: torch.Tensor
    bias_index: torch.Tensor

    @property
    def num_tiles(self) -> int:
        return self.query_index.numel() // self.allowed.shape[0]


@dataclass(frozen=True)
class AxisPlan:
    length: int
    kernel_size: int
    dilation: int
    tile: int
    region: int
    classes: tuple[TileClass, ...]
    # slot_of_position[i]: where axis position i sits in the concatenation of the classes' query slots.
    slot_of_position: torch.Tensor

    def to(self, device: torch.device) -> "AxisPlan":
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=True)

        classes = tuple(
            TileClass(move(c.query_index), move(c.key_index), move(c.allowed), move(c.bias_index))
            for c in self.classes
        )
        return AxisPlan(self.length, self.kernel_size, self.dilation, self.tile, self.region, classes,
                        move(self.slot_of_position))


def default_tile(group_len: int, kernel_size: int) -> int:
    """Queries per tile: a whole group when it is short, else about half a window.

    Cost per query is region^2 = (tile + k - 1)^2 key scores; small tiles waste fewer scores, large tiles
    make larger matrix products. Half a window is a good balance on CPU and GPU.
    """
    if group_len <= 2 * kernel_size - 1:
        return group_len
    return kernel_size // 2 + 1


@functools.lru_cache(maxsize=256)
def _axis_plan_cpu(length: int, kernel_size: int, dilation: int, tile: int) -> AxisPlan:
    k, d = kernel_size, dilation
    max_group_len = math.ceil(length / d)
    tile = min(tile, max_group_len)
    region = min(tile + k - 1, max_group_len)
    num_tiles = math.ceil(max_group_len / tile)

    by_signature: dict[tuple, list] = {}
    for r in range(d):
        group_len = math.ceil((length - r) / d)
        for t in range(num_tiles):
            members = [min(t * tile + a, group_len - 1) for a in range(tile)]
            starts = [window_start(p, group_len, k) for p in members]
            key_start = min(starts[0], max_group_len - region)
            allowed = tuple(
                tuple(s <= key_start + j < s + k for j in range(region)) for s in starts
            )
            bias = tuple(
                tuple(min(max(k - 1 + key_start + j - p, 0), 2 * k - 2) for j in range(region))
                for p in members
            )
            queries = [p * d + r for p in members]
            # Keys past the group's end are masked; point them at a real position so values stay finite.
            keys = [min((key_start + j) * d + r, length - 1) for j in range(region)]
            valid = [t * tile + a < group_len for a in range(tile)]
            entry = by_signature.setdefault((allowed, bias), [[], [], []])
            entry[0].extend(queries)
            entry[1].extend(keys)
            entry[2].extend(valid)

    classes = []
    slot_of_position = torch.empty(length, dtype=torch.long)
    offset = 0
    for (allowed, bias), (queries, keys, valid) in by_signature.items():
        query_index = torch.tensor(queries, dtype=torch.long)
        slots = torch.arange(offset, offset + len(queries))
        is_valid = torch.tensor(valid)
        slot_of_position[query_index[is_valid]] = slots[is_valid]
        offset += len(queries)
        classes.append(
            TileClass(query_index, torch.tensor(keys, dtype=torch.long), torch.tensor(allowed),
                      torch.tensor(bias, dtype=torch.long))
        )
    return AxisPlan(length, k, d, tile, region, tuple(classes), slot_of_position)


_device_plans: dict[tuple, AxisPlan] = {}


def axis_plan(length: int, kernel_size: int, dilation: int, device: torch.device,
              tile: int | None = None) -> AxisPlan:
    """The (cached) plan of one axis of length `length`, on `device`."""
    if tile is None:
        tile = default_tile(math.ceil(length / dilation), kernel_size)
    key = (length, kernel_size, dilation, tile, str(device))
    plan = _device_plans.get(key)
    if plan is None:
        plan = _axis_plan_cpu(length, kernel_size, dilation, tile)
        if torch.device(device).type != "cpu":
            plan = plan.to(torch.device(device))
        if len(_device_plans) > 1024:
            _device_plans.clear()
        _device_plans[key] = plan
    return plan
