"""What the datasets/prepare_*.py scripts share: their command line and their (optionally parallel) job loop."""
from __future__ import annotations

import argparse
from multiprocessing import Pool
from typing import Callable, List, Optional, Sequence, TypeVar

from .paths import datasets_root

Job = TypeVar("Job")
Result = TypeVar("Result")


def parse_prepare_args(description: str, argv: Optional[List[str]] = None) -> argparse.Namespace:
    """--root (default $DETECTRON2_DATASETS or ./datasets) and --workers (processes, default 4)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=datasets_root())
    parser.add_argument("--workers", type=int, default=4)
    return parser.parse_args(argv)


def run_jobs(function: Callable[[Job], Result], jobs: Sequence[Job], workers: int) -> List[Result]:
    """[function(job) for job in jobs], in `workers` processes when more than one."""
    if workers > 1:
        with Pool(workers) as pool:
            return pool.map(function, jobs, chunksize=32)
    return [function(job) for job in jobs]
