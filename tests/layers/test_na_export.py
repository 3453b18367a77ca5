"""The export backend: the tiled backend's numbers in standard operators, chosen automatically while torch.export
or torch.onnx traces, with no custom op in the exported graph."""
import random

import onnx
import onnxruntime
import pytest
import torch

from dinat_m2f.layers import NeighborhoodAttention2D, na2d, na2d_reference, na_backend

from test_na import _random_case

from dinat_m2f.export import export_unavailable  # noqa: E402

needs_export = pytest.mark.skipif(export_unavailable() is not None, reason=str(export_unavailable()))


def test_export_backend_matches_tiled_forward_and_backward():
    rng = random.Random(5)
    for _ in range(8):
        q, k, v, kernel, dilation, rpb = _random_case(rng, dtype=torch.float32)
        leaves = [t.requires_grad_(True) for t in (q, k, v) + ((rpb,) if rpb is not None else ())]
        out = na2d(q, k, v, kernel, dilation, rpb, backend="export")
        tiled = na2d(q, k, v, kernel, dilation, rpb, backend="tiled")
        label = f"shape {tuple(q.shape)} k={kernel} d={dilation} rpb={rpb is not None}"
        assert (out - tiled).abs().max() < 1e-5, label
        grad_out = torch.randn_like(out)
        grads = torch.autograd.grad((out * grad_out).sum(), leaves)
        tiled_grads = torch.autograd.grad((tiled * grad_out).sum(), leaves)
        for g, tg in zip(grads, tiled_grads):
            assert (g - tg).abs().max() < 1e-5, label


def test_export_backend_is_exact_in_float64_and_runs_half_types():
    rng = random.Random(6)
    q, k, v, kernel, dilation, rpb = _random_case(rng)
    ref = na2d_reference(q, k, v, kernel, dilation, rpb)
    assert (na2d(q, k, v, kernel, dilation, rpb, backend="export") - ref).abs().max() < 1e-10
    out = na2d(*(t.bfloat16() for t in (q, k, v)), kernel, dilation, None if rpb is None else rpb.bfloat16(),
               backend="export")
    assert out.dtype == torch.bfloat16 and (out.double() - ref).abs().max() < 6e-2


def _layer_and_input():
    torch.manual_seed(0)
    return NeighborhoodAttention2D(16, 2, 3, dilation=2).eval(), torch.randn(1, 10, 11, 16)


def _call_targets(program: torch.export.ExportedProgram) -> set:
    return {str(node.target) for node in program.graph.nodes if node.op == "call_function"}


@needs_export
def test_torch_export_picks_the_export_backend():
    layer, x = _layer_and_input()
    program = torch.export.export(layer, (x,))
    targets = _call_targets(program)
    assert not any("dinat_m2f" in t for t in targets), targets  # no custom op
    assert {"aten.index_select.default", "aten.matmul.default", "aten.softmax.int"} <= targets
    torch.testing.assert_close(program.module()(x), layer(x), atol=1e-5, rtol=1e-5)
    # Forcing still wins while exporting: the tiled backend is its custom op.
    with na_backend("tiled"):
        assert "dinat_m2f.na2d_tiled.default" in _call_targets(torch.export.export(layer, (x,)))


@needs_export
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_export_has_only_standard_operators(tmp_path):
    layer, x = _layer_and_input()
    path = tmp_path / "na.onnx"
    torch.onnx.export(layer, (x,), path, input_names=["x"], dynamo=True)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert {node.domain for node in model.graph.node} == {""}  # the standard ONNX domain only
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), layer(x).detach(), atol=1e-5, rtol=1e-5)
