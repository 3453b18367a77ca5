"""Swin backbone (Mask2Former's D2SwinTransformer): the reference fixture, any input size, bfloat16, the
released variants' names and counts (manifest), Mask2Former's released checkpoint format, config errors, and
the eighteen Swin-L / Swin-T Mask2Former configs (plain YAML, Mask2Former's recipes, the models they build on
the meta device with the expected parameter counts)."""
import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from detectron2.modeling import build_backbone, build_model

import dinat_m2f  # noqa: F401  (registers the model and the datasets the configs name)
from dinat_m2f import get_project_cfg
from dinat_m2f.config import load_project_config
from dinat_m2f.checkpoint import SafeDetectionCheckpointer
from dinat_m2f.modeling.backbone.swin import (
    VARIANTS, D2SwinTransformer, PatchEmbed, PatchMerging, build_variant, from_reference_config,
)
from conftest import load_fixture
from log_capture import RecordLogs
from project_paths import CONFIGS, FIXTURES
from test_configs import build_on_meta

TOLERANCE = 1e-4  # fixtures/README.md: max abs error per feature map


@pytest.fixture(scope="module")
def swin_reference():
    return load_fixture("backbone_swin_reference.pt")


@pytest.fixture(scope="module")
def manifests():
    return json.loads((FIXTURES / "backbone_manifests.json").read_text())


def _from_d2_cfg(reference):
    """The same backbone through detectron2: MODEL.SWIN.* = the fixture's d2_cfg, build_backbone."""
    cfg = get_project_cfg()
    cfg.MODEL.BACKBONE.NAME = "D2SwinTransformer"
    for key, value in reference["d2_cfg"].items():
        cfg.merge_from_list([key, value])
    return build_backbone(cfg)


BUILDERS = {
    "reference_config": lambda reference: from_reference_config(reference["config"]),
    "d2_cfg": _from_d2_cfg,
}


@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_fixture_stage_outputs_then_features(swin_reference, builder):
    backbone = BUILDERS[builder](swin_reference)
    assert isinstance(backbone, D2SwinTransformer)
    backbone.load_state_dict(swin_reference["state_dict"], strict=True)
    backbone.eval()
    stage_outputs = {}  # the input of norm{i}: the stage's output before the added norm, channels-last
    for i in range(4):
        getattr(backbone, f"norm{i}").register_forward_pre_hook(
            lambda module, args, i=i: stage_outputs.__setitem__(f"res{i + 2}", args[0].permute(0, 3, 1, 2)))
    with torch.no_grad():
        features = backbone(swin_reference["image"])
    for kind, outputs in (("stage_outputs", stage_outputs), ("features", features)):
        for name, expected in swin_reference[kind].items():
            assert outputs[name].shape == expected.shape, (kind, name)
            error = (outputs[name] - expected).abs().max().item()
            assert error <= TOLERANCE, f"{kind}[{name}]: max abs error {error:.2e}"
    shapes = {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()}
    assert shapes == {k: (swin_reference["channels"][k], swin_reference["strides"][k]) for k in shapes}
    assert backbone.size_divisibility == swin_reference["size_divisibility"]


def test_state_dict_has_the_reference_names_and_no_attention_masks(swin_reference):
    backbone = from_reference_config(swin_reference["config"])
    state = backbone.state_dict()
    assert list(state) == list(swin_reference["state_dict"])
    assert not any("attn_mask" in key for key in state)
    index = state["layers.3.blocks.1.attn.relative_position_index"]
    assert index.dtype == torch.int64 and index.shape == (49, 49)
    assert torch.equal(index, swin_reference["state_dict"]["layers.3.blocks.1.attn.relative_position_index"])


def _tiny(**overrides):
    config = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=3)
    return from_reference_config({**config, **overrides})


@pytest.mark.parametrize("height,width", [(33, 61), (5, 7), (70, 29), (64, 64)])
def test_any_input_size_runs_with_the_padded_shapes(height, width):
    """Sizes that are no multiple of the patch, of 2 before merging, nor of the window: every level is
    ceil(previous / 2), as the reference pads."""
    backbone = _tiny(drop_path_rate=0.2).train()
    x = torch.randn(2, 3, height, width, requires_grad=True)
    features = backbone(x)
    h, w = -(-height // 4), -(-width // 4)
    for i, name in enumerate(("res2", "res3", "res4", "res5")):
        assert features[name].shape == (2, 16 * 2 ** i, h, w), name
        assert torch.isfinite(features[name]).all()
        h, w = -(-h // 2), -(-w // 2)
    sum(f.sum() for f in features.values()).backward()
    assert torch.isfinite(x.grad).all()
    assert backbone.layers[0].blocks[1].attn.relative_position_bias_table.grad is not None


def test_absolute_position_embedding_is_resized_to_the_input_grid():
    """APE: a (1, C, S/4, S/4) table for the pre-training size S, resized bicubically to each input's grid
    and added to the patch embedding: the same as a model without APE whose stem adds the resized table."""
    torch.manual_seed(0)
    backbone = _tiny(ape=True, pretrain_img_size=32).eval()
    assert backbone.state_dict()["absolute_pos_embed"].shape == (1, 16, 8, 8)
    without = _tiny().eval()
    without.load_state_dict({k: v for k, v in backbone.state_dict().items() if k != "absolute_pos_embed"})
    x = torch.randn(1, 3, 44, 52)
    with torch.no_grad():
        pos = F.interpolate(backbone.absolute_pos_embed, size=(11, 13), mode="bicubic").permute(0, 2, 3, 1)
        embed = without.patch_embed(x)
        without.patch_embed.forward = lambda image: embed + pos
        torch.testing.assert_close(without(x)["res2"], backbone(x)["res2"], rtol=0, atol=1e-6)


def test_patch_embed_and_merging_pad_odd_sizes_with_zeros():
    torch.manual_seed(0)
    embed = PatchEmbed(patch_size=4, in_chans=3, embed_dim=8, patch_norm=True)
    x = torch.randn(1, 3, 10, 13)
    torch.testing.assert_close(embed(x), embed(F.pad(x, (0, 3, 0, 2))), rtol=0, atol=0)
    merging = PatchMerging(dim=4)
    y = torch.randn(2, 5, 7, 4)
    merged = merging(y)
    assert merged.shape == (2, 3, 4, 8)
    torch.testing.assert_close(merged, merging(F.pad(y, (0, 0, 0, 1, 0, 1))), rtol=0, atol=0)


def test_patch_merging_concatenates_in_swin_order():
    merging = PatchMerging(dim=1)
    with torch.no_grad():
        merging.reduction.weight.copy_(torch.eye(2, 4))  # output = the first two of the 4 concatenated
    merging.norm = torch.nn.Identity()
    y = torch.tensor([[0.0, 2.0], [1.0, 3.0]]).view(1, 2, 2, 1)  # value = position in Swin's order
    with torch.no_grad():
        assert merging(y).flatten().tolist() == [0.0, 1.0]  # (even row, even col), then (odd row, even col)


def test_bfloat16_autocast_runs_close_to_float32(swin_reference):
    backbone = from_reference_config(swin_reference["config"])
    backbone.load_state_dict(swin_reference["state_dict"])
    backbone.eval()
    with torch.no_grad():
        reference = backbone(swin_reference["image"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = backbone(swin_reference["image"])
    for name, ref in reference.items():
        out = features[name].float()
        assert torch.isfinite(out).all()
        assert (out - ref).norm() / ref.norm() < 2e-2, name


@pytest.mark.parametrize("name", ["swin_tiny", "swin_large_384"])
def test_released_variants_match_the_manifest_names_shapes_and_counts(manifests, name):
    manifest = manifests[name]
    with torch.device("meta"):
        backbone = build_variant(name)
    params = {k: list(v.shape) for k, v in backbone.named_parameters()}
    assert params == manifest["param_keys"]
    buffers = {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in backbone.named_buffers()}
    assert buffers == manifest["persistent_buffers"]
    assert sum(p.numel() for p in backbone.parameters()) == manifest["params_backbone"]
    assert VARIANTS[name].items() <= manifest["constructor"].items()


@pytest.mark.parametrize("name,millions", [("swin_tiny", 28), ("swin_small", 50), ("swin_base", 88),
                                           ("swin_base_384", 88), ("swin_large", 197), ("swin_large_384", 197)])
def test_every_variant_has_the_papers_size(name, millions):
    with torch.device("meta"):
        backbone = build_variant(name)
    channels = backbone.num_features[-1]
    # The paper counts the ImageNet model: a final norm and a 1000-way head instead of norm0..norm3.
    out_norms = sum(2 * c for c in backbone.num_features)
    params = sum(p.numel() for p in backbone.parameters()) - out_norms + 2 * channels + channels * 1000 + 1000
    assert abs(params / 1e6 - millions) < 0.02 * millions  # the paper rounds to 1M
    window = 12 if name.endswith("_384") else 7
    assert backbone.layers[0].blocks[0].attn.relative_position_bias_table.shape[0] == (2 * window - 1) ** 2


def test_unknown_variant_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown Swin variant 'swin_huge'; known: \[.*'swin_large_384'.*\]"):
        build_variant("swin_huge")


def test_unknown_reference_config_key_is_named():
    with pytest.raises(ValueError, match=r"unknown Swin reference config keys \['window'\]"):
        from_reference_config({"window": 7})


def _swin_cfg(**swin):
    cfg = get_project_cfg()
    cfg.MODEL.BACKBONE.NAME = "D2SwinTransformer"
    for key, value in swin.items():
        cfg.MODEL.SWIN[key] = value
    return cfg


def test_mismatched_depths_and_heads_name_the_keys_and_the_level():
    with pytest.raises(ValueError, match=r"MODEL.SWIN.NUM_HEADS \[3, 6, 12\] has 3 entries but "
                                         r"MODEL.SWIN.DEPTHS \[2, 2, 6, 2\] has 4 levels: level 3 has no NUM_HEADS"):
        with torch.device("meta"):
            build_backbone(_swin_cfg(NUM_HEADS=[3, 6, 12]))
    with pytest.raises(ValueError, match=r"MODEL.SWIN.NUM_HEADS level 2 is 5, which does not divide the 384 channels"):
        with torch.device("meta"):
            build_backbone(_swin_cfg(NUM_HEADS=[3, 6, 5, 24]))


def test_out_features_select_outputs_but_all_norms_exist():
    """Mask2Former's checkpoints carry norm0..norm3 whatever OUT_FEATURES says."""
    cfg = _swin_cfg(EMBED_DIM=16, DEPTHS=[2, 2, 2, 2], NUM_HEADS=[1, 2, 4, 8], OUT_FEATURES=["res3", "res5"])
    backbone = build_backbone(cfg).eval()
    assert set(backbone.output_shape()) == {"res3", "res5"}
    assert all(f"norm{i}.weight" in backbone.state_dict() for i in range(4))
    with torch.no_grad():
        assert set(backbone(torch.randn(1, 3, 64, 64))) == {"res3", "res5"}


# --- Mask2Former's released segmentation checkpoints (model_final_*.pkl) -------------------------------


def _relative_position_index(window: int) -> np.ndarray:
    """The index the released files carry, from its definition (fixtures/README.md, Swin quirk 5)."""
    y, x = np.divmod(np.arange(window * window), window)
    return ((y[:, None] - y[None, :] + window - 1) * (2 * window - 1) + (x[:, None] - x[None, :] + window - 1))


def _random_array(rng: np.random.Generator, key: str, shape) -> np.ndarray:
    """float32 values of the size trained weights have (norm scales around 1), so the outputs stay finite."""
    module, kind = key.split(".")[-2:]
    offset = 1.0 if module.startswith("norm") and kind == "weight" else 0.0
    return (offset + rng.standard_normal(shape) * (0.02 if len(shape) > 1 else 0.1)).astype(np.float32)


def _released_arrays(manifest: dict, model: torch.nn.Module, seed: int) -> dict:
    """What a released file holds: backbone.* under the manifest's names and shapes (the index buffers with
    their defined values) and the Mask2Former head under the names and shapes of `model`; random values."""
    rng = np.random.default_rng(seed)
    arrays = {f"backbone.{key}": _random_array(rng, key, shape) for key, shape in manifest["param_keys"].items()}
    for key, (shape, dtype) in manifest["persistent_buffers"].items():
        arrays[f"backbone.{key}"] = _relative_position_index(int(np.sqrt(shape[0]))).astype(dtype)
    for key, value in model.state_dict().items():
        if not key.startswith("backbone."):
            assert value.dtype == torch.float32, key
            arrays[key] = _random_array(rng, key, tuple(value.shape))
    return arrays


def _swin_config(task: str, variant: str, device: str):
    cfg = load_project_config(str(CONFIGS / task / f"{variant}.yaml"))
    cfg.MODEL.DEVICE = device
    return cfg


@pytest.mark.parametrize("matching_heuristics", [True, False])
def test_released_swin_t_coco_panoptic_checkpoint_loads_strictly_and_runs(tmp_path, manifests, matching_heuristics):
    """A model_final_*.pkl as Mask2Former publishes it: {"model": numpy arrays, "__author__", "matching_heuristics"}
    with backbone.* (manifest swin_tiny) and the Mask2Former head, loaded through MODEL.WEIGHTS."""
    cfg = _swin_config("coco/panoptic", "swin_t", "cpu")
    cfg.MODEL.WEIGHTS = ""
    model = build_model(cfg).eval()
    arrays = _released_arrays(manifests["swin_tiny"], model, seed=int(matching_heuristics))
    assert {k.split(".")[0] for k in arrays} == {"backbone", "sem_seg_head", "criterion"}
    weights = tmp_path / "model_final_swin_t_coco_panoptic.pkl"
    with open(weights, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "third_party", "matching_heuristics": matching_heuristics}, f)

    cfg.MODEL.WEIGHTS = str(weights)
    assert set(model.state_dict()) == set(arrays)
    checkpointer = SafeDetectionCheckpointer(model, save_dir=str(tmp_path / "output"))
    with RecordLogs(checkpointer.logger) as logs:
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=False)  # what train_net.py --eval-only does
    log = "\n".join(logs.messages)
    assert "not found in the checkpoint" not in log
    assert "not used by the model" not in log
    assert "incompatible shapes" not in log
    state = model.state_dict()
    for key, value in arrays.items():
        assert torch.equal(state[key], torch.from_numpy(value)), key

    with torch.no_grad():
        result = model([{"image": torch.randint(0, 256, (3, 72, 100), dtype=torch.uint8), "height": 72,
                         "width": 100}])[0]
    assert result["sem_seg"].shape == (133, 72, 100) and torch.isfinite(result["sem_seg"]).all()
    assert result["panoptic_seg"][0].shape == (72, 100)


def test_released_swin_l_checkpoint_names_and_shapes_match_the_model(manifests):
    """Swin-L 384 (215M parameters with the head): the manifest's names under backbone.* are exactly the
    model's, with the same shapes and dtypes (on the meta device: no memory, no file)."""
    manifest = manifests["swin_large_384"]
    cfg = _swin_config("coco/panoptic", "swin_l", "meta")
    with torch.device("meta"):
        model = build_model(cfg)
    backbone = {k[len("backbone."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    expected = {k: (shape, "float32") for k, shape in manifest["param_keys"].items()}
    expected.update({k: tuple(v) for k, v in manifest["persistent_buffers"].items()})
    assert {k: (list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in backbone.items()} == {
        k: (list(shape), dtype) for k, (shape, dtype) in expected.items()}
    assert sum(p.numel() for p in model.backbone.parameters()) == manifest["params_backbone"]


# The Mask2Former configs.
TASKS = ["coco/panoptic", "coco/instance", "coco/semantic", "ade20k/panoptic", "ade20k/instance",
         "ade20k/semantic", "cityscapes/panoptic", "cityscapes/instance", "cityscapes/semantic"]
# config: (manifest key, EMBED_DIM, DEPTHS, NUM_HEADS, WINDOW_SIZE, PRETRAIN_IMG_SIZE, ImageNet weights)
CONFIG_VARIANTS = {
    "swin_l": ("swin_large_384", 192, [2, 2, 18, 2], [6, 12, 24, 48], 12, 384, "swin_large_patch4_window12_384_22k.pkl"),
    "swin_t": ("swin_tiny", 96, [2, 2, 6, 2], [3, 6, 12, 24], 7, 224, "swin_tiny_patch4_window7_224.pkl"),
}
# (config, task): (queries, MAX_ITER, training crop or LSJ size, parameters)
CONFIG_TABLE = {
    ("swin_l", "coco/panoptic"): (200, 737500, 1024, 215_535_610),
    ("swin_l", "coco/instance"): (200, 737500, 1024, 215_521_989),
    ("swin_l", "coco/semantic"): (100, 737500, 640, 215_484_410),
    ("swin_l", "ade20k/panoptic"): (200, 160000, 640, 215_539_979),
    ("swin_l", "ade20k/instance"): (200, 160000, 640, 215_527_129),
    ("swin_l", "ade20k/semantic"): (100, 160000, 640, 215_488_779),
    ("swin_l", "cityscapes/panoptic"): (200, 90000, 512, 215_506_312),
    ("swin_l", "cityscapes/instance"): (200, 90000, 512, 215_503_485),
    ("swin_l", "cityscapes/semantic"): (100, 90000, 512, 215_455_112),
    ("swin_t", "coco/panoptic"): (100, 368750, 1024, 47_435_264),
    ("swin_t", "coco/instance"): (100, 368750, 1024, 47_421_643),
    ("swin_t", "coco/semantic"): (100, 368750, 640, 47_435_264),
    ("swin_t", "ade20k/panoptic"): (100, 160000, 640, 47_439_633),
    ("swin_t", "ade20k/instance"): (100, 160000, 640, 47_426_783),
    ("swin_t", "ade20k/semantic"): (100, 160000, 512, 47_439_633),
    ("swin_t", "cityscapes/panoptic"): (100, 90000, 512, 47_405_966),
    ("swin_t", "cityscapes/instance"): (100, 90000, 512, 47_403_139),
    ("swin_t", "cityscapes/semantic"): (100, 90000, 512, 47_405_966),
}


def head_parameters(model) -> int:
    return sum(p.numel() for p in model.sem_seg_head.parameters())


def test_eighteen_configs_exist_as_plain_yaml():
    found = sorted((str(p.parent.relative_to(CONFIGS)), p.stem) for p in CONFIGS.glob("*/*/swin_[lt].yaml"))
    assert found == sorted((task, variant) for variant, task in CONFIG_TABLE)
    assert sorted({task for task, _ in found}) == sorted(TASKS)
    for task, variant in found:
        text = (CONFIGS / task / f"{variant}.yaml").read_text()
        assert "!!python" not in text
        assert isinstance(yaml.safe_load(text), dict)


@pytest.mark.parametrize("variant,task", sorted(CONFIG_TABLE))
def test_config_follows_the_recipe_and_builds_with_the_expected_count(variant, task):
    manifest_key, embed_dim, depths, num_heads, window, pretrain, weights = CONFIG_VARIANTS[variant]
    queries, max_iter, crop, parameters = CONFIG_TABLE[(variant, task)]
    cfg = _swin_config(task, variant, "cpu")  # raises on an unknown key
    swin = cfg.MODEL.SWIN
    assert cfg.MODEL.BACKBONE.NAME == "D2SwinTransformer"
    assert (swin.EMBED_DIM, swin.DEPTHS, swin.NUM_HEADS) == (embed_dim, depths, num_heads)
    assert (swin.WINDOW_SIZE, swin.PRETRAIN_IMG_SIZE, swin.DROP_PATH_RATE) == (window, pretrain, 0.3)
    assert not swin.APE and swin.PATCH_NORM
    assert cfg.MODEL.WEIGHTS == weights
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == queries
    assert cfg.SOLVER.MAX_ITER == max_iter
    assert (cfg.INPUT.IMAGE_SIZE if cfg.INPUT.DATASET_MAPPER_NAME.endswith("_lsj") else cfg.INPUT.CROP.SIZE[0]) == crop
    # the dinat_l config of the same dataset and task fixes everything that is not the backbone's recipe
    dinat = _swin_config(task, "dinat_l", "cpu")
    assert cfg.DATASETS.TRAIN == dinat.DATASETS.TRAIN and cfg.DATASETS.TEST == dinat.DATASETS.TEST
    assert cfg.INPUT.DATASET_MAPPER_NAME == dinat.INPUT.DATASET_MAPPER_NAME
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == dinat.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    assert cfg.MODEL.MASK_FORMER.TEST == dinat.MODEL.MASK_FORMER.TEST
    assert cfg.SOLVER.LR_SCHEDULER_NAME == dinat.SOLVER.LR_SCHEDULER_NAME

    model = build_on_meta(cfg)
    backbone_parameters = sum(p.numel() for p in model.backbone.parameters())
    manifest = json.loads((FIXTURES / "backbone_manifests.json").read_text())[manifest_key]
    assert backbone_parameters == manifest["params_backbone"]
    assert sum(p.numel() for p in model.parameters()) == parameters
    if variant == "swin_l":  # same channels and queries as DiNAT-L: the same head
        assert head_parameters(model) == head_parameters(build_on_meta(dinat))


def test_swin_t_ade20k_semantic_trains_and_tests_at_512():
    """Mask2Former's Swin-T ADE20K semantic recipe is its 512 one (Swin-L's is 640)."""
    ade = _swin_config("ade20k/semantic", "swin_t", "cpu")
    assert (ade.INPUT.MIN_SIZE_TRAIN[0], ade.INPUT.MIN_SIZE_TRAIN[-1], ade.INPUT.MIN_SIZE_TEST) == (256, 1024, 512)
    assert tuple(ade.TEST.AUG.MIN_SIZES) == (256, 384, 512, 640, 768, 896) and ade.TEST.AUG.MAX_SIZE == 3584
    assert tuple(_swin_config("ade20k/semantic", "swin_l", "cpu").TEST.AUG.MIN_SIZES) == (320, 480, 640, 800, 960, 1120)
