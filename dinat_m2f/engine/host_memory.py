"""Reuse of freed host memory on Linux with glibc.

By default glibc's malloc maps every allocation above its mmap threshold (which adapts up to 32 MB) afresh and
unmaps it when freed, and returns the heap's free top to the kernel above 128 KB. A forward pass at 640x640
frees and allocates many tensors of 20-300 MB, so each is faulted in and zeroed by the kernel again: sigmoid of
a 40x640x640 tensor takes 47 ms into a new tensor against 11 ms into an existing one on a 2-core EPYC VM, and a
DiNAT-L image spent 7-20% of its CPU time in the kernel there (0.3-1 M page faults). Raising both thresholds keeps
freed memory in the process for the next allocation, as tcmalloc and jemalloc do. The cost: the peak grew by 7-9%
(freed blocks do not always fit the next request), and memory freed after the peak stays with the process.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Allocations of at least 1 GB are still mapped, and returned when freed; a free heap top above 1 GB is trimmed.
# (mallopt takes a C int.)
MMAP_THRESHOLD = TRIM_THRESHOLD = 1 << 30
# glibc's own settings of the same thresholds: where the user gave one, theirs are kept.
GLIBC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
# Set to 1 to leave glibc's malloc as it is (its defaults: setting either threshold also stops the mmap
# threshold's adaptation, so MALLOC_TRIM_THRESHOLD_=131072 would not restore them).
DEFAULT_MALLOC = "DINAT_M2F_DEFAULT_MALLOC"


def reuse_freed_memory() -> bool:
    """Keep freed host memory for reuse instead of returning it to the kernel (glibc on Linux only). Nothing
    changes elsewhere, where the environment sets one of GLIBC_SETTINGS, or with DINAT_M2F_DEFAULT_MALLOC=1.
    Returns whether it was applied. Called by train_net.py, the demo and tools/benchmark_model.py."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if os.environ.get(DEFAULT_MALLOC, "0") not in ("", "0"):
        logger.info("Host memory: glibc's malloc left as it is (%s)", DEFAULT_MALLOC)
        return False
    given = [name for name in GLIBC_SETTINGS if name in os.environ]
    if given:
        logger.info("Host memory: glibc settings from the environment (%s) kept", ", ".join(given))
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    applied = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if applied:
        logger.info("Host memory: freed memory kept for reuse (glibc's mmap and trim thresholds at 1 GB)")
    else:
        logger.warning("Host memory: glibc's mallopt refused the thresholds; freed memory is returned as usual")
    return applied
