"""The random states a training step depends on (Python's ``random``, NumPy's global RNG, torch's CPU and
CUDA generators), captured as plain values a weights-only checkpoint can hold, and restored.

- :func:`capture_rng_states` / :func:`restore_rng_states`: saved with every checkpoint, per rank;
- :func:`preserved_rng_states`: a block (evaluation during training) that leaves the states as it found them;
- :func:`seeded_rng`: a block (one sample's augmentation) seeded from a key, leaving the states unchanged,
  so that its randomness depends on the key only, not on which process or worker runs it.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Dict, Iterator, Sequence

import numpy as np
import torch

__all__ = ["capture_rng_states", "preserved_rng_states", "restore_rng_states", "seeded_rng"]


def capture_rng_states() -> Dict[str, Any]:
    """This process's random states, as tensors, tuples and numbers (loadable with weights_only=True)."""
    version, keys, gauss_next = random.getstate()
    kind, mt_keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states = {
        "python": (version, torch.tensor(keys, dtype=torch.int64), gauss_next),
        "numpy": (kind, torch.from_numpy(mt_keys.astype(np.int64)), position, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()  # this process's device
    return states


def restore_rng_states(states: Dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_states` returned (the CUDA state only where CUDA is in use)."""
    version, keys, gauss_next = states["python"]
    random.setstate((version, tuple(keys.tolist()), gauss_next))
    kind, mt_keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, mt_keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


@contextlib.contextmanager
def preserved_rng_states() -> Iterator[None]:
    states = capture_rng_states()
    try:
        yield
    finally:
        restore_rng_states(states)


@contextlib.contextmanager
def seeded_rng(key: Sequence[int]) -> Iterator[None]:
    """Seed Python, NumPy and torch (CPU) from ``key`` (e.g. (seed, sample position)) for the block."""
    python_seed, numpy_seed, torch_seed = np.random.SeedSequence(list(key)).generate_state(3, dtype=np.uint64)
    with preserved_rng_states():
        random.seed(int(python_seed))
        np.random.seed(int(numpy_seed) % 2**32)
        torch.manual_seed(int(torch_seed))
        yield
