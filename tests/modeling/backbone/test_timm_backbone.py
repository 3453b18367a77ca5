"""The generic timm backbone: feature_info mapped to res2..res5 by stride for a few timm families, the clear
error for a model without stride-4..32 features, local pretrained weights (round trip, wrappers, safe
reading, mismatches named), the project importing without timm and the ConvNeXt-L Mask2Former configs. Training the synthetic config:
tests/e2e/test_train_backbones.py."""
import os
import pickle
import subprocess
import sys

import pytest
import timm
import torch
from detectron2.modeling import build_backbone

from dinat_m2f.config import get_project_cfg
from dinat_m2f.modeling.backbone.timm_backbone import D2TimmBackbone
from project_paths import REPO
from test_configs import build_on_meta, load_backbone_config


def _timm_cfg(name: str, **keys):
    cfg = get_project_cfg()
    cfg.merge_from_list(["MODEL.BACKBONE.NAME", "D2TimmBackbone", "MODEL.TIMM.NAME", name])
    for key, value in keys.items():
        cfg.merge_from_list([key, value])
    return cfg


# timm's tiny test models: a ConvNeXt (strides 4..32), a ResNet and an EfficientNet (strides 2..32).
@pytest.mark.parametrize("name", ["test_convnext", "test_resnet", "test_efficientnet"])
def test_families_map_to_res2_res5_by_stride(name):
    torch.manual_seed(0)
    backbone = build_backbone(_timm_cfg(name)).eval()
    reference = timm.create_model(name, features_only=True).eval()
    reference.load_state_dict(backbone.model.state_dict())
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        features = backbone(x)
        expected = {s: f for s, f in zip(reference.feature_info.reduction(), reference(x))}
    shapes = backbone.output_shape()
    assert {k: v.stride for k, v in shapes.items()} == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    for key, spec in shapes.items():
        assert features[key].shape == (1, spec.channels, 96 // spec.stride, 160 // spec.stride)
        torch.testing.assert_close(features[key], expected[spec.stride])
    assert backbone.size_divisibility == 32


def test_channels_last_features_come_out_nchw():
    backbone = D2TimmBackbone(name="swin_tiny_patch4_window7_224", embed_dim=32, depths=(1, 1, 1, 1),
                              num_heads=(1, 2, 4, 8))
    features = backbone(torch.randn(1, 3, 224, 224))
    assert features["res2"].shape == (1, 32, 56, 56) and features["res5"].shape == (1, 256, 7, 7)


def test_out_indices_and_kwargs_reach_timm():
    backbone = build_backbone(_timm_cfg("test_resnet", **{"MODEL.TIMM.OUT_INDICES": [1, 2, 3, 4]}))
    assert list(backbone.model.feature_info.reduction()) == [4, 8, 16, 32]
    cfg = _timm_cfg("test_convnext")
    cfg.MODEL.TIMM.KWARGS.drop_path_rate = 0.25
    backbone = build_backbone(cfg)
    rates = [m.drop_prob for m in backbone.modules() if isinstance(m, timm.layers.DropPath)]
    assert rates and max(rates) == pytest.approx(0.25)


def test_a_model_without_stride_4_features_is_named_with_its_strides():
    with pytest.raises(ValueError, match=r"timm model 'test_vit' has no features at stride\(s\) \[4, 8, 32\] "
                                         r"\(its features_only outputs have strides \[16, 16, 16\]\)"):
        build_backbone(_timm_cfg("test_vit"))
    with pytest.raises(ValueError, match=r"no features at stride\(s\) \[4\].*for OUT_INDICES \[2, 3, 4\]"):
        build_backbone(_timm_cfg("test_resnet", **{"MODEL.TIMM.OUT_INDICES": [2, 3, 4]}))


@pytest.mark.parametrize("name,message", [
    ("", "MODEL.TIMM.NAME is empty"),
    ("no_such_model_xyz", "'no_such_model_xyz' is not a timm model"),
])
def test_bad_names(name, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(_timm_cfg(name))


def test_reserved_kwargs_are_refused():
    cfg = _timm_cfg("test_convnext")
    cfg.MODEL.TIMM.KWARGS.pretrained = True
    with pytest.raises(ValueError, match=r"MODEL.TIMM.KWARGS must not set \['pretrained'\]"):
        build_backbone(cfg)


def _classifier_and_input():
    torch.manual_seed(1)
    model = timm.create_model("test_convnext").eval()  # timm's classification model, with its head
    return model, torch.randn(1, 3, 64, 96)


@pytest.mark.parametrize("layout", ["bare", "state_dict", "model", "safetensors"])
def test_pretrained_path_round_trip(tmp_path, layout):
    classifier, x = _classifier_and_input()
    state_dict = classifier.state_dict()
    if layout == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "weights.safetensors"
        save_file(state_dict, str(path))
    else:
        path = tmp_path / "weights.pth"
        torch.save(state_dict if layout == "bare" else {layout: state_dict, "epoch": 3}, path)
    torch.manual_seed(2)
    loaded = build_backbone(_timm_cfg("test_convnext", **{"MODEL.TIMM.PRETRAINED_PATH": str(path)})).eval()
    torch.manual_seed(2)
    untouched = build_backbone(_timm_cfg("test_convnext")).eval()
    with torch.no_grad():
        features = loaded(x)
        expected = classifier.forward_intermediates(x, intermediates_only=True)
        random_init = untouched(x)
    for key, value in zip(("res2", "res3", "res4", "res5"), expected):
        torch.testing.assert_close(features[key], value, rtol=0, atol=0)
    assert not torch.allclose(random_init["res5"], features["res5"])


def test_pretrained_path_of_another_model_lists_the_mismatch(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), path)
    with pytest.raises(ValueError, match=r"resnet.pth does not fit timm model 'test_convnext'.*missing: "
                                         r"head.norm.bias.*unexpected: bn1.bias"):
        build_backbone(_timm_cfg("test_convnext", **{"MODEL.TIMM.PRETRAINED_PATH": str(path)}))

    state_dict = timm.create_model("test_convnext").state_dict()
    state_dict["stem.0.weight"] = state_dict["stem.0.weight"][:, :1]
    torch.save(state_dict, path)
    with pytest.raises(ValueError, match=r"wrong shape: stem.0.weight \(24, 1, 4, 4\) \(model: \(24, 3, 4, 4\)\)"):
        build_backbone(_timm_cfg("test_convnext", **{"MODEL.TIMM.PRETRAINED_PATH": str(path)}))


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pretrained_path_never_runs_pickled_code(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _RunsCode()}, f)
    with pytest.raises(pickle.UnpicklingError, match="Refusing to load .*evil.pth"):
        build_backbone(_timm_cfg("test_convnext", **{"MODEL.TIMM.PRETRAINED_PATH": str(path)}))


def test_not_a_state_dict_is_named(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match=r"list.pth: expected a state_dict of tensors"):
        build_backbone(_timm_cfg("test_convnext", **{"MODEL.TIMM.PRETRAINED_PATH": str(path)}))


def test_project_imports_and_builds_other_backbones_without_timm():
    """With timm unimportable, `import dinat_m2f` works and D2TimmBackbone says how to install timm."""
    code = (
        "import sys; sys.modules['timm'] = None\n"
        "import dinat_m2f, torch\n"
        "from detectron2.modeling import build_backbone\n"
        "cfg = dinat_m2f.get_project_cfg(); cfg.MODEL.BACKBONE.NAME = 'D2LaViT'\n"
        "with torch.device('meta'): build_backbone(cfg)\n"
        "cfg.MODEL.BACKBONE.NAME = 'D2TimmBackbone'; cfg.MODEL.TIMM.NAME = 'convnext_tiny'\n"
        "try:\n    build_backbone(cfg)\nexcept ImportError as e:\n    print('ImportError:', e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ImportError: MODEL.BACKBONE.NAME D2TimmBackbone needs timm" in result.stdout
    assert "pip install .[timm]" in result.stdout



# timm's convnext_large has 197,767,336 parameters; the classifier head (1,540,072) is not built.
@pytest.mark.parametrize("name,total", [("ade20k/semantic/convnext_l.yaml", 216_514_839),
                                        ("coco/panoptic/convnext_l.yaml", 216_561_670)])
def test_mask2former_config_builds_with_the_expected_parameter_counts(name, total):
    cfg = load_backbone_config(name, "D2TimmBackbone")
    assert cfg.MODEL.WEIGHTS == ""
    assert cfg.MODEL.TIMM.NAME == "convnext_large" and cfg.MODEL.TIMM.PRETRAINED_PATH.endswith(".safetensors")
    cfg.MODEL.TIMM.PRETRAINED_PATH = ""  # the ImageNet file is not here; the shapes do not depend on it
    model = build_on_meta(cfg)
    assert sum(p.numel() for p in model.backbone.parameters()) == 196_227_264
    assert sum(p.numel() for p in model.parameters()) == total
    assert {k: v.stride for k, v in model.backbone.output_shape().items()} == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def test_missing_timm_weights_file_says_what_to_do():
    cfg = load_backbone_config("coco/panoptic/convnext_l.yaml", "D2TimmBackbone")
    with pytest.raises(FileNotFoundError, match=r"PRETRAINED_PATH convnext_large_fb_in22k.safetensors does not "
                                                r"exist.*or set it to '' for random weights"):
        build_on_meta(cfg)
