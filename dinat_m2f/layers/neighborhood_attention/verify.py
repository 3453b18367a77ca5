"""The first-use check of the automatic choice: before it runs `flex` for a new kind of call, flex and `tiled` run
on random inputs like that call's and are compared; a kind whose check fails runs `tiled` from then on.

FlexAttention is compiled per device, dtype and shape, through Triton on CUDA: an older GPU, a Triton version,
bfloat16 on a card without it, or the NaN that PyTorch issue 153799 reports in its backward (block mask, score_mod,
lengths that are not multiples of 128) would otherwise stop a run or, worse, let it go on with wrong numbers.

A kind is what can change the kernels FlexAttention builds: device, dtype, kernel size, dilation, map-size class
(`map_class`: how the H*W positions fill blocks of 128), head dim, RPB or not, and forward or training. The check
runs on the first call of a kind, with random inputs that a compiled graph cannot tell from the call's (shape, dtype,
device, requires_grad, Parameter or not, inference or not): flex then compiles nothing the call would not, checks
the very kernel the call runs, and spends none of dynamo's recompile limit (past it flex would fall back to its
unfused path, which holds all (H*W)^2 scores). The values come from a private generator, so the global random state
is untouched; a training kind also compares the gradients of q, k, v and rpb. An exception, a non-finite value or a
relative difference beyond the dtype's tolerance fails the check: one warning names the backend, the reason and
the shapes. The device type plays no part in these rules.

A check covers the kernel compiled for the call's shapes. At a later map size dynamo compiles once more, a kernel
for any size; where that compile fails (torch 2.14.1's CPU kernel at some shapes, docs/PERFORMANCE.md), the call
runs the fallback and the kind is marked failed with the same warning (`fail_later`). Errors of a compiled kernel
while it runs are not caught: they may leave autograd half-way, and they are the caller's to see.

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
from torch import nn

from .flex import BLOCK

logger = logging.getLogger(__name__)

# Largest relative difference (norm of the difference over the norm of tiled's) allowed in any compared tensor.
# Two correct backends differ by rounding; measured on CPU: about 2e-3 (forward) and 5e-3 (gradients) in bfloat16,
# 3e-4 / 7e-4 in float16, 1e-6 in float32. float32 leaves room for TF32 products on CUDA. A wrong window or bias
# slot is off by tenths or more.
TOLERANCES = {torch.float32: 1e-2, torch.float16: 1e-2, torch.bfloat16: 5e-2}


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


def random_like(template: torch.Tensor, generator: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Normal values of standard deviation `scale` in a tensor that a compiled graph's guards cannot tell from
    `template`: shape, dtype, device, requires_grad, Parameter or not, inference tensor or not."""
    with torch.inference_mode(template.is_inference()):
        value = torch.randn(template.shape, generator=generator, dtype=template.dtype, device=template.device) * scale
        if isinstance(template, nn.Parameter):
            return nn.Parameter(value, requires_grad=template.requires_grad)
        return value.requires_grad_(template.requires_grad)


def probe_inputs(q: torch.Tensor, rpb: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Random stand-ins for a call's q, k, v (all like q) and rpb, and an output gradient, always the same for the
    same shapes; q is scaled as the layer scales it."""
    generator = torch.Generator(device=q.device).manual_seed(0)
    probe = {"q": random_like(q, generator, q.shape[-1] ** -0.5), "k": random_like(q, generator),
             "v": random_like(q, generator)}
    if rpb is not None:
        probe["rpb"] = random_like(rpb, generator)
    return probe, torch.randn(q.shape, generator=generator, dtype=q.dtype, device=q.device)


def outputs_and_grads(backend: ModuleType, inputs: dict[str, torch.Tensor], grad_out: torch.Tensor,
                      kernel_size: int, dilation: int) -> dict[str, torch.Tensor]:
    """{"out"[, "grad_q", ...]} of one backend's na2d: with grad mode on, the gradients of the inputs that require
    one for the output gradient `grad_out`."""
    out = backend.na2d(inputs["q"], inputs["k"], inputs["v"], kernel_size, dilation, inputs.get("rpb"), 0.0)
    results = {"out": out}
    leaves = {name: t for name, t in inputs.items() if t.requires_grad}
    if out.requires_grad and leaves:
        grads = torch.autograd.grad(out, list(leaves.values()), grad_out)
        results.update((f"grad_{name}", grad) for name, grad in zip(leaves, grads))
    return {name: t.detach() for name, t in results.items()}


def describe(error: Exception) -> str:
    """'raised <type>: <first line of its message>' (compiler errors carry pages of log after it); dynamo's
    wrapper of a compile error shows the error it wraps."""
    inner = getattr(error, "inner_exception", None)
    message = f"{type(inner).__name__}: {inner}" if isinstance(inner, Exception) else str(error)
    lines = message.strip().splitlines()
    return f"raised {type(error).__name__}" + (f": {lines[0]}" if lines else "")


def check(candidate: ModuleType, reference: ModuleType, q: torch.Tensor, rpb: torch.Tensor | None, kernel_size: int,
          dilation: int) -> str | None:
    """Why `candidate` fails the check against `reference` on random stand-ins for a call's inputs (`probe_inputs`),
    every problem found; None: it passes."""
    probe, grad_out = probe_inputs(q, rpb)
    # Plain saved tensors: under non-reentrant activation checkpointing the probe's backward would otherwise
    # recompute the checkpointed layer, which calls na2d again inside this check.
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        try:
            results = outputs_and_grads(candidate, probe, grad_out, kernel_size, dilation)
        except Exception as error:  # compiler and kernel failures come in many types (Inductor, Triton, CUDA)
            return describe(error)
        expected = outputs_and_grads(reference, probe, grad_out, kernel_size, dilation)
    tolerance = TOLERANCES[q.dtype]
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
                            f"{value.dtype} allows {tolerance:g})")
    return "; ".join(problems) or None


_verdicts: dict[Kind, str | None] = {}  # kind -> None (passed) or why it failed
_lock = threading.RLock()  # reentrant: a call of na2d inside a check must not wait for itself


def passes(candidate: ModuleType, reference: ModuleType, kind: Kind, q: torch.Tensor, rpb: torch.Tensor | None
           ) -> bool:
    """Whether `candidate` may run this kind: checked against `reference` on the first call of the kind (its q and
    rpb), the verdict kept."""
    if kind not in _verdicts:
        with _lock:
            if kind not in _verdicts:
                _verdicts[kind] = _check_and_log(candidate, reference, kind, q, rpb)
    return _verdicts[kind] is None


def fail_later(candidate: ModuleType, reference: ModuleType, kind: Kind, q: torch.Tensor, rpb: torch.Tensor | None,
               error: Exception) -> None:
    """A later call of a kind that passed its check failed to compile (a new map size makes dynamo compile a kernel
    for any size): `reference` runs the kind from now on, with one warning."""
    with _lock:
        first = _verdicts.get(kind) is None
        _verdicts[kind] = describe(error)
    if first:
        _warn_fallback(candidate, reference, f"failed to compile a later call of {kind} ({_shapes(q, rpb)})",
                       _verdicts[kind])


def _shapes(q: torch.Tensor, rpb: torch.Tensor | None) -> str:
    return f"q, k, v {tuple(q.shape)}" + ("" if rpb is None else f", rpb {tuple(rpb.shape)}")


def _warn_fallback(candidate: ModuleType, reference: ModuleType, what: str, reason: str) -> None:
    logger.warning("neighborhood attention: backend %r %s: %s. %r runs this kind from now on; force a backend with "
                   "na2d(backend=...), na_backend() or $DINAT_M2F_NA_BACKEND.", candidate.NAME, what, reason,
                   reference.NAME)


def _check_and_log(candidate: ModuleType, reference: ModuleType, kind: Kind, q: torch.Tensor,
                   rpb: torch.Tensor | None) -> str | None:
    start = time.perf_counter()
    reason = check(candidate, reference, q, rpb, kind.kernel_size, kind.dilation)
    if reason is None:
        logger.info("neighborhood attention: %r passed its first-use check against %r for %s (random %s; %.2f s)",
                    candidate.NAME, reference.NAME, kind, _shapes(q, rpb), time.perf_counter() - start)
    else:
        _warn_fallback(candidate, reference, f"failed its first-use check against {reference.NAME!r} for {kind} "
                       f"(random {_shapes(q, rpb)}, the call's shapes)", reason)
    return reason
