"""Converting released ImageNet checkpoints (dinat_m2f.checkpoint.convert and its command line,
tools/convert-pretrained-model-to-d2.py) for every --arch, on checkpoints generated in each reference's layout:
NAT/DiNAT plain state_dicts, Swin (microsoft/Swin-Transformer) and ShiftViT (SPACH) {"model": state_dict}, each
with its classifier head, final norm and (Swin) attn_mask buffers, and CoAtNet written by timm itself; the
converted files load into the backbones with only the output norms missing and reproduce the references."""
import json
import logging
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from safetensors.torch import save_file
from torch import nn

from conftest import load_fixture
from dinat_m2f.checkpoint import SafeDetectionCheckpointer, read_safetensors_file
from dinat_m2f.checkpoint.convert import ARCHS, convert
from dinat_m2f.config import get_project_cfg
from dinat_m2f.modeling.backbone import dinat, shiftvit, swin
from dinat_m2f.modeling.backbone.coatnet import VARIANTS as COATNET_VARIANTS, D2CoAtNet
from dinat_m2f.modeling.backbone.dinat import D2DiNAT, DiNAT
from log_capture import RecordLogs
from project_paths import FIXTURES, REPO, import_script

tool = import_script(REPO / "tools" / "convert-pretrained-model-to-d2.py", "convert_pretrained_model_to_d2")

OUTPUT_NORM_KEYS = [f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias")]


def test_archs_table_names_every_layout():
    assert sorted(ARCHS) == ["coatnet", "dinat", "nat", "shiftvit", "swin"]
    assert {arch.backbone for arch in ARCHS.values()} == {"D2DiNAT", "D2SwinTransformer", "D2ShiftViT", "D2CoAtNet"}


# NAT / DiNAT: the published ImageNet DiNAT format
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


class WithDiNAT(nn.Module):
    """Holds D2DiNAT under `backbone.`, as the MaskFormer meta-architecture does."""

    def __init__(self, kernel_size: int):
        super().__init__()
        cfg = get_project_cfg()
        cfg.MODEL.DINAT.EMBED_DIM, cfg.MODEL.DINAT.DEPTHS, cfg.MODEL.DINAT.NUM_HEADS = EMBED_DIM, DEPTHS, HEADS
        cfg.MODEL.DINAT.KERNEL_SIZE, cfg.MODEL.DINAT.DILATIONS = kernel_size, DILATIONS
        cfg.MODEL.DINAT.DROP_PATH_RATE = 0.0
        self.backbone = D2DiNAT(cfg, ShapeSpec(channels=3))


def load_into_backbone(weights: Path, kernel_size: int):
    model = WithDiNAT(kernel_size)
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

    with caplog.at_level(logging.INFO, logger=tool.logger.name):
        tool.main(["--arch", "dinat", str(source), str(target)])
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
    tool.main(["--arch", "dinat", str(source), str(tmp_path / "out.pkl"), "--kernel-size", "11"])
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
    tool.main(["--arch", "dinat", str(source), str(target), "--kernel-size", "11"])

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
    converted, report = convert(state, "dinat", kernel_size=7)
    assert report["resized"] == []
    assert torch.equal(converted["backbone.levels.0.blocks.0.attn.rpb"], state["levels.0.blocks.0.attn.rpb"])


def test_not_a_dinat_checkpoint_is_rejected_with_the_file_name(tmp_path):
    source = tmp_path / "resnet50.safetensors"
    save_file({"conv1.weight": torch.zeros(4, 3, 7, 7), "fc.weight": torch.zeros(10, 4)}, str(source))
    with pytest.raises(SystemExit, match="resnet50.safetensors.*conv1.weight"):
        tool.main(["--arch", "dinat", str(source), str(tmp_path / "out.pkl")])


@pytest.fixture(scope="module")
def manifests():
    return json.loads((FIXTURES / "backbone_manifests.json").read_text())


def with_classifier(backbone_state: dict, channels: int, classes: int = 10) -> dict:
    """An ImageNet classifier's state_dict: the backbone's keys without norm0..norm3, plus `norm` and `head`."""
    state = {k: v for k, v in backbone_state.items() if k not in OUTPUT_NORM_KEYS}
    state.update({"norm.weight": torch.rand(channels), "norm.bias": torch.rand(channels),
                  "head.weight": torch.randn(classes, channels), "head.bias": torch.randn(classes)})
    return state


def load_through_checkpointer(backbone: nn.Module, path) -> tuple[nn.Module, list[str], str]:
    """Load `path` with the project's checkpointer into a model holding `backbone` under `backbone.`, as the
    MaskFormer meta-architecture does; returns the model, the missing-key lines and the whole log."""
    model = nn.Module()
    model.backbone = backbone
    checkpointer = SafeDetectionCheckpointer(model)
    with RecordLogs(checkpointer.logger) as logs:
        checkpointer.load(str(path))
    missing = [m.split(":\n", 1)[1].splitlines() for m in logs.messages if "not found in the checkpoint" in m]
    return model, (missing[0] if missing else []), "\n".join(logs.messages)


def assert_loaded_strictly_but_the_output_norms(model, missing, log, source_state):
    assert missing == [f"backbone.norm{i}.{{bias, weight}}" for i in range(4)]
    assert "not used by the model" not in log and "incompatible shapes" not in log
    loaded = model.state_dict()
    for key, value in source_state.items():
        assert torch.equal(loaded["backbone." + key], value), key


# NAT / DiNAT: plain state_dicts; Small and Base carry layer scale (gamma1, gamma2)

def small_nat(layer_scale=1e-5, kernel_size=7):
    torch.manual_seed(0)
    return dinat.from_reference_config(dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], mlp_ratio=2.0,
                                            kernel_size=kernel_size, drop_path_rate=0.0, layer_scale=layer_scale))


def test_nat_checkpoint_with_layer_scale_loads_strictly_and_keeps_its_gammas(tmp_path, caplog):
    state = with_classifier(small_nat().state_dict(), channels=128)
    generator = torch.Generator().manual_seed(1)
    gammas = [k for k in state if ".gamma" in k]
    assert len(gammas) == 2 * 5
    state.update({k: 0.5 + 0.5 * torch.rand(state[k].shape, generator=generator) for k in gammas})
    source, target = tmp_path / "nat_small_in1k_224.pth", tmp_path / "nat_small.pkl"
    torch.save(state, source)  # NAT's published files are plain state_dicts
    with caplog.at_level(logging.INFO, logger=tool.logger.name):
        tool.main(["--arch", "nat", str(source), str(target)])
    assert "head.weight, head.bias" in caplog.text and "norm.weight, norm.bias" in caplog.text
    assert "initialized by D2DiNAT itself: norm0, norm1, norm2, norm3" in caplog.text

    model, missing, log = load_through_checkpointer(small_nat(), target)
    classifier = ("head.", "norm.")
    assert_loaded_strictly_but_the_output_norms(model, missing, log,
                                                {k: v for k, v in state.items() if not k.startswith(classifier)})
    # the same file in a backbone without layer scale: the gammas are reported, not lost silently
    _, _, log = load_through_checkpointer(small_nat(layer_scale=None), target)
    assert "not used by the model" in log and "gamma1" in log


def test_nat_rpb_resized_to_kernel_11_loads_into_a_kernel_11_backbone(tmp_path):
    state = with_classifier(small_nat().state_dict(), channels=128)
    source, target = tmp_path / "nat.pth", tmp_path / "nat_k11.safetensors"
    torch.save(state, source)
    tool.main(["--arch", "nat", str(source), str(target), "--kernel-size", "11"])
    model, missing, log = load_through_checkpointer(small_nat(kernel_size=11), target)
    kept = {k: v for k, v in state.items() if not k.startswith(("head.", "norm.")) and not k.endswith(".rpb")}
    assert_loaded_strictly_but_the_output_norms(model, missing, log, kept)
    rpb = model.state_dict()["backbone.levels.2.blocks.1.attn.rpb"]
    expected = F.interpolate(state["levels.2.blocks.1.attn.rpb"][None], size=(21, 21), mode="bicubic")[0]
    torch.testing.assert_close(rpb, expected, rtol=0, atol=0)
    assert read_safetensors_file(str(target))["matching_heuristics"] is True


# ShiftViT: {"model": sd} of SPACH, here the reference fixture's weights with a classifier

def test_shiftvit_checkpoint_converts_loads_strictly_and_reproduces_the_reference(tmp_path):
    reference = load_fixture("backbone_shiftvit_reference.pt")
    state = with_classifier(reference["state_dict"], channels=128)
    source, target = tmp_path / "shiftvit_tiny.pth", tmp_path / "shiftvit_tiny.pkl"
    torch.save({"model": state, "epoch": 300}, source)
    tool.main(["--arch", "shiftvit", str(source), str(target)])
    with open(target, "rb") as f:
        data = pickle.load(f)
    assert set(data) == {"model", "__author__", "matching_heuristics"} and data["matching_heuristics"] is True
    assert type(data["model"]["backbone.patch_embed.proj.weight"]).__module__ == "numpy"

    backbone = shiftvit.from_reference_config(reference["config"])
    model, missing, log = load_through_checkpointer(backbone, target)
    assert_loaded_strictly_but_the_output_norms(
        model, missing, log, {k: v for k, v in state.items() if not k.startswith(("head.", "norm."))})
    stage_outputs = {}
    for i, layer in enumerate(backbone.layers):
        layer.register_forward_hook(lambda module, args, out, i=i: stage_outputs.update({f"res{i + 2}": out[1]}))
    with torch.no_grad():
        backbone.eval()(reference["image"])
    for name, expected in reference["stage_outputs"].items():
        assert (stage_outputs[name] - expected).abs().max() <= 1e-4, name


# Swin: official microsoft/Swin-Transformer classification checkpoints

def official_swin_state_dict(embed_dim, depths, num_heads, window, img_size, classes, device="cpu") -> dict:
    """Key names and shapes of microsoft/Swin-Transformer's SwinTransformer state_dict (random values): the
    shifted blocks of stages whose map is larger than the window carry an `attn_mask` buffer."""
    def t(*shape):
        return torch.randn(shape, device=device)

    state = {"patch_embed.proj.weight": t(embed_dim, 3, 4, 4), "patch_embed.proj.bias": t(embed_dim),
             "patch_embed.norm.weight": t(embed_dim), "patch_embed.norm.bias": t(embed_dim)}
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        dim, resolution = embed_dim * 2 ** i, img_size // 4 // 2 ** i
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            state.update({p + "norm1.weight": t(dim), p + "norm1.bias": t(dim),
                          p + "attn.relative_position_bias_table": t((2 * window - 1) ** 2, heads),
                          p + "attn.relative_position_index": swin.relative_position_index(window).to(device),
                          p + "attn.qkv.weight": t(3 * dim, dim), p + "attn.qkv.bias": t(3 * dim),
                          p + "attn.proj.weight": t(dim, dim), p + "attn.proj.bias": t(dim),
                          p + "norm2.weight": t(dim), p + "norm2.bias": t(dim),
                          p + "mlp.fc1.weight": t(4 * dim, dim), p + "mlp.fc1.bias": t(4 * dim),
                          p + "mlp.fc2.weight": t(dim, 4 * dim), p + "mlp.fc2.bias": t(dim)})
            if j % 2 == 1 and resolution > window:
                state[p + "attn_mask"] = t((resolution // window) ** 2, window ** 2, window ** 2)
        if i < len(depths) - 1:
            state.update({f"layers.{i}.downsample.reduction.weight": t(2 * dim, 4 * dim),
                          f"layers.{i}.downsample.norm.weight": t(4 * dim),
                          f"layers.{i}.downsample.norm.bias": t(4 * dim)})
    channels = embed_dim * 2 ** (len(depths) - 1)
    state.update({"norm.weight": t(channels), "norm.bias": t(channels),
                  "head.weight": t(classes, channels), "head.bias": t(classes)})
    return state


SWIN_OFFICIAL = {  # manifest name: (embed_dim, depths, heads, window, pretraining size, classes)
    "swin_tiny": (96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 224, 1000),
    "swin_large_384": (192, [2, 2, 18, 2], [6, 12, 24, 48], 12, 384, 21841),
}


@pytest.mark.parametrize("name", sorted(SWIN_OFFICIAL))
def test_swin_official_checkpoint_converts_to_the_d2_names_and_shapes(manifests, name):
    manifest = manifests[name]
    official = official_swin_state_dict(*SWIN_OFFICIAL[name], device="meta")
    d2_keys = {**manifest["param_keys"], **{k: shape for k, (shape, _) in manifest["persistent_buffers"].items()}}
    # the generated checkpoint is the official one: the D2 keys without norm0..3, plus what the manifest drops
    expected_official = {k: v for k, v in d2_keys.items() if k not in manifest["not_in_official_checkpoint"]}
    assert {k: list(v.shape) for k, v in official.items()} == {**expected_official, **manifest["dropped"]}

    converted, report = convert(official, "swin")
    assert sorted(report["dropped"]) == sorted(manifest["dropped"])
    assert {k.removeprefix("backbone."): list(v.shape) for k, v in converted.items()} == expected_official
    assert sorted(report["initialized_by_backbone"]) == sorted({k.split(".")[0] for k in manifest["not_in_official_checkpoint"]})


def test_swin_window_7_to_12_resizes_each_heads_grid_bicubically_and_rebuilds_the_index(tmp_path, manifests):
    official = official_swin_state_dict(16, [2, 2, 2, 2], [1, 2, 4, 8], 7, 224, classes=10)
    constant = "layers.1.blocks.0.attn.relative_position_bias_table"
    official[constant] = torch.full_like(official[constant], 0.25)
    source, target = tmp_path / "swin_tiny_patch4_window7_224.pth", tmp_path / "swin_w12.pth"
    torch.save({"model": official}, source)
    tool.main(["--arch", "swin", str(source), str(target), "--window-size", "12"])
    converted = torch.load(target, weights_only=True)
    assert converted["matching_heuristics"] is True
    converted = converted["model"]

    tables = [k for k in official if k.endswith("relative_position_bias_table")]
    assert len(tables) == 8
    for key in tables:
        table, heads = official[key], official[key].shape[1]
        resized = converted["backbone." + key]
        assert resized.shape == (23 * 23, heads)
        for h in range(heads):  # each head's 13x13 grid of offsets, resized on its own
            grid = F.interpolate(table[:, h].reshape(1, 1, 13, 13), size=(23, 23), mode="bicubic", align_corners=False)
            torch.testing.assert_close(resized[:, h], grid.flatten(), rtol=0, atol=0)
        index = converted["backbone." + key.replace("relative_position_bias_table", "relative_position_index")]
        assert index.shape == (144, 144) and index.dtype == torch.int64
        assert torch.equal(index, swin.relative_position_index(12))
    torch.testing.assert_close(converted["backbone." + constant], torch.full((23 * 23, 2), 0.25))
    assert not any(k.endswith("attn_mask") or k.startswith(("backbone.head.", "backbone.norm.")) for k in converted)
    assert torch.equal(converted["backbone.layers.2.blocks.1.mlp.fc1.weight"], official["layers.2.blocks.1.mlp.fc1.weight"])
    # the window-12 shapes are those of Mask2Former's Swin-L 384 (window 12)
    large = manifests["swin_large_384"]["persistent_buffers"]["layers.0.blocks.0.attn.relative_position_index"]
    assert large[0] == list(index.shape)


def test_swin_official_checkpoint_converts_loads_strictly_and_reproduces_the_reference(tmp_path):
    """The Swin fixture's weights written as an official checkpoint (norm0..3 out; final norm, head and
    attn_mask in) convert to exactly the D2 keys and values, load strictly through the checkpointer into
    D2SwinTransformer and reproduce the reference's stage outputs."""
    reference = load_fixture("backbone_swin_reference.pt")
    d2_state = reference["state_dict"]
    official = official_swin_state_dict(16, [2, 2, 2, 2], [1, 2, 4, 8], 7, 224, classes=10)
    assert set(official) - set(d2_state) == {"norm.weight", "norm.bias", "head.weight", "head.bias",
                                             *(f"layers.{i}.blocks.1.attn_mask" for i in range(3))}
    official.update({k: v for k, v in d2_state.items() if k in official})
    source, target = tmp_path / "swin_official.pth", tmp_path / "swin_d2.pkl"
    torch.save({"model": official}, source)
    tool.main(["--arch", "swin", str(source), str(target)])

    backbone = swin.from_reference_config(reference["config"])
    model, missing, log = load_through_checkpointer(backbone, target)
    assert_loaded_strictly_but_the_output_norms(
        model, missing, log, {k: v for k, v in d2_state.items() if k not in OUTPUT_NORM_KEYS})
    stage_outputs = {}  # Swin's stages are channels-last
    for i, layer in enumerate(backbone.layers):
        layer.register_forward_hook(
            lambda module, args, out, i=i: stage_outputs.update({f"res{i + 2}": out[1].permute(0, 3, 1, 2)}))
    with torch.no_grad():
        backbone.eval()(reference["image"])
    for name, expected in reference["stage_outputs"].items():
        assert (stage_outputs[name] - expected).abs().max() <= 1e-4, name


# Bad input

def test_wrong_architecture_and_wrong_options_are_named(tmp_path):
    source = tmp_path / "swin.pth"
    torch.save({"model": official_swin_state_dict(16, [2, 2, 2, 2], [1, 2, 4, 8], 7, 224, classes=10)}, source)
    with pytest.raises(SystemExit, match=r"swin.pth: Not a shiftvit classifier state_dict: unexpected keys \[.*attn\."):
        tool.main(["--arch", "shiftvit", str(source), str(tmp_path / "out.pkl")])
    nat = tmp_path / "nat.pth"
    torch.save(with_classifier(small_nat().state_dict(), channels=128), nat)
    with pytest.raises(SystemExit, match=r"nat.pth: Not a swin classifier state_dict: unexpected keys \[.levels.0.blocks.0.attn.proj.bias"):
        tool.main(["--arch", "swin", str(nat), str(tmp_path / "out.pkl")])
    with pytest.raises(SystemExit, match="swin.pth: --kernel-size does not apply to --arch swin"):
        tool.main(["--arch", "swin", str(source), str(tmp_path / "out.pkl"), "--kernel-size", "11"])
    with pytest.raises(SystemExit, match="out.npz: unknown output format"):
        tool.main(["--arch", "swin", str(tmp_path / "not_read.pth"), str(tmp_path / "out.npz")])
    with pytest.raises(ValueError, match=r"unknown --arch 'vit'; known: \['coatnet', 'dinat', 'nat', 'shiftvit', 'swin'\]"):
        convert({}, "vit")


class _RunsCode:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['CONVERT_MARKER'], 'w').close()",))


@pytest.mark.parametrize("content", ["code", "truncated", "empty"])
def test_unsafe_or_broken_inputs_are_refused_naming_the_file_and_write_nothing(tmp_path, monkeypatch, content):
    """The converter reads through the project's safe readers: a pickle that would run code is refused (the
    code does not run), a truncated or empty file is named; the output file is never created."""
    marker, source, target = tmp_path / "ran", tmp_path / "imagenet.pth", tmp_path / "out.pkl"
    monkeypatch.setenv("CONVERT_MARKER", str(marker))
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(1)}, "args": _RunsCode()}, source)
    if content == "truncated":
        torch.save(with_classifier(small_nat().state_dict(), channels=128), source)
        source.write_bytes(source.read_bytes()[:-100])
    elif content == "empty":
        source.write_bytes(b"")
    reason = {"code": "can execute code", "truncated": "truncated", "empty": "empty"}[content]
    with pytest.raises(SystemExit, match=rf"imagenet\.pth.*{reason}"):
        tool.main(["--arch", "nat", str(source), str(target)])
    assert not marker.exists() and not target.exists()


# CoAtNet: a checkpoint written by timm (a small MaxxVit with the coatnet_0_rw flags and a classifier head)
COATNET_LAYOUT = dict(embed_dim=[16, 32, 48, 64], depths=[1, 1, 2, 1], stem_width=[8, 16])
COATNET_IMG_SIZE = (64, 64)


def timm_checkpoint() -> dict:
    timm_maxxvit = pytest.importorskip("timm.models.maxxvit")
    fields = dict(COATNET_VARIANTS["coatnet_0_rw_224"]["cfg"], **COATNET_LAYOUT)
    fields["conv_cfg"] = timm_maxxvit.MaxxVitConvCfg(**fields["conv_cfg"])
    fields["transformer_cfg"] = timm_maxxvit.MaxxVitTransformerCfg(**dict(fields["transformer_cfg"], dim_head=16))
    torch.manual_seed(0)
    model = timm_maxxvit.MaxxVit(timm_maxxvit.MaxxVitCfg(**fields), img_size=COATNET_IMG_SIZE, num_classes=10)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model, {k: v.contiguous() for k, v in model.state_dict().items()}


class WithCoAtNet(nn.Module):
    """Holds D2CoAtNet under `backbone.`, as the MaskFormer meta-architecture does."""

    def __init__(self):
        super().__init__()
        cfg = get_project_cfg()
        c = cfg.MODEL.COATNET
        c.EMBED_DIM, c.DEPTHS, c.STEM_WIDTH = COATNET_LAYOUT["embed_dim"], COATNET_LAYOUT["depths"], COATNET_LAYOUT["stem_width"]
        c.DIM_HEAD, c.PRETRAIN_IMG_SIZE = 16, list(COATNET_IMG_SIZE)
        self.backbone = D2CoAtNet(cfg, ShapeSpec(channels=3))


@pytest.mark.parametrize("out_suffix", [".pkl", ".safetensors"])
def test_timm_checkpoint_converts_and_loads_with_only_the_output_norms_missing(tmp_path, out_suffix):
    reference, state = timm_checkpoint()
    assert any(k.startswith("head.fc.") for k in state) and "norm.weight" in state
    source = tmp_path / "model.safetensors"
    save_file(state, str(source))
    target = tmp_path / f"coatnet_d2{out_suffix}"
    tool.main(["--arch", "coatnet", str(source), str(target)])

    model = WithCoAtNet().eval()
    initial_norms = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("backbone.norm")}
    checkpointer = SafeDetectionCheckpointer(model)
    with RecordLogs(checkpointer.logger) as logs:
        checkpointer.load(str(target))
    log = "\n".join(logs.messages)
    missing = log.split("not found in the checkpoint:\n")[1]
    assert missing.splitlines() == [f"backbone.norm{i}.{{bias, weight}}" for i in range(4)]
    assert "not used by the model" not in log and "incompatible shapes" not in log
    loaded = model.state_dict()
    for key, value in initial_norms.items():
        assert torch.equal(loaded[key], value), key
    for key, value in state.items():
        if not key.startswith(("head.", "norm.")):
            assert torch.equal(loaded["backbone." + key], value), key

    # and computes what timm computes, also at a size timm was not built for (tables resized)
    reference.eval()
    for size in (COATNET_IMG_SIZE, (96, 64)):
        if size != COATNET_IMG_SIZE:
            reference.set_input_size(img_size=size)
        image = torch.randn(1, 3, *size)
        with torch.no_grad():
            x, y = model.backbone.stem(image), reference.stem(image)
            for ours, theirs in zip(model.backbone.stages, reference.stages):
                x, y = ours(x), theirs(y)
                assert (x - y).abs().max() < 1e-4, size


def test_not_a_coatnet_checkpoint_is_rejected_with_the_file_name(tmp_path):
    source = tmp_path / "dinat.pth"
    torch.save({"model": {"levels.0.blocks.0.attn.rpb": torch.zeros(2, 13, 13)}}, source)
    with pytest.raises(SystemExit, match=r"dinat.pth: Not a coatnet classifier state_dict: unexpected keys \['levels"):
        tool.main(["--arch", "coatnet", str(source), str(tmp_path / "out.pkl")])
