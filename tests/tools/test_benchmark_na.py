"""tools/benchmark_na.py: input sizes on its command line (N, HxW, several) and their stage shapes."""
import argparse

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
