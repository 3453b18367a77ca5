"""torch.compile: the backbone, neighborhood attention included, is captured without a graph break
(dynamo's explain only traces, so this stays fast; compiling the whole model was run by hand)."""
import pytest
import torch
from detectron2.modeling import build_model
from torch.torch_version import TorchVersion

from dinat_m2f.config import load_project_config
from dinat_m2f.layers.neighborhood_attention import flex as na_flex


def _synthetic_model():
    cfg = load_project_config("configs/synthetic/panoptic/dinat_mini.yaml")
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    return build_model(cfg).eval()


# torch 2.7's dynamo does not inline the context that builds a tiling plan with real tensors (one graph break per
# new map size; compiled results are unchanged); 2.14's does. Same assumed 2.8 gate as the flex backend's.
@pytest.mark.skipif(TorchVersion(torch.__version__) < "2.8", reason=f"torch {torch.__version__}: graph break at plan building")
def test_backbone_has_no_graph_break():
    torch._dynamo.reset()
    backbone = _synthetic_model().backbone
    explanation = torch._dynamo.explain(backbone)(torch.randn(1, 3, 96, 128))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_compiled_model_gives_the_same_outputs():
    model = _synthetic_model()
    image = [{"image": torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8), "height": 96, "width": 128}]
    with torch.no_grad():
        expected = model(image)[0]
        compiled = torch.compile(model, backend="eager")(image)[0]
    torch.testing.assert_close(compiled["sem_seg"], expected["sem_seg"])
    assert torch.equal(compiled["panoptic_seg"][0], expected["panoptic_seg"][0])


@pytest.mark.skipif(na_flex.flex_unavailable("cuda") is not None, reason=str(na_flex.flex_unavailable("cuda")))
def test_flex_backend_has_no_graph_break(monkeypatch):
    from dinat_m2f.layers import na2d

    # Traced and run by the eager backend: no CPU kernel is compiled, so this also runs on torch 2.7.
    monkeypatch.setattr(na_flex, "_CPU_KERNEL_COMPILES", True)

    q, k, v = (torch.randn(1, 2, 12, 13, 16) for _ in range(3))
    rpb = torch.randn(2, 5, 5)
    def flex_na(q, k, v, rpb):
        return na2d(q, k, v, 3, 2, rpb, backend="flex")

    with torch.no_grad():  # FlexAttention has no backward on CPU
        explanation = torch._dynamo.explain(flex_na)(q, k, v, rpb)
        compiled = torch.compile(flex_na, backend="eager", fullgraph=True)(q, k, v, rpb)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    # The window layout and BlockMask are constants of the graph, not recomputed in every call.
    traced = [str(node.target) for graph in explanation.graphs for node in graph.graph.nodes]
    assert not any("argsort" in target or "zeros" in target for target in traced), traced
    torch.testing.assert_close(compiled, na2d(q, k, v, 3, 2, rpb, backend="tiled"))
