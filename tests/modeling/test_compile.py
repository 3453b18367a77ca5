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


def _synthetic_cfg(*opts):
    cfg = load_project_config("configs/synthetic/panoptic/dinat_mini.yaml", list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_compile_switch_compiles_in_place_and_keeps_state_dict_names():
    torch.manual_seed(0)
    plain = build_model(_synthetic_cfg()).eval()
    torch.manual_seed(0)
    compiled = build_model(_synthetic_cfg("MODEL.COMPILE.ENABLED", "True", "MODEL.COMPILE.BACKEND", "eager")).eval()
    # Module.compile: the same modules, the same names (no "_orig_mod."), so checkpoints load both ways.
    assert list(compiled.state_dict()) == list(plain.state_dict())
    compiled.load_state_dict(plain.state_dict(), strict=True)
    assert compiled.backbone._compiled_call_impl is not None and compiled.sem_seg_head._compiled_call_impl is not None
    assert plain.backbone._compiled_call_impl is None
    image = [{"image": torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8), "height": 96, "width": 128}]
    torch._dynamo.reset()
    with torch.no_grad():
        expected, result = plain(image)[0], compiled(image)[0]
    torch.testing.assert_close(result["sem_seg"], expected["sem_seg"])
    assert torch.equal(result["panoptic_seg"][0], expected["panoptic_seg"][0])


def test_compile_switch_names_an_unknown_module():
    with pytest.raises(ValueError, match=r"MODEL.COMPILE.MODULES: 'pixel_decoder' is not a submodule.*backbone"):
        build_model(_synthetic_cfg("MODEL.COMPILE.ENABLED", "True", "MODEL.COMPILE.MODULES", "['pixel_decoder']"))


def test_channels_last_switch_changes_layout_not_results():
    torch.manual_seed(0)
    plain = build_model(_synthetic_cfg()).eval()
    torch.manual_seed(0)
    channels_last = build_model(_synthetic_cfg("MODEL.CHANNELS_LAST", "True")).eval()
    convs = [m.weight for m in channels_last.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert any(not w.is_contiguous() for w in convs)  # a 1x1 kernel is both; a 3x3 one changed layout
    image = [{"image": torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8), "height": 96, "width": 128}]
    with torch.no_grad():
        expected, result = plain(image)[0], channels_last(image)[0]
    torch.testing.assert_close(result["sem_seg"], expected["sem_seg"], atol=1e-5, rtol=1e-5)
    assert torch.equal(result["panoptic_seg"][0], expected["panoptic_seg"][0])
