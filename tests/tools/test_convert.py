"""tools/convert-pretrained-dinat-model-to-d2.py on checkpoints in the published ImageNet DiNAT format."""
import logging
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from safetensors.torch import save_file
from torch import nn

from dinat_m2f.checkpoint import SafeDetectionCheckpointer
from dinat_m2f.config import get_project_cfg
from dinat_m2f.modeling.backbone.dinat import D2DiNAT, DiNAT
from log_capture import RecordLogs
from project_paths import REPO, import_script


TOOL = REPO / "tools" / "convert-pretrained-dinat-model-to-d2.py"
convert_tool = import_script(TOOL, "convert_dinat")

# A small DiNAT: the same module structure (and key names) as the published ones.
EMBED_DIM, DEPTHS, HEADS = 16, [1, 1, 2, 1], [1, 2, 2, 4]
DILATIONS = [[1], [1], [1, 2], [1]]
NUM_IMAGENET_CLASSES = 10


def imagenet_state_dict(kernel_size: int = 7) -> dict:
    """What an ImageNet DiNAT classifier checkpoint holds: the backbone's keys without the per-level
    output norms (norm0..norm3), plus the classifier's final `norm` and `head`."""
    torch.manual_seed(0)
    backbone = DiNAT(embed_dim=EMBED_DIM, depths=DEPTHS, num_heads=HEADS, kernel_size=kernel_size,
                     dilations=DILATIONS, drop_path_rate=0.0)
    state = {k: v for k, v in backbone.state_dict().items() if not k.startswith(("norm0", "norm1", "norm2", "norm3"))}
    width = EMBED_DIM * 8
    state.update({"norm.weight": torch.rand(width), "norm.bias": torch.rand(width),
                  "head.weight": torch.randn(NUM_IMAGENET_CLASSES, width),
                  "head.bias": torch.randn(NUM_IMAGENET_CLASSES)})
    return state


class WithBackbone(nn.Module):
    """Holds D2DiNAT under `backbone.`, as the MaskFormer meta-architecture does."""

    def __init__(self, kernel_size: int):
        super().__init__()
        cfg = get_project_cfg()
        cfg.MODEL.DINAT.EMBED_DIM, cfg.MODEL.DINAT.DEPTHS, cfg.MODEL.DINAT.NUM_HEADS = EMBED_DIM, DEPTHS, HEADS
        cfg.MODEL.DINAT.KERNEL_SIZE, cfg.MODEL.DINAT.DILATIONS = kernel_size, DILATIONS
        cfg.MODEL.DINAT.DROP_PATH_RATE = 0.0
        self.backbone = D2DiNAT(cfg, ShapeSpec(channels=3))


def load_into_backbone(weights: Path, kernel_size: int):
    model = WithBackbone(kernel_size)
    initial_norms = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("backbone.norm")}
    checkpointer = SafeDetectionCheckpointer(model)
    with RecordLogs(checkpointer.logger) as logs:
        checkpointer.load(str(weights))
    return model, initial_norms, "\n".join(logs.messages)


@pytest.mark.parametrize("wrapper,out_suffix", [("model", ".pkl"), ("state_dict", ".pth"), (None, ".safetensors")])
def test_converted_weights_load_with_only_the_output_norms_missing(tmp_path, caplog, wrapper, out_suffix):
    state = imagenet_state_dict()
    source = tmp_path / "dinat_small_in1k.pth"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 300}, source)
    target = tmp_path / f"dinat_small_d2{out_suffix}"

    with caplog.at_level(logging.INFO, logger=convert_tool.logger.name):
        convert_tool.main([str(source), str(target)])
    report = caplog.text
    assert "head.weight" in report and "norm.weight" in report  # dropped
    assert "norm0, norm1, norm2, norm3" in report  # initialized by the backbone

    model, initial_norms, load_log = load_into_backbone(target, kernel_size=7)
    loaded = model.state_dict()
    for key, value in state.items():
        if key.startswith(("head.", "norm.")):
            continue
        assert torch.equal(loaded["backbone." + key], value), key
    for key, value in initial_norms.items():
        assert torch.equal(loaded[key], value), key
    missing = load_log.split("not found in the checkpoint:\n")[1]
    assert missing.splitlines() == [f"backbone.norm{i}.{{bias, weight}}" for i in range(4)]
    assert "not used by the model" not in load_log
    assert "incompatible shapes" not in load_log


def test_pkl_output_is_detectron2_style(tmp_path):
    source = tmp_path / "in.pth"
    torch.save({"model": imagenet_state_dict()}, source)
    convert_tool.main([str(source), str(tmp_path / "out.pkl"), "--kernel-size", "11"])
    with open(tmp_path / "out.pkl", "rb") as f:
        data = pickle.load(f)
    assert set(data) == {"model", "__author__", "matching_heuristics"} and data["matching_heuristics"] is True
    assert all(k.startswith("backbone.") for k in data["model"])
    assert data["model"]["backbone.levels.0.blocks.0.attn.rpb"].shape == (HEADS[0], 21, 21)
    assert type(data["model"]["backbone.patch_embed.proj.0.weight"]).__module__ == "numpy"


def test_kernel_size_resizes_rpb_bicubically_and_loads_into_a_kernel_11_backbone(tmp_path):
    state = imagenet_state_dict(kernel_size=7)
    constant_key = "levels.2.blocks.1.attn.rpb"
    state[constant_key] = torch.full_like(state[constant_key], 0.25)
    source = tmp_path / "in.pth"
    torch.save({"model": state}, source)
    target = tmp_path / "out.pth"
    convert_tool.main([str(source), str(target), "--kernel-size", "11"])

    model, _, load_log = load_into_backbone(target, kernel_size=11)
    assert "incompatible shapes" not in load_log and "not used by the model" not in load_log
    loaded = model.state_dict()
    rpb_keys = [k for k in state if k.endswith(".rpb")]
    assert len(rpb_keys) == sum(DEPTHS)
    for key in rpb_keys:
        expected = F.interpolate(state[key][None], size=(21, 21), mode="bicubic", align_corners=False)[0]
        assert loaded["backbone." + key].shape == (state[key].shape[0], 21, 21)
        torch.testing.assert_close(loaded["backbone." + key], expected, rtol=0, atol=0)
    torch.testing.assert_close(loaded["backbone." + constant_key], torch.full((HEADS[2], 21, 21), 0.25))
    # bicubic, not bilinear: the two differ on a random table
    key = rpb_keys[0]
    bilinear = F.interpolate(state[key][None], size=(21, 21), mode="bilinear", align_corners=False)[0]
    assert not torch.allclose(loaded["backbone." + key], bilinear)
    # everything but the rpb tables is copied unchanged
    assert torch.equal(loaded["backbone.levels.1.blocks.0.attn.qkv.weight"], state["levels.1.blocks.0.attn.qkv.weight"])


def test_same_kernel_size_keeps_rpb_unchanged():
    state = imagenet_state_dict(kernel_size=7)
    converted, report = convert_tool.convert(state, kernel_size=7)
    assert report["resized"] == []
    assert torch.equal(converted["backbone.levels.0.blocks.0.attn.rpb"], state["levels.0.blocks.0.attn.rpb"])


def test_not_a_dinat_checkpoint_is_rejected_with_the_file_name(tmp_path):
    source = tmp_path / "resnet50.safetensors"
    save_file({"conv1.weight": torch.zeros(4, 3, 7, 7), "fc.weight": torch.zeros(10, 4)}, str(source))
    with pytest.raises(SystemExit, match="resnet50.safetensors.*conv1.weight"):
        convert_tool.main([str(source), str(tmp_path / "out.pkl")])
