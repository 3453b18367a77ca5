"""The automatic choice checks flex against tiled on first use per kind of call and falls back to tiled where the
check fails. The rules do not depend on the device type, so they run here on CPU with flex made the CPU's automatic
choice: a flex that raises, one that returns wrong values, one whose backward gives NaN, and the real (correct) one."""
import logging
import re
import threading

import pytest
import torch
from torch._dynamo.exc import BackendCompilerFailed

from dinat_m2f.layers import na2d, na_backend, select_backend
from dinat_m2f.layers.neighborhood_attention import dispatch, flex as na_flex, tiled, verify

LOGGER = "dinat_m2f.layers.neighborhood_attention"
needs_cpu_flex = pytest.mark.skipif(na_flex.flex_unavailable("cpu") is not None,
                                    reason=str(na_flex.flex_unavailable("cpu")))


@pytest.fixture
def flex_first(monkeypatch):
    """flex is the CPU's automatic choice (tiled after it), no kind checked yet."""
    monkeypatch.setattr(na_flex, "_BLOCK_MASK_TAKES_SEQ_LENGTHS", True)
    monkeypatch.setattr(na_flex, "_CPU_KERNEL_COMPILES", True)
    monkeypatch.setitem(dispatch.PRIORITY, "cpu", ("flex", "tiled"))
    monkeypatch.setattr(verify, "_verdicts", {})
    monkeypatch.setattr(dispatch, "_logged_choices", set())
    monkeypatch.delenv(dispatch.BACKEND_ENV, raising=False)


@pytest.fixture
def checks(monkeypatch):
    """The kinds checked, in order (the real check runs)."""
    kinds = []

    def counted(candidate, reference, q, rpb, kernel_size, dilation):
        kinds.append(verify.kind_of(q, kernel_size, dilation, rpb, torch.is_grad_enabled() and q.requires_grad))
        return check(candidate, reference, q, rpb, kernel_size, dilation)

    check = verify.check
    monkeypatch.setattr(verify, "check", counted)
    return kinds


def project_warnings(caplog) -> list[str]:
    """The project's warnings (torch may log its own notices while it compiles, e.g. "No CUDA runtime is found")."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("dinat_m2f")]


def _inputs(shape=(1, 2, 12, 13, 16), kernel=3, dilation=2, seed=3):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=gen) for _ in range(3))
    rpb = torch.randn(shape[1], 2 * kernel - 1, 2 * kernel - 1, generator=gen)
    return q * shape[-1] ** -0.5, k, v, kernel, dilation, rpb


def _run(inputs, training, backend=None):
    """(out, the gradients of q, k, v[, rpb] or ()) of na2d."""
    q, k, v, kernel, dilation, rpb = inputs
    leaves = [t.detach().requires_grad_(training) for t in (q, k, v) + ((rpb,) if rpb is not None else ())]
    with torch.set_grad_enabled(training):
        out = na2d(*leaves[:3], kernel, dilation, *leaves[3:], backend=backend)
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out)) if training else ()
    return out.detach(), grads


def _raises(q, k, v, kernel_size, dilation, rpb, dropout_p):
    raise RuntimeError("triton compilation failed for sm_60\n(a long compiler log)")


def _wrong_bias(q, k, v, kernel_size, dilation, rpb, dropout_p):
    # As a wrong RPB slot would: the bias table read mirrored.
    return tiled.na2d(q, k, v, kernel_size, dilation, rpb.flip(-1), dropout_p)


class _NaNBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


def _nan_backward(q, k, v, kernel_size, dilation, rpb, dropout_p):
    # Right forward, NaN in the gradient of q, as PyTorch issue 153799 reports for FlexAttention.
    return tiled.na2d(_NaNBackward.apply(q), k, v, kernel_size, dilation, rpb, dropout_p)


@pytest.mark.parametrize("fake,training,reason", [
    (_raises, False, r"raised RuntimeError: triton compilation failed for sm_60$"),
    (_wrong_bias, False, r"out differs from 'tiled' by [0-9.]+ \(relative; torch.float32 allows 0.01\)$"),
    (_nan_backward, True, r"\d+ non-finite values in grad_q$"),
])
def test_failing_flex_falls_back_to_tiled_with_one_warning(monkeypatch, caplog, flex_first, checks, fake, training,
                                                           reason):
    monkeypatch.setattr(na_flex, "na2d", fake)
    monkeypatch.setattr(na_flex, "why_not", lambda *args: None)  # as on CUDA: flex has a backward
    inputs = _inputs()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        results = [_run(inputs, training), _run(inputs, training)]
        other_size = _run(_inputs(shape=(1, 2, 14, 14, 16)), training)  # 196 positions: the same kind
    expected = _run(inputs, training, backend="tiled")
    for out, grads in results:
        torch.testing.assert_close(out, expected[0], rtol=0, atol=0)
        torch.testing.assert_close(grads, expected[1], rtol=0, atol=0)
    torch.testing.assert_close(other_size, _run(_inputs(shape=(1, 2, 14, 14, 16)), training, backend="tiled"))
    assert len(checks) == 1
    warnings = project_warnings(caplog)
    assert len(warnings) == 1, warnings
    kind = ("cpu, torch.float32, kernel 3, dilation 2, partial last block, head dim 16, with rpb, "
            + ("training" if training else "forward"))
    assert warnings[0].startswith(f"neighborhood attention: backend 'flex' failed its first-use check against "
                                  f"'tiled' for {kind} (random q, k, v (1, 2, 12, 13, 16), rpb (2, 5, 5), the call's "
                                  f"shapes): ")
    message_reason = warnings[0].split("): ", 1)[1].split(". 'tiled' runs this kind from now on")[0]
    assert re.search(reason, message_reason), message_reason
    assert "neighborhood attention backend: tiled (cpu, torch.float32)" in caplog.text
    assert "backend: flex" not in caplog.text


def _compile_error() -> BackendCompilerFailed:
    """What Inductor raises where a kernel does not compile: InductorError (torch >= 2.7), else dynamo's wrapper."""
    inner = RuntimeError("C++ compile error\n(a long compiler log)")
    try:
        from torch._inductor.exc import InductorError
    except ImportError:
        return BackendCompilerFailed(lambda *args: None, inner)
    return InductorError(inner, None)


def _compiles_the_first_size_only(sizes):
    """A flex whose kernel for the first map size compiles and whose kernel for any other does not, as dynamo
    compiles once more at a new map size (torch 2.14.1's CPU kernel fails there at some shapes)."""
    def fake(q, k, v, kernel_size, dilation, rpb, dropout_p):
        sizes.append(tuple(q.shape[2:4]))
        if sizes[-1] != sizes[0]:
            raise _compile_error()
        return tiled.na2d(q, k, v, kernel_size, dilation, rpb, dropout_p)
    return fake


def test_a_later_call_that_fails_to_compile_falls_back_with_one_warning(monkeypatch, caplog, flex_first, checks):
    sizes = []
    monkeypatch.setattr(na_flex, "na2d", _compiles_the_first_size_only(sizes))
    calls = [_inputs(), _inputs(shape=(1, 2, 14, 14, 16)), _inputs(shape=(1, 2, 15, 14, 16)), _inputs()]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        outputs = [_run(inputs, training=False)[0] for inputs in calls]  # 156, 196, 210 positions: one kind
    for inputs, out in zip(calls, outputs):
        torch.testing.assert_close(out, _run(inputs, False, backend="tiled")[0], rtol=0, atol=0)
    assert len(checks) == 1 and sizes == [(12, 13), (12, 13), (14, 14)]  # the check, the first call, the failure
    warnings = project_warnings(caplog)
    assert warnings == [
        "neighborhood attention: backend 'flex' failed to compile a later call of cpu, torch.float32, kernel 3, "
        "dilation 2, partial last block, head dim 16, with rpb, forward (q, k, v (1, 2, 14, 14, 16), rpb (2, 5, 5)): "
        f"raised {type(_compile_error()).__name__}: RuntimeError: C++ compile error. 'tiled' runs this kind from now "
        "on; force a backend with na2d(backend=...), na_backend() or $DINAT_M2F_NA_BACKEND."]
    assert list(verify._verdicts.values()) == [f"raised {type(_compile_error()).__name__}: RuntimeError: C++ compile "
                                               "error"]


@needs_cpu_flex
def test_the_real_flex_falls_back_where_dynamo_fails_to_compile_a_new_map_size(monkeypatch, caplog, flex_first):
    """The flex backend itself, compiled by dynamo with a compiler that fails from its second graph on: dynamo
    wraps the error (BackendCompilerFailed), the kind falls back with the compiler's own message."""
    from torch.nn.attention.flex_attention import flex_attention

    graphs = []

    def first_graph_only(graph, example_inputs):
        graphs.append(graph)
        if len(graphs) > 1:
            raise RuntimeError("C++ compile error\n(a long compiler log)")
        return graph.forward

    torch._dynamo.reset()
    compiled = torch.compile(flex_attention, backend=first_graph_only)
    monkeypatch.setattr(na_flex, "_compiled_flex", lambda: compiled)
    calls = [_inputs(), _inputs(shape=(1, 2, 14, 14, 16)), _inputs(shape=(1, 2, 15, 14, 16))]
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            outputs = [_run(inputs, training=False)[0] for inputs in calls]
    finally:
        torch._dynamo.reset()
    for inputs, out in zip(calls, outputs):
        torch.testing.assert_close(out, _run(inputs, False, backend="tiled")[0], atol=1e-5, rtol=1e-5)
    assert len(graphs) == 2  # the first size's graph, then the failed one; the third call ran tiled
    (warning,) = project_warnings(caplog)
    assert "failed to compile a later call of cpu, torch.float32, kernel 3, dilation 2, partial last block" in warning
    assert "(q, k, v (1, 2, 14, 14, 16), rpb (2, 5, 5)): raised BackendCompilerFailed: RuntimeError: C++ compile " \
           "error. 'tiled' runs this kind from now on" in warning


@pytest.mark.parametrize("forced", [False, True])
def test_a_kernels_run_time_error_and_a_forced_backends_compile_error_propagate(monkeypatch, flex_first, checks,
                                                                                forced):
    """Only an automatic choice's compile error falls back: a kernel failing while it runs may leave autograd
    half-way, and a forced backend is the caller's choice."""
    sizes = []
    compiles_once = _compiles_the_first_size_only(sizes)

    def fails_at_run_time(q, k, v, kernel_size, dilation, rpb, dropout_p):
        if len(sizes) == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return compiles_once(q, k, v, kernel_size, dilation, rpb, dropout_p)

    monkeypatch.setattr(na_flex, "na2d", compiles_once if forced else fails_at_run_time)
    _run(_inputs(), training=False, backend="flex" if forced else None)
    error = BackendCompilerFailed if forced else RuntimeError
    with pytest.raises(error, match="C\\+\\+ compile error" if forced else "illegal memory access"):
        _run(_inputs(shape=(1, 2, 14, 14, 16)), training=False, backend="flex" if forced else None)
    assert all(verdict is None for verdict in verify._verdicts.values())


def test_forced_flex_still_raises(monkeypatch, flex_first, checks):
    monkeypatch.setattr(na_flex, "na2d", _raises)
    q, k, v, kernel, dilation, rpb = _inputs()
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="triton compilation failed"):
            na2d(q, k, v, kernel, dilation, rpb, backend="flex")
        with na_backend("flex"), pytest.raises(RuntimeError, match="triton compilation failed"):
            na2d(q, k, v, kernel, dilation, rpb)
        monkeypatch.setenv(dispatch.BACKEND_ENV, "flex")
        with pytest.raises(RuntimeError, match="triton compilation failed"):
            na2d(q, k, v, kernel, dilation, rpb)
    assert checks == [] and verify._verdicts == {}


@needs_cpu_flex
def test_correct_flex_passes_and_is_kept_compiling_nothing_more(caplog, flex_first, checks):
    """The real flex on CPU (forward only there), through the layer: the check's inputs are like the call's (rpb a
    Parameter that requires grad, under no_grad), so the check and the calls share one compiled graph."""
    from torch._dynamo.utils import counters

    from dinat_m2f.layers import NeighborhoodAttention2D

    torch.manual_seed(0)
    layer = NeighborhoodAttention2D(32, 2, kernel_size=3, dilation=2).eval()
    x = torch.randn(1, 10, 13, 32)
    torch._dynamo.reset()
    counters.clear()
    with caplog.at_level(logging.INFO, logger=LOGGER), torch.no_grad():
        out, again = layer(x), layer(x)
        with na_backend("tiled"):
            expected = layer(x)
        with na_backend("flex"):
            forced = layer(x)
    assert counters["stats"]["unique_graphs"] == 1
    assert [str(kind) for kind in checks] == [
        "cpu, torch.float32, kernel 3, dilation 2, partial last block, head dim 16, with rpb, forward"]
    assert list(verify._verdicts.values()) == [None]
    assert not project_warnings(caplog)
    assert ("'flex' passed its first-use check against 'tiled' for cpu, torch.float32, kernel 3, dilation 2, partial "
            "last block, head dim 16, with rpb, forward (random q, k, v (1, 2, 10, 13, 16), rpb (2, 5, 5); ") in caplog.text
    assert "neighborhood attention backend: flex (cpu, torch.float32)" in caplog.text
    torch.testing.assert_close(out, forced, rtol=0, atol=0)
    torch.testing.assert_close(again, forced, rtol=0, atol=0)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_cpu_automatic_choice_is_tiled_and_unchecked(monkeypatch, checks):
    """CPU's automatic choice is tiled (FlexAttention there is slower and has no backward): nothing is checked."""
    monkeypatch.setattr(verify, "_verdicts", {})
    inputs = _inputs()
    q, _, _, kernel, dilation, rpb = inputs
    assert select_backend(q, rpb, 0.0, kernel_size=kernel, dilation=dilation) == "tiled"
    q.requires_grad_(True)
    assert select_backend(q, rpb, 0.0, kernel_size=kernel, dilation=dilation) == "tiled"
    for training in (False, True):
        out, grads = _run(inputs, training)
        torch.testing.assert_close(out, _run(inputs, training, backend="tiled")[0], rtol=0, atol=0)
    assert checks == [] and verify._verdicts == {}


def test_each_kind_is_checked_once(monkeypatch, flex_first, checks):
    monkeypatch.setattr(na_flex, "na2d", tiled.na2d)  # a correct flex
    monkeypatch.setattr(na_flex, "why_not", lambda *args: None)
    for shape, dilation, training in [((1, 2, 12, 13, 16), 2, False), ((1, 3, 14, 14, 16), 2, False),  # one kind
                                      ((2, 2, 12, 13, 16), 2, True),  # training
                                      ((1, 2, 12, 13, 16), 1, False),  # another dilation
                                      ((1, 2, 16, 16, 16), 2, False),  # 256 positions: whole blocks
                                      ((1, 2, 6, 7, 16), 2, False),  # 42 positions: one partial block
                                      ((1, 2, 12, 13, 8), 2, False)]:  # another head dim
        q, k, v, kernel, _, rpb = _inputs(shape=shape)
        _run((q, k, v, kernel, dilation, rpb), training)
        _run((q, k, v, kernel, dilation, None), training)  # without rpb: another kind
    described = [(kind.dilation, kind.map_class, kind.head_dim, kind.rpb, kind.training) for kind in checks]
    assert described == [(2, "partial last block", 16, True, False), (2, "partial last block", 16, False, False),
                         (2, "partial last block", 16, True, True), (2, "partial last block", 16, False, True),
                         (1, "partial last block", 16, True, False), (1, "partial last block", 16, False, False),
                         (2, "whole blocks", 16, True, False), (2, "whole blocks", 16, False, False),
                         (2, "one partial block", 16, True, False), (2, "one partial block", 16, False, False),
                         (2, "partial last block", 8, True, False), (2, "partial last block", 8, False, False)]
    assert all(verdict is None for verdict in verify._verdicts.values())


def test_map_classes():
    assert [verify.map_class(h, w) for h, w in [(3, 3), (8, 16), (10, 13), (16, 16), (200, 304), (154, 154)]] == [
        "one partial block", "whole blocks", "partial last block", "whole blocks", "whole blocks",
        "partial last block"]


def test_check_leaves_the_global_random_state_alone(monkeypatch, flex_first):
    monkeypatch.setattr(na_flex, "na2d", _wrong_bias)
    q, k, v, kernel, dilation, rpb = _inputs()
    state = torch.get_rng_state()
    with torch.no_grad():
        na2d(q, k, v, kernel, dilation, rpb)
    assert len(verify._verdicts) == 1
    assert torch.equal(torch.get_rng_state(), state)
    # The stand-ins are the same every time.
    first, second = verify.probe_inputs(q, rpb), verify.probe_inputs(q, rpb)
    assert all(torch.equal(first[0][name], second[0][name]) for name in first[0])
    assert torch.equal(first[1], second[1])


def test_random_stand_ins_look_like_the_call_to_a_compiled_graph():
    """What dynamo guards on (a difference would compile flex anew): shape, dtype, device, requires_grad, Parameter
    or not, inference tensor or not."""
    from torch import nn

    generator = torch.Generator().manual_seed(0)
    rpb = nn.Parameter(torch.zeros(6, 21, 21, dtype=torch.bfloat16))
    for template in (rpb, torch.zeros(2, 3, dtype=torch.float16), torch.zeros(4).requires_grad_()):
        value = verify.random_like(template, generator, scale=0.5)
        assert (type(value), value.shape, value.dtype, value.device, value.requires_grad, value.is_inference()) == (
            type(template), template.shape, template.dtype, template.device, template.requires_grad, False)
        assert value.abs().sum() > 0
    with torch.inference_mode():
        q = torch.zeros(1, 2, 12, 13, 16)
        probe, grad_out = verify.probe_inputs(q, rpb)
    assert [probe[name].is_inference() for name in ("q", "k", "v", "rpb")] == [True, True, True, False]
    assert isinstance(probe["rpb"], nn.Parameter) and probe["rpb"].requires_grad
    assert 0.2 < probe["q"].std() < 0.3 and 0.9 < probe["k"].std() < 1.1  # q scaled by head dim ** -0.5


def test_concurrent_first_calls_check_once(monkeypatch, flex_first, checks):
    started = threading.Barrier(4)
    calls = []

    def slow_flex(*args):
        calls.append(threading.get_ident())
        threading.Event().wait(0.2)  # the others arrive while the check runs
        return tiled.na2d(*args)

    monkeypatch.setattr(na_flex, "na2d", slow_flex)
    inputs = _inputs()
    outputs = [None] * 4

    def worker(number):
        started.wait()
        outputs[number] = _run(inputs, False)[0]

    threads = [threading.Thread(target=worker, args=(number,)) for number in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(checks) == 1 and list(verify._verdicts.values()) == [None]
    assert len(calls) == 1 + 4  # the probe, then each thread's own call
    expected = _run(inputs, False, backend="tiled")[0]
    assert all(torch.equal(out, expected) for out in outputs)


def test_no_check_while_compiling(monkeypatch, flex_first, checks):
    """torch.compile traces the automatic choice without a check (it would be traced into the graph) and without a
    graph break; an eager call afterwards checks the kind."""
    monkeypatch.setattr(na_flex, "na2d", tiled.na2d)
    q, k, v, kernel, dilation, rpb = _inputs()

    def attend(q, k, v, rpb):
        return na2d(q, k, v, kernel, dilation, rpb)

    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(attend)(q, k, v, rpb)
        compiled = torch.compile(attend, backend="eager", fullgraph=True)(q, k, v, rpb)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert checks == [] and verify._verdicts == {}
        eager = attend(q, k, v, rpb)
    assert len(checks) == 1
    torch.testing.assert_close(compiled, eager)


def test_no_check_on_fake_tensors(monkeypatch, flex_first, checks):
    # Shape propagation (fake tensors, here on a CUDA device without a GPU) has no values to check.
    from torch._subclasses.fake_tensor import FakeTensorMode

    from dinat_m2f.layers.neighborhood_attention import natten as natten_backend

    monkeypatch.setattr(natten_backend, "natten_na2d", lambda: None)
    with FakeTensorMode():
        q = torch.empty(1, 2, 12, 12, 32, device="cuda", dtype=torch.bfloat16)
        rpb = torch.empty(2, 5, 5, device="cuda", dtype=torch.bfloat16)
        assert select_backend(q, rpb, 0.0, kernel_size=3, dilation=2) == "flex"
    assert checks == [] and verify._verdicts == {}


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_check_under_activation_checkpointing(monkeypatch, flex_first, checks, use_reentrant):
    """The first call of a kind inside torch.utils.checkpoint: the probe's backward must not recompute the
    checkpointed layer (which would call na2d inside the check); gradients are those without checkpointing."""
    from torch.utils.checkpoint import checkpoint

    from dinat_m2f.layers import NeighborhoodAttention2D

    monkeypatch.setattr(na_flex, "na2d", tiled.na2d)  # a correct flex
    monkeypatch.setattr(na_flex, "why_not", lambda *args: None)
    torch.manual_seed(0)
    layer = NeighborhoodAttention2D(32, 2, kernel_size=3, dilation=2)
    x = torch.randn(1, 12, 13, 32, requires_grad=True)
    grads = []

    def train_step():
        checkpoint(layer, x, use_reentrant=use_reentrant).sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in layer.parameters()])

    step = threading.Thread(target=train_step, daemon=True)
    step.start()
    step.join(timeout=120)
    assert not step.is_alive(), "the check waited for itself"
    x.grad = None
    layer.zero_grad()
    layer(x).sum().backward()
    expected = [x.grad] + [p.grad for p in layer.parameters()]
    torch.testing.assert_close(grads[0], expected)
    # Reentrant checkpointing runs the forward without grad, then again with grad inside the backward.
    assert [kind.training for kind in checks] == ([False, True] if use_reentrant else [True])
    assert all(verdict is None for verdict in verify._verdicts.values())
