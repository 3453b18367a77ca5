"""tools/export_model.py and demo/demo.py --onnx / --pt2: a small synthetic model exported to ONNX and to a
torch.export pt2 file writes the same panoptic, instance and semantic results through the demo as the PyTorch
model; the ONNX file holds standard operators only (GridSample for the deformable attention, no custom op),
passes onnx.checker and ONNX Runtime reproduces the PyTorch network within 1e-4.

The model is the demo test's (synthetic panoptic config, random seeded weights, thresholds lowered so that
it returns segments and instances), with a 2-layer decoder and 1 encoder layer to keep exporting quick.
Images are exported at 64x96: inputs of 64x96 and 50x70 pad to exactly that size in the PyTorch model
(SIZE_DIVISIBILITY 32), so both paths see the same tensor.
"""
import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from log_capture import RecordLogs
from project_paths import REPO as ROOT, import_script

from test_demo import CONFIG, demo, demo_opts  # noqa: F401  (the demo test's config, module and options fixture)

from dinat_m2f import Predictor
from dinat_m2f.export import ExportedMaskFormer, MaskFormerNetwork, export_unavailable, load_exported

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.slow,
              pytest.mark.skipif(export_unavailable() is not None, reason=str(export_unavailable()))]

SIZE = (64, 96)
SMALLER = ["MODEL.MASK_FORMER.DEC_LAYERS", "2", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1"]


@pytest.fixture(scope="module")
def export_model():
    return import_script(ROOT / "tools" / "export_model.py", "export_model")


@pytest.fixture(scope="module")
def opts(demo_opts, tmp_path_factory):  # noqa: F811
    """The demo test's options with the smaller decoder, and random weights saved for it."""
    from detectron2.modeling import build_model

    opts = list(demo_opts) + SMALLER
    weights_index = opts.index("MODEL.WEIGHTS") + 1
    cfg = demo.setup_cfg(demo.get_parser().parse_args(["--config-file", str(CONFIG), "--opts", *opts]))
    torch.manual_seed(1)
    weights = tmp_path_factory.mktemp("weights") / "small.pth"
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    opts[weights_index] = str(weights)
    return opts


@pytest.fixture(scope="module")
def exported(export_model, opts, tmp_path_factory):
    folder = tmp_path_factory.mktemp("exported")
    files = {}
    for fmt in ("onnx", "pt2"):
        files[fmt] = folder / f"model.{fmt}"
        status = export_model.main(["--config-file", str(CONFIG), "--format", fmt, "--size", *map(str, SIZE),
                                    "--output", str(files[fmt]), *opts])
        assert status == 0
    return files


@pytest.fixture(scope="module")
def pytorch_model(opts):
    return Predictor(demo.setup_cfg(demo.get_parser().parse_args(["--config-file", str(CONFIG), "--opts", *opts])))


def test_onnx_file_has_standard_operators_only(exported):
    model = onnx.load(exported["onnx"])
    onnx.checker.check_model(model, full_check=True)
    op_types = {node.op_type for node in model.graph.node}
    assert {node.domain for node in model.graph.node} == {""}, "an operator outside the standard ONNX domain"
    assert "GridSample" in op_types  # the pixel decoder's deformable attention
    assert {"NonZero", "ScatterND"}.isdisjoint(op_types)  # no data-dependent shapes
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["pred_logits", "pred_masks"]
    assert not (exported["onnx"].parent / "model.onnx.data").exists()  # weights inside: far below 2 GB


def test_exported_networks_match_pytorch(exported, pytorch_model):
    image = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = MaskFormerNetwork(pytorch_model.model)(image)
    for fmt, path in exported.items():
        network, size = load_exported(path)
        assert size == SIZE
        for got, want in zip(network(image), expected):
            assert got.shape == want.shape
            assert (got - want).abs().max() < 1e-4, fmt


def _write_images(folder: Path) -> None:
    rng = np.random.default_rng(5)
    folder.mkdir()
    for name, (height, width) in {"full.png": SIZE, "padded.png": (50, 70)}.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / name)


def _results(folder: Path) -> dict:
    results = {}
    for path in sorted(folder.iterdir()):
        if path.name.endswith(".json"):
            results[path.name] = json.loads(path.read_text())
        elif path.name.endswith(("_panoptic.png", "_sem_seg.png")):
            results[path.name] = np.asarray(Image.open(path))
    return results


def test_demo_writes_the_same_results_from_exported_files(exported, opts, tmp_path):
    _write_images(tmp_path / "in")
    common = ["--config-file", str(CONFIG), "--input", str(tmp_path / "in"), "--confidence-threshold", "0.0"]
    assert demo.main([*common, "--output", str(tmp_path / "pytorch"), "--opts", *opts]) == 0
    expected = _results(tmp_path / "pytorch")
    assert len(expected) == 8  # 2 images x (panoptic PNG + JSON, instances JSON, semantic PNG)
    assert sum(len(r["segments_info"]) for n, r in expected.items() if n.endswith("_panoptic.json")) > 0
    for fmt, path in exported.items():
        out = tmp_path / fmt
        # MODEL.WEIGHTS names no file: the results can only come from the exported file.
        exported_opts = [*opts, "MODEL.WEIGHTS", str(tmp_path / "missing.pth")]
        assert demo.main([*common, f"--{fmt}", str(path), "--output", str(out), "--opts", *exported_opts]) == 0
        got = _results(out)
        assert sorted(got) == sorted(expected)
        for name, want in expected.items():
            if name.endswith("_instances.json"):
                assert len(got[name]) == len(want) > 0
                for record, reference in zip(got[name], want):
                    assert record["score"] == pytest.approx(reference["score"], abs=1e-4), (fmt, name)
                    assert {k: v for k, v in record.items() if k != "score"} == \
                        {k: v for k, v in reference.items() if k != "score"}, (fmt, name)
            elif isinstance(want, np.ndarray):
                np.testing.assert_array_equal(got[name], want, err_msg=f"{fmt} {name}")
            else:
                assert got[name] == want, (fmt, name)


def test_an_image_larger_than_the_exported_size_is_a_clear_error(exported, pytorch_model):
    model = ExportedMaskFormer(exported["onnx"], pytorch_model.cfg)
    image = torch.zeros(3, SIZE[0] + 1, SIZE[1], dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"65x96 .* does not fit .*model.onnx, exported for 64x96"):
        model([{"image": image}])


def test_the_demo_skips_an_image_larger_than_the_exported_size_and_does_the_others(exported, opts, tmp_path):
    """One image larger than the exported size stopped the whole run (the others were never processed)."""
    _write_images(tmp_path / "in")
    large = tmp_path / "in" / "large.png"  # between full.png and padded.png in the folder's order
    Image.fromarray(np.zeros((SIZE[0] + 16, SIZE[1], 3), np.uint8)).save(large)
    with RecordLogs(logging.getLogger("dinat_m2f.demo")) as logs:
        status = demo.main(["--config-file", str(CONFIG), "--input", str(tmp_path / "in"), "--onnx",
                            str(exported["onnx"]), "--output", str(tmp_path / "out"),
                            "--opts", *opts, "MODEL.WEIGHTS", str(tmp_path / "missing.pth")])
    assert status == 1
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"full.png", "padded.png", "full_sem_seg.png", "padded_sem_seg.png"} <= written
    assert not any(name.startswith("large") for name in written)
    assert any(f"Skipping {large}: An image of 80x96" in m and "exported for 64x96" in m for m in logs.messages)
