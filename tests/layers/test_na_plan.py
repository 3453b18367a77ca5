"""The tiling plan of the tiled and export backends: its docstring's worked example, and its invariant (each
tile's key run covers all its queries' windows) over many axes."""
import pytest

from dinat_m2f.layers.neighborhood_attention.plan import _axis_plan_cpu, default_tile
from dinat_m2f.layers.neighborhood_attention.window import axis_neighbors


def test_worked_example_of_the_docstring():
    # L = 10, k = 3, d = 2, tile = 2 (plan.py's docstring, the spec's example 7(b)).
    plan = _axis_plan_cpu(10, 3, 2, 2)
    assert (plan.tile, plan.region) == (2, 4)
    classes = [(c.query_index.tolist(), c.key_index.tolist(), c.valid.int().tolist(), c.allowed.int().tolist(),
                c.bias_index.tolist()) for c in plan.classes]
    assert classes == [
        ([0, 2, 1, 3], [0, 2, 4, 6, 1, 3, 5, 7], [1, 1, 1, 1], [[1, 1, 1, 0], [1, 1, 1, 0]], [[2, 3, 4, 4], [1, 2, 3, 4]]),
        ([4, 6, 5, 7], [2, 4, 6, 8, 3, 5, 7, 9], [1, 1, 1, 1], [[1, 1, 1, 0], [0, 1, 1, 1]], [[1, 2, 3, 4], [0, 1, 2, 3]]),
        ([8, 8, 9, 9], [2, 4, 6, 8, 3, 5, 7, 9], [1, 0, 1, 0], [[0, 1, 1, 1], [0, 1, 1, 1]], [[0, 0, 1, 2], [0, 0, 1, 2]]),
    ]


@pytest.mark.parametrize("kernel_size", [3, 5, 7, 11])
def test_every_tile_reads_exactly_its_queries_windows(kernel_size):
    # The invariant: window starts never decrease along a group, so a tile's windows are one run of at most
    # tile + k - 1 keys; the mask keeps exactly each query's window, with the window rule's RPB slots.
    for dilation in (1, 2, 3, 5):
        for length in range(kernel_size * dilation, kernel_size * dilation + 3 * dilation + 4):
            keys, slots = axis_neighbors(length, kernel_size, dilation)
            for tile in sorted({2, 4, default_tile(-(-length // dilation), kernel_size)}):
                plan = _axis_plan_cpu(length, kernel_size, dilation, tile)
                assert plan.region <= plan.tile + kernel_size - 1
                seen = set()
                for c in plan.classes:
                    queries = c.query_index.view(c.num_tiles, plan.tile)
                    runs = c.key_index.view(c.num_tiles, plan.region)
                    for t in range(c.num_tiles):
                        for a in range(plan.tile):
                            query = int(queries[t, a])
                            if not c.valid[t * plan.tile + a]:
                                continue
                            seen.add(query)
                            kept = runs[t][c.allowed[a]]
                            assert kept.tolist() == keys[query].tolist(), (length, kernel_size, dilation, tile, query)
                            assert c.bias_index[a][c.allowed[a]].tolist() == slots[query].tolist()
                assert seen == set(range(length))


@pytest.mark.parametrize("kernel_size", [3, 5, 11])
def test_default_plan_reads_exactly_each_window_with_border_runs_apart(kernel_size):
    # The default cut (borders apart): tiles of several sizes, each query in exactly one slot, border tiles
    # reading exactly k keys, and the same invariant as above.
    for dilation in (1, 2, 3, 14):
        for length in range(kernel_size * dilation, kernel_size * dilation + 2 * dilation + 9):
            keys, slots = axis_neighbors(length, kernel_size, dilation)
            tile = default_tile(-(-length // dilation), kernel_size)
            plan = _axis_plan_cpu(length, kernel_size, dilation, tile, True)
            queries_seen = []
            for c in plan.classes:
                tile_len, run_len = c.allowed.shape
                assert run_len <= tile_len + kernel_size - 1 and bool(c.valid.all())
                if bool(c.allowed.all()):
                    assert run_len == kernel_size  # a border run: every query has the same window
                runs = c.key_index.view(c.num_tiles, run_len)
                for t, tile_queries in enumerate(c.query_index.view(c.num_tiles, tile_len).tolist()):
                    for a, query in enumerate(tile_queries):
                        queries_seen.append(query)
                        assert runs[t][c.allowed[a]].tolist() == keys[query].tolist(), (length, dilation, query)
                        assert c.bias_index[a][c.allowed[a]].tolist() == slots[query].tolist()
            assert sorted(queries_seen) == list(range(length))


def test_short_interiors_join_the_border_tiles():
    # k = 11, d = 1: a 15-position axis is 6 members sharing the first window, 3 between, 6 sharing the last;
    # the 3 are split between the border tiles (8 + 7). Seven between (19 positions) stay a tile of their own.
    def tile_sizes(length):
        plan = _axis_plan_cpu(length, 11, 1, default_tile(length, 11), True)
        return sorted(c.allowed.shape[0] for c in plan.classes for _ in range(c.num_tiles))

    assert tile_sizes(15) == [7, 8]
    assert tile_sizes(19) == [6, 6, 7]
    assert tile_sizes(12) == [6, 6]  # no interior
