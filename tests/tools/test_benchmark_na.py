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
