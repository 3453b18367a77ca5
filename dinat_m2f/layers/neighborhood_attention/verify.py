"""The first-use check of the automatic choice: before it runs `flex` for a new kind of call, flex and `tiled` run
on a small random input of that kind and are compared; a kind whose check fails runs `tiled` from then on.

FlexAttention is compiled per device, dtype and shape, through Triton on CUDA: an older GPU, a Triton version,
bfloat16 on a card without it, or the NaN that PyTorch issue 153799 reports in its backward (block mask, score_mod,
lengths that are not multiples of 128) would otherwise stop a run or, worse, let it go on with wrong numbers.

A kind is what can change the kernels FlexAttention builds: device, dtype, kernel size, dilation, map-size class
(`map_class`: how the H*W positions fill blocks of 128), head dim, RPB or not, and forward or training. The probe is
the smallest map of the kind's class (batch 1, 2 heads, the kind's head dim), drawn from a private generator so the
global random state is untouched; a training kind also compares the gradients of q, k, v and rpb. An exception, a
non-finite value or a relative difference beyond the dtype's tolerance fails the check: one warning names the
backend, the reason and the shapes. The device type plays no part in these rules.

The check runs eagerly, never while a graph is traced (torch.compile, torch.export, jit.trace: it would be traced
into the graph) nor on fake tensors: there the automatic choice stands unchecked. `passes` is thread-safe: a kind
is checked once, other threads wait for its verdict.
"""
from __future__ import annotations

import logging
import threading
import time
from types import ModuleType
from typing import NamedTuple

import torch

from .flex import BLOCK

logger = logging.getLogger(__name__)

# Largest relative difference (norm of the difference over the norm of tiled's) allowed in any compared tensor.
# Two correct backends differ by rounding; measured on CPU: about 2e-3 (forward) and 5e-3 (gradients) in bfloat16,
# 3e-4 / 7e-4 in float16, 1e-6 in float32. float32 leaves room for TF32 products on CUDA. A wrong window or bias
# slot is off by tenths or more.
TOLERANCES = {torch.float32: 1e-2, torch.float16: 1e-2, torch.bfloat16: 5e-2}
PROBE_HEADS = 2


class Kind(NamedTuple):
    """One kind of call, checked once."""
    device: str
    dtype: torch.dtype
    kernel_size: int
    dilation: int
    map_class: str
    head_dim: int
    rpb: bool
    training: bool

    def __str__(self) -> str:
        return (f"{self.device}, {self.dtype}, kernel {self.kernel_size}, dilation {self.dilation}, "
                f"{self.map_class}, head dim {self.head_dim}, {'with' if self.rpb else 'without'} rpb, "
                f"{'training' if self.training else 'forward'}")


def map_class(height: int, width: int) -> str:
    """How H*W positions fill FlexAttention's blocks of 128: one partial block, whole blocks, or a partial last one."""
    positions = height * width
    if positions % BLOCK == 0:
        return "whole blocks"
    return "one partial block" if positions < BLOCK else "partial last block"


def kind_of(q: torch.Tensor, kernel_size: int, dilation: int, rpb: torch.Tensor | None, needs_grad: bool) -> Kind:
    return Kind(str(q.device), q.dtype, kernel_size, dilation, map_class(q.shape[2], q.shape[3]), q.shape[-1],
                rpb is not None, needs_grad)


def probe_map(kind: Kind) -> tuple[int, int]:
    """(H, W) of the kind's probe: the fewest positions of the kind's map-size class, each side at least the window
    (every class is reached within BLOCK positions of it)."""
    window = kind.kernel_size * kind.dilation
    sides = range(window, window + BLOCK + 1)
    return min(((height, width) for height in sides for width in sides
                if height <= width and map_class(height, width) == kind.map_class),
               key=lambda size: size[0] * size[1])


def probe_inputs(kind: Kind) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({"q", "k", "v"[, "rpb"]}, the output's gradient) of the kind's probe, q scaled as the layer scales it."""
    height, width = probe_map(kind)
    generator = torch.Generator().manual_seed(0)
    shape = (1, PROBE_HEADS, height, width, kind.head_dim)
    inputs = {"q": torch.randn(shape, generator=generator) * kind.head_dim ** -0.5,
              "k": torch.randn(shape, generator=generator), "v": torch.randn(shape, generator=generator)}
    if kind.rpb:
        size = 2 * kind.kernel_size - 1
        inputs["rpb"] = torch.randn(PROBE_HEADS, size, size, generator=generator)
    grad_out = torch.randn(shape, generator=generator)
    return ({name: t.to(kind.device, kind.dtype) for name, t in inputs.items()},
            grad_out.to(kind.device, kind.dtype))


def outputs_and_grads(backend: ModuleType, inputs: dict[str, torch.Tensor], grad_out: torch.Tensor, kind: Kind
                      ) -> dict[str, torch.Tensor]:
    """{"out"[, "grad_q", "grad_k", "grad_v", "grad_rpb"]} of one backend's na2d on the probe."""
    leaves = {name: t.detach().requires_grad_(kind.training) for name, t in inputs.items()}
    with torch.set_grad_enabled(kind.training):
        out = backend.na2d(leaves["q"], leaves["k"], leaves["v"], kind.kernel_size, kind.dilation,
                           leaves.get("rpb"), 0.0)
        results = {"out": out}
        if kind.training:
            grads = torch.autograd.grad(out, list(leaves.values()), grad_out)
            results.update((f"grad_{name}", grad) for name, grad in zip(leaves, grads))
    return {name: t.detach() for name, t in results.items()}


def check(candidate: ModuleType, reference: ModuleType, kind: Kind) -> str | None:
    """Why `candidate` fails the check of this kind against `reference`, every problem found; None: it passes."""
    inputs, grad_out = probe_inputs(kind)
    try:
        results = outputs_and_grads(candidate, inputs, grad_out, kind)
    except Exception as error:  # compiler and kernel failures come in many types (Inductor, Triton, CUDA)
        lines = str(error).strip().splitlines()
        return f"raised {type(error).__name__}" + (f": {lines[0]}" if lines else "")
    expected = outputs_and_grads(reference, inputs, grad_out, kind)
    tolerance = TOLERANCES[kind.dtype]
    problems = []
    for name, value in results.items():
        nonfinite = int((~torch.isfinite(value)).sum())
        if nonfinite:
            problems.append(f"{nonfinite} non-finite values in {name}")
            continue
        ref = expected[name].double()
        difference = float((value.double() - ref).norm() / ref.norm().clamp_min(1e-30))
        if not difference <= tolerance:
            problems.append(f"{name} differs from {reference.NAME!r} by {difference:.3g} (relative; "
                            f"{kind.dtype} allows {tolerance:g})")
    return "; ".join(problems) or None


_verdicts: dict[Kind, str | None] = {}  # kind -> None (passed) or why it failed
_lock = threading.Lock()


def passes(candidate: ModuleType, reference: ModuleType, kind: Kind, call_shape: tuple[int, ...]) -> bool:
    """Whether `candidate` may run this kind: checked against `reference` the first time, the verdict kept."""
    if kind not in _verdicts:
        with _lock:
            if kind not in _verdicts:
                _verdicts[kind] = _check_and_log(candidate, reference, kind, call_shape)
    return _verdicts[kind] is None


def _check_and_log(candidate: ModuleType, reference: ModuleType, kind: Kind, call_shape: tuple[int, ...]
                   ) -> str | None:
    start = time.perf_counter()
    reason = check(candidate, reference, kind)
    height, width = probe_map(kind)
    probe = f"random q, k, v of shape {(1, PROBE_HEADS, height, width, kind.head_dim)}"
    if kind.rpb:
        probe += f" and rpb {(PROBE_HEADS, 2 * kind.kernel_size - 1, 2 * kind.kernel_size - 1)}"
    if reason is None:
        logger.info("neighborhood attention: %r passed its first-use check against %r for %s (%s, %.2f s)",
                    candidate.NAME, reference.NAME, kind, probe, time.perf_counter() - start)
    else:
        logger.warning("neighborhood attention: backend %r failed its first-use check against %r for %s (called "
                       "with q of shape %s; checked on %s): %s. %r runs this kind from now on; force a backend "
                       "with na2d(backend=...), na_backend() or $DINAT_M2F_NA_BACKEND.", candidate.NAME,
                       reference.NAME, kind, tuple(call_shape), probe, reason, reference.NAME)
    return reason
