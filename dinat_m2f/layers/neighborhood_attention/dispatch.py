"""Which backend runs `na2d`: the backend table, the automatic choice and the forced backend.

Every backend is one module with the same two functions: `na2d(q, k, v, kernel_size, dilation, rpb, dropout_p)`
and `why_not(q, rpb, dropout_p, needs_grad) -> str | None`, which says why it cannot run these inputs (a phrase
completing "backend 'name' ...", e.g. "has no backward on CPU"; None: it can). The automatic choice walks the
priority row of the inputs' device (the "exporting" row while torch.export or torch.onnx traces) and takes the
first backend that can run them; the first time it would run a backend of CHECKED for a kind of call, it checks
that backend against its fallback (verify.py) and takes the fallback for that kind if the check fails, or if a
later call of that kind fails to compile (dynamo compiles again for a new map size). A backend
is forced by the `backend=` argument of `na2d`, then the `na_backend()` context manager, then the environment
variable DINAT_M2F_NA_BACKEND; a forced backend is never checked, and one that cannot run the inputs is a
ValueError saying why. The choice is logged once per (backend, device, dtype).
Adding a backend: its module, and its row in BACKENDS (and in PRIORITY to be chosen automatically).
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

import torch

from . import export, flex, natten, tiled, verify

logger = logging.getLogger(__name__)

BACKENDS = {backend.NAME: backend for backend in (tiled, flex, natten, export)}
# Tried in this order by the automatic choice; devices without a row use DEFAULT_PRIORITY.
PRIORITY = {
    "exporting": ("export",),  # standard operators only: no custom op in an exported graph
    "cuda": ("natten", "flex", "tiled"),  # NATTEN's fused kernels where there is no RPB, else FlexAttention
}
DEFAULT_PRIORITY = ("tiled",)  # CPU and other devices (FlexAttention on CPU is slower and has no backward)
# Automatic choices checked against a fallback on first use per kind of call (verify.py): backend -> fallback.
CHECKED = {"flex": "tiled"}
BACKEND_ENV = "DINAT_M2F_NA_BACKEND"
_forced_backend: list[str] = []
_logged_choices: set[tuple] = set()


@contextlib.contextmanager
def na_backend(name: str) -> Iterator[None]:
    """Force a neighborhood-attention backend (a name of BACKENDS, or "auto") inside the block."""
    _check_backend_name(name, "na_backend")
    _forced_backend.append(name)
    try:
        yield
    finally:
        _forced_backend.pop()


def _check_backend_name(name: str, where: str) -> None:
    if name not in BACKENDS and name != "auto":
        raise ValueError(f"{where}: unknown neighborhood attention backend {name!r}; "
                         f"choose from {tuple(BACKENDS) + ('auto',)}")


def is_exporting() -> bool:
    """True while torch.export (also under torch.onnx's dynamo exporter) or the TorchScript ONNX exporter traces."""
    # torch 2.5 has no torch.compiler.is_exporting (and exporting needs torch >= 2.8 here anyway)
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return exporting() or torch.onnx.is_in_onnx_export()


def is_tracing(q: torch.Tensor) -> bool:
    """True while a graph is traced (torch.compile, torch.export, jit.trace) or q is a fake tensor: no values to
    check, and a check would be traced into the graph."""
    return (torch.compiler.is_compiling() or is_exporting() or torch.jit.is_tracing()
            or torch._subclasses.fake_tensor.is_fake(q))


def automatic_backend(q: torch.Tensor, rpb: torch.Tensor | None, dropout_p: float, needs_grad: bool) -> str:
    """The first backend of the inputs' priority row that can run them."""
    row = PRIORITY["exporting"] if is_exporting() else PRIORITY.get(q.device.type, DEFAULT_PRIORITY)
    for name in row:
        if BACKENDS[name].why_not(q, rpb, dropout_p, needs_grad) is None:
            return name
    # Unreachable while every row ends in a backend that runs everything.
    raise RuntimeError(f"no neighborhood attention backend of {row} runs these inputs")


def select_backend(q: torch.Tensor, rpb: torch.Tensor | None, dropout_p: float, requested: str | None = None, *,
                   kernel_size: int, dilation: int) -> str:
    """The backend for these inputs and window: the request (argument, then context manager, then env var), else
    `automatic_backend`, checked on first use per kind where it is in CHECKED (except while tracing). A forced
    backend that cannot run these inputs is a ValueError saying why."""
    return choose_backend(q, rpb, dropout_p, requested, kernel_size=kernel_size, dilation=dilation)[0]


def choose_backend(q: torch.Tensor, rpb: torch.Tensor | None, dropout_p: float, requested: str | None = None, *,
                   kernel_size: int, dilation: int) -> tuple[str, verify.Kind | None]:
    """`select_backend`'s choice, and the kind of call when it is a CHECKED backend that passed its check (None
    otherwise): a compile failure of such a call falls back too (`na2d`)."""
    name = requested or (_forced_backend[-1] if _forced_backend else None) or os.environ.get(BACKEND_ENV, "auto")
    _check_backend_name(name, f"backend (argument, na_backend() or ${BACKEND_ENV})")
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or (rpb is not None and rpb.requires_grad))
    checked_kind = None
    if name == "auto":
        name = automatic_backend(q, rpb, dropout_p, needs_grad)
        if name in CHECKED and not is_tracing(q):
            checked_kind = verify.kind_of(q, kernel_size, dilation, rpb, needs_grad)
            if not verify.passes(BACKENDS[name], BACKENDS[CHECKED[name]], checked_kind, q, rpb):
                name, checked_kind = CHECKED[name], None
    else:
        reason = BACKENDS[name].why_not(q, rpb, dropout_p, needs_grad)
        if reason is not None:
            raise ValueError(f"backend {name!r} {reason}")
    choice = (name, q.device.type, q.dtype)
    if choice not in _logged_choices and not torch.compiler.is_compiling():  # logging would break the graph
        _logged_choices.add(choice)
        logger.info("neighborhood attention backend: %s (%s, %s)", name, q.device.type, q.dtype)
    return name, checked_kind
