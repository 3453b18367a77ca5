"""tools/benchmark_na.py: input sizes on its command line (N, HxW, several) and their stage shapes."""
import argparse
import subprocess
import sys

import pytest
from project_paths import REPO, import_script

benchmark_na = import_script(REPO / "tools" / "benchmark_na.py", "benchmark_na")


def test_image_sizes_square_and_rectangular():
    assert benchmark_na._image_sizes("640") == [(640, 640)]
    assert benchmark_na._image_sizes("1024,800x1216") == [(1024, 1024), (800, 1216)]


@pytest.mark.parametrize("text", ["800x", "x800", "1024;800", "800x1216x3", "big"])
def test_bad_image_sizes_are_named(text):
    with pytest.raises(argparse.ArgumentTypeError, match="--image"):
        benchmark_na._image_sizes(text)


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout")
def test_before_imports_a_revisions_tiled_op_beside_this_one(capsys):
    import torch

    from dinat_m2f.layers import na2d

    rows = [("tiny", 12, 13, 2, 1), ("too small for the window", 8, 8, 2, 1)]
    benchmark_na._compare_revisions("HEAD", rows, rounds=2, repeats=1, threads=1)
    table = capsys.readouterr().out.splitlines()
    assert table[1].startswith("| map | heads | dilation | forward ms, HEAD | this checkout |")
    assert len(table) == 4 and table[3].startswith("| 12x13 | 2 | 1 | ")  # the small map is left out
    # HEAD's package, loaded under its own name and op namespace, computes what this checkout does.
    import na_HEAD

    q, k, v = (torch.randn(1, 2, 12, 13, 8) for _ in range(3))
    rpb = torch.randn(2, 21, 21)
    assert torch.ops.dinat_m2f_na_HEAD.na2d_tiled is not None
    torch.testing.assert_close(na_HEAD.na2d(q, k, v, 11, 1, rpb, backend="tiled"), na2d(q, k, v, 11, 1, rpb))


def test_kernel_floor_times_exactly_the_tiled_forwards_attention_calls(capsys):
    import torch
    import torch.nn.functional as F

    from dinat_m2f.layers import na2d

    # A map with a group longer than the window (border and middle tiles) and one dilation group per axis of 2.
    qkv = torch.randn(1, 30, 25, 3, 2, 8, generator=torch.Generator().manual_seed(0))
    q, k, v = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)
    rpb = torch.randn(2, 21, 21)
    out = torch.empty(30 * 25, 2, 8)
    for q_blocks, k_blocks, v_blocks, mask, q_index in benchmark_na.kernel_calls(q, k, v, rpb, dilation=2):
        blocks = F.scaled_dot_product_attention(q_blocks, k_blocks, v_blocks, attn_mask=mask, scale=1.0)
        heads, n, size, dim = blocks.shape
        out.index_copy_(0, q_index, blocks.view(heads, n * size, dim).transpose(0, 1))
    expected = na2d(q, k, v, 11, 2, rpb, backend="tiled")
    torch.testing.assert_close(out.view(30, 25, 2, 8).permute(2, 0, 1, 3)[None], expected)

    benchmark_na._kernel_floor([("tiny", 30, 25, 2, 2), ("too small for the window", 8, 8, 2, 1)], repeats=1,
                               threads=1)
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 4 and table[3].startswith("| 30x25 | 2 | 2 | ")
    cells = table[3].strip("|").split("|")
    tiles, exact = float(cells[6]), float(cells[7])
    assert exact == round(2 * 30 * 25 * 121 / 1e6, 1) and tiles >= exact


def test_model_calls_are_dinat_ls_first_call_of_each_kind_in_call_order():
    calls = benchmark_na.model_calls([(1024, 1024), (800, 1216)])
    # 1024: maps 256, 128, 64, 32 fill whole blocks; 800x1216: 200x304 does, 100x152, 50x76, 25x38 do not.
    assert calls == [(256, 256, 6, 32, 11, 1), (256, 256, 6, 32, 11, 14), (128, 128, 12, 32, 11, 4),
                     (128, 128, 12, 32, 11, 7), (64, 64, 24, 32, 11, 2), (64, 64, 24, 32, 11, 3),
                     (100, 152, 12, 32, 11, 1), (100, 152, 12, 32, 11, 4), (100, 152, 12, 32, 11, 7),
                     (50, 76, 24, 32, 11, 2), (50, 76, 24, 32, 11, 3)]
    # A map smaller than the window is padded to it: at 256, stage 1 is 64x64 but dilation 14 needs 154x154.
    assert (154, 154, 6, 32, 11, 14) in benchmark_na.model_calls([(256, 256)])


def test_check_cost_times_each_kind_and_says_what_cannot_run():
    from dinat_m2f.layers.neighborhood_attention import flex

    # In a process of its own, as the tool runs: in a process that compiled flex at other map sizes before (the
    # layer tests), torch 2.14.1 builds a shape-generic CPU kernel that fails to compile at this shape
    # (docs/PERFORMANCE.md), and the first check would no longer be a first.
    code = ("import sys; sys.path.insert(0, 'tools'); import benchmark_na\n"
            "benchmark_na.model_calls = lambda images: [(10, 13, 2, 16, 3, 2)]\n"
            "benchmark_na._check_cost([(40, 52)], ['float32'], 'cpu', training=True, threads=1)")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    table = run.stdout.splitlines()
    assert table[1] == ("| dtype | pass | map | heads | dilation | map class | first check s | again s "
                        "| its tiled part s | verdict |")
    assert len(table) == 6 and table[-1].startswith("all checks: first ")
    unavailable = flex.flex_unavailable("cpu")
    forward = table[3].strip("| ").split(" | ")
    assert forward[:6] == ["float32", "forward", "10x13", "2", "2", "partial last block"]
    assert forward[9] == ("passed" if unavailable is None else f"not run: flex cannot run here: {unavailable}; "
                          "use 'tiled'")
    assert table[4] == ("| float32 | training | 10x13 | 2 | 2 | partial last block | - | - | - | not run: flex has no "
                        "attention dropout, and no backward on CPU: use 'tiled' |")
