"""The tiling plan of the `tiled` and `export` backends: which queries form a tile, which keys it reads, and
the mask and relative-positional-bias (RPB) slots of every (query, key) pair of a tile.

Along one axis, the queries of each dilation group are cut into tiles of `tile` consecutive members. A tile
attends to one contiguous run of `region` members of its group (the union of its queries' windows), so in 2-D
the work is dense blocks: (tile_h x tile_w) queries against (region_h x region_w) keys, with a mask for the keys
outside each query's own window and the RPB added per (query, key) pair. Tiles whose mask and RPB pattern are
equal form one *class*; a pair of a row class and a column class shares one bias block, which keeps the RPB
cheap. The window rule itself is window.py's.

Why it works (the invariant): window starts never decrease along a group (clamp(p - k//2, 0, L_r - k) is
non-decreasing in p) and grow by at most one per member, so the windows of `tile` consecutive members cover one
run of at most tile + k - 1 members, starting at the first member's window start. `region` is
min(tile + k - 1, longest group); a run that would pass the longest group's end is moved left to end there,
which still covers every window of the tile. In a shorter group the run may pass the group's end: those keys
are masked (and point at a real position, so values stay finite).

Worked example: one axis of L = 10 positions, k = 3, d = 2, tile = 2 (spec section 7(b)).
Groups: r = 0 holds positions 0, 2, 4, 6, 8 and r = 1 holds 1, 3, 5, 7, 9 (members p = 0..4, L_r = 5).
Window starts by member: clamp(p - 1, 0, 2) = 0, 0, 1, 2, 2. region = min(2 + 3 - 1, 5) = 4; ceil(5 / 2) = 3
tiles per group; the last tile has one real query and repeats it in its second slot (valid = [1, 0]).

    tile  members  key run (members)  mask (rows: queries, columns: key run)  RPB slots (masked ones clamped)
    0     0, 1     0..3               [1 1 1 0] / [1 1 1 0]                   [2 3 4 4] / [1 2 3 4]
    1     2, 3     1..4               [1 1 1 0] / [0 1 1 1]                   [1 2 3 4] / [0 1 2 3]
    2     4, (4)   1..4               [0 1 1 1] / [0 1 1 1]                   [0 0 1 2] / [0 0 1 2]

Both groups have the same patterns, so there are 3 classes of 2 tiles each (one per group), in positions:
class of tile 0: queries [0, 2 | 1, 3], keys [0, 2, 4, 6 | 1, 3, 5, 7];
class of tile 1: queries [4, 6 | 5, 7], keys [2, 4, 6, 8 | 3, 5, 7, 9];
class of tile 2: queries [8, 8 | 9, 9] (valid [1, 0 | 1, 0]), keys [2, 4, 6, 8 | 3, 5, 7, 9].
E.g. query 6 (member 3) reads keys 4, 6, 8 with slots 1, 2, 3, and query 8 reads keys 4, 6, 8 with slots
0, 1, 2, as the spec's table says. In 2-D, row tile x column tile is one block of 2 x 2 queries against 4 x 4
keys; its mask is the outer AND of the two axes' masks and its bias is rpb[h, row slot, column slot].
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import _disable_current_modes

from .window import axis_window_starts, rpb_slot


@dataclass(frozen=True)
class TileClass:
    """Tiles of one axis that share their mask and RPB pattern.

    query_index: (n * tile,) axis positions of the queries of the n tiles (invalid slots repeat a valid one).
    key_index:   (n * region,) axis positions of each tile's key run (positions past the axis are clamped;
                 they are always masked).
    valid:       (n * tile,) bool, the slot holds a real query (not a repeat past its group's end).
    allowed:     (tile, region) bool, key j of the run is in the window of query a.
    bias_index:  (tile, region) RPB slot (k-1) + (key - query)/dilation, clamped into [0, 2k-2] where masked.
    """

    query_index: torch.Tensor
    key_index: torch.Tensor
    valid: torch.Tensor
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


def default_tile(group_len: int, kernel_size: int) -> int:
    """Queries per tile: a whole group when it is short, else about half a window.

    Cost per query is region^2 = (tile + k - 1)^2 key scores; small tiles waste fewer scores, large tiles
    make larger matrix products. About half a window measured best on CPU (tools/benchmark_na.py).
    """
    if group_len <= 2 * kernel_size - 1:
        return group_len
    return max(kernel_size // 2, 4)


def _uniform_cuts(starts: list[int], tile: int, num_tiles: int) -> list[list[int]]:
    """`num_tiles` runs of `tile` consecutive members (a short group repeats its last member)."""
    return [[min(t * tile + a, len(starts) - 1) for a in range(tile)] for t in range(num_tiles)]


# Fewer interior members than this are split between the two border tiles instead: a tile of 1-3 rows makes
# matrix products too small to pay for the scores it saves (at 200x200, d=14: 15-member groups, 6 + 3 + 6;
# merged 8 + 7, 11-15% faster in both passes, tools/benchmark_na.py).
MIN_INTERIOR = 4


def _border_cuts(starts: list[int], tile: int) -> list[list[int]]:
    """The members sharing the first window, those sharing the last window, and the members between them in
    runs of at most `tile`: every border tile reads exactly k keys, an interior tile tile + k - 1. An interior
    of fewer than MIN_INTERIOR members joins the border tiles (half each), which then read a few more keys."""
    n = len(starts)
    head = starts.count(starts[0])
    tail = starts.count(starts[-1]) if starts[-1] != starts[0] else 0
    interior = n - head - tail
    if tail and 0 < interior < MIN_INTERIOR:
        middle = head + (interior + 1) // 2
        return [list(range(0, middle)), list(range(middle, n))]
    cuts = [list(range(0, head))]
    cuts += [list(range(a, min(a + tile, n - tail))) for a in range(head, n - tail, tile)]
    if tail:
        cuts.append(list(range(n - tail, n)))
    return cuts


@functools.lru_cache(maxsize=256)
def _axis_plan_cpu(length: int, kernel_size: int, dilation: int, tile: int, borders_apart: bool = False
                   ) -> AxisPlan:
    """The plan of one axis. Tiles are `tile` consecutive members of a group, or with `borders_apart` the
    border runs of `_border_cuts` and interior runs of at most `tile` (then tiles have several sizes, one per
    class, and no slot repeats a query). `AxisPlan.tile` / `.region` are the largest tile and key run."""
    k, d = kernel_size, dilation
    max_group_len = math.ceil(length / d)
    tile = min(tile, max_group_len)
    region = min(tile + k - 1, max_group_len)
    num_tiles = math.ceil(max_group_len / tile)
    start_of = axis_window_starts(length, k, d)[1].tolist()  # by axis position

    by_signature: dict[tuple, list] = {}
    for r in range(d):
        group_starts = start_of[r::d]
        cuts = _border_cuts(group_starts, tile) if borders_apart else _uniform_cuts(group_starts, tile, num_tiles)
        seen: set[int] = set()
        for members in cuts:
            starts = [group_starts[p] for p in members]
            if borders_apart:
                key_start, run = starts[0], starts[-1] + k - starts[0]
            else:
                key_start, run = min(starts[0], max_group_len - region), region
            allowed = tuple(
                tuple(s <= key_start + j < s + k for j in range(run)) for s in starts
            )
            bias = tuple(
                tuple(min(max(rpb_slot(p, key_start + j, k), 0), 2 * k - 2) for j in range(run))
                for p in members
            )
            queries = [p * d + r for p in members]
            # Keys past the group's end are masked; point them at a real position so values stay finite.
            keys = [min((key_start + j) * d + r, length - 1) for j in range(run)]
            valid = []  # a slot repeating a member is not valid
            for p in members:
                valid.append(p not in seen)
                seen.add(p)
            entry = by_signature.setdefault((allowed, bias), [[], [], []])
            entry[0].extend(queries)
            entry[1].extend(keys)
            entry[2].extend(valid)

    classes = tuple(
        TileClass(torch.tensor(queries, dtype=torch.long), torch.tensor(keys, dtype=torch.long),
                  torch.tensor(valid), torch.tensor(allowed), torch.tensor(bias, dtype=torch.long))
        for (allowed, bias), (queries, keys, valid) in by_signature.items()
    )
    if borders_apart:
        tile = max(c.allowed.shape[0] for c in classes)
        region = max(c.allowed.shape[1] for c in classes)
    return AxisPlan(length, k, d, tile, region, classes)


@dataclass(frozen=True)
class ClassPair:
    """A (row class, column class) pair: its tiles as flat indices into the H*W positions.

    query_index: (n_rows * n_cols * Th * Tw,) ordered (row tile, column tile, row, column), so the queries of
    one tile are contiguous and consecutive row tiles are consecutive slices.
    key_index:   (n_rows * n_cols * Rh * Rw,) likewise for the key runs.
    query_valid: (n_rows * n_cols * Th * Tw,) bool, the slot is a real query (others repeat one and are dropped).
    bias_slots:  (Th * Tw * Rh * Rw,) flat index into an RPB table rpb[h].view(-1) ((2k-1)^2 entries) of every
                 (query, key) entry of the pair's bias block, ordered (row, column, key row, key column).
    blocked:     (Th * Tw * Rh * Rw,) bool, the key is outside the query's window (its bias is -inf).
    """

    rows: TileClass
    cols: TileClass
    query_index: torch.Tensor
    key_index: torch.Tensor
    query_valid: torch.Tensor
    bias_slots: torch.Tensor
    blocked: torch.Tensor

    @property
    def block(self) -> tuple[int, int]:
        """(queries, keys) of one tile: (Th*Tw, Rh*Rw)."""
        (th, rh), (tw, rw) = self.rows.allowed.shape, self.cols.allowed.shape
        return th * tw, rh * rw


@dataclass(frozen=True)
class Plan2D:
    height: int
    width: int
    pairs: tuple[ClassPair, ...]
    # output_index[i * W + j]: row of query (i, j) in the concatenation of all pairs' query slots.
    output_index: torch.Tensor


def _outer_flat(rows: torch.Tensor, cols: torch.Tensor, n_rows: int, n_cols: int, width: int) -> torch.Tensor:
    r = rows.view(n_rows, 1, -1, 1)
    c = cols.view(1, n_cols, 1, -1)
    return (r * width + c).reshape(-1)


@functools.lru_cache(maxsize=128)
def _plan_2d_cpu(height: int, width: int, kernel_size: int, dilation: int, tile_h: int, tile_w: int,
                 borders_apart: bool) -> Plan2D:
    plan_h = _axis_plan_cpu(height, kernel_size, dilation, tile_h, borders_apart)
    plan_w = _axis_plan_cpu(width, kernel_size, dilation, tile_w, borders_apart)
    pairs = []
    output_index = torch.empty(height * width, dtype=torch.long)
    offset = 0
    side = 2 * kernel_size - 1  # RPB table side
    for rows in plan_h.classes:
        for cols in plan_w.classes:
            n_rows, n_cols = rows.num_tiles, cols.num_tiles
            queries = _outer_flat(rows.query_index, cols.query_index, n_rows, n_cols, width)
            keys = _outer_flat(rows.key_index, cols.key_index, n_rows, n_cols, width)
            valid = (rows.valid.view(n_rows, 1, -1, 1) & cols.valid.view(1, n_cols, 1, -1)).reshape(-1)
            output_index[queries[valid]] = torch.arange(offset, offset + queries.numel())[valid]
            offset += queries.numel()
            slots = rows.bias_index[:, None, :, None] * side + cols.bias_index[None, :, None, :]
            blocked = ~(rows.allowed[:, None, :, None] & cols.allowed[None, :, None, :])
            pairs.append(ClassPair(rows, cols, queries, keys, valid, slots.reshape(-1), blocked.reshape(-1)))
    return Plan2D(height, width, tuple(pairs), output_index)


def _to_device(plan: Plan2D, device: torch.device) -> Plan2D:
    def move_class(c: TileClass) -> TileClass:
        return TileClass(*(t.to(device) for t in (c.query_index, c.key_index, c.valid, c.allowed, c.bias_index)))

    pairs = tuple(ClassPair(move_class(p.rows), move_class(p.cols),
                            *(t.to(device) for t in (p.query_index, p.key_index, p.query_valid, p.bias_slots,
                                                     p.blocked))) for p in plan.pairs)
    return Plan2D(plan.height, plan.width, pairs, plan.output_index.to(device))


_device_plans: dict[tuple, Plan2D] = {}


def plan_2d(height: int, width: int, kernel_size: int, dilation: int, device: torch.device,
            tile: tuple[int, int] | None = None) -> Plan2D:
    """The (cached) 2-D plan for an H x W map, on `device`: tiles of `tile` = (rows, columns) members, or by
    default each group's border runs apart and interior tiles of `default_tile` members."""
    borders_apart = tile is None
    if borders_apart:
        tile = (default_tile(math.ceil(height / dilation), kernel_size),
                default_tile(math.ceil(width / dilation), kernel_size))
    device = torch.device(device)
    key = (height, width, kernel_size, dilation, tile, borders_apart, str(device))
    plan = _device_plans.get(key)
    if plan is None:
        # The plan is constant data: made with real tensors even while torch.export or torch.onnx traces (their
        # fake tensors could not be read back into indices, and must not stay in the caches).
        with _disable_current_modes():
            plan = _plan_2d_cpu(height, width, kernel_size, dilation, *tile, borders_apart)
            if device.type != "cpu":
                plan = _to_device(plan, device)
        if len(_device_plans) > 256:
            _device_plans.clear()
        _device_plans[key] = plan
    return plan
