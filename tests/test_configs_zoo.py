"""The model zoo's configs: one per released Mask2Former checkpoint (43) and Mask2Former-DiNAT-L checkpoint (8),
each building exactly the state_dict of the released file (tests/fixtures/model_zoo_reference.json, made with
the original Mask2Former code), checked on the meta device; for a few, a checkpoint in the released format is
written from the reference's names and shapes, loaded through MODEL.WEIGHTS with nothing missing, unexpected or
misshapen, and run."""
import json
import pickle
import re

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

import dinat_m2f  # noqa: F401  (registers the model, the backbones and the datasets the configs name)
from dinat_m2f.checkpoint import SafeDetectionCheckpointer
from dinat_m2f.config import load_project_config
from log_capture import RecordLogs
from project_paths import FIXTURES, REPO
from test_configs import DINAT_L_PARAMETERS_COCO_PANOPTIC, build_on_meta

REFERENCE = json.loads((FIXTURES / "model_zoo_reference.json").read_text())
MASK2FORMER = REFERENCE["mask2former"]
DINAT = REFERENCE["dinat"]
# DiNAT-L's backbone (README "Model zoo": 199,609,938 of the COCO panoptic model's 219,944,344 parameters)
DINAT_L_BACKBONE_PARAMETERS = 199_609_938
DINAT_L_DEPTHS = [3, 4, 18, 5]

# ImageNet weights each backbone's configs name, as Mask2Former's configs do
IMAGENET_WEIGHTS = {
    "r50": "detectron2://ImageNetPretrained/torchvision/R-50.pkl",
    "r101": "R-101.pkl",
    "swin_t": "swin_tiny_patch4_window7_224.pkl",
    "swin_s": "swin_small_patch4_window7_224.pkl",
    "swin_b": "swin_base_patch4_window12_384.pkl",
    "swin_b_in21k": "swin_base_patch4_window12_384_22k.pkl",
    "swin_l": "swin_large_patch4_window12_384_22k.pkl",
    "dinat_l": "dinat_large_in22k_11x11.pkl",
}
ITERATIONS = {"50ep": 368750, "100ep": 737500, "160k": 160000, "90k": 90000}


def load_cfg(path: str):
    return load_project_config(str(REPO / path))  # raises on an unknown key


def variant_of(path: str) -> str:
    return path.rsplit("/", 1)[1][: -len(".yaml")]


def shapes(state_dict: dict) -> dict:
    return {key: list(value.shape) for key, value in state_dict.items()}


def test_every_released_checkpoint_has_its_config():
    missing = [path for path in [*MASK2FORMER, *DINAT] if not (REPO / path).is_file()]
    assert missing == []
    assert len(MASK2FORMER) == 43 and len(DINAT) == 8


@pytest.mark.parametrize("path", sorted(MASK2FORMER))
def test_mask2former_config_builds_the_released_state_dict(path):
    entry = MASK2FORMER[path]
    cfg = load_cfg(path)
    assert cfg.MODEL.BACKBONE.NAME == entry["backbone"]
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == entry["num_classes"]
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == entry["queries"]
    model = build_on_meta(cfg)
    assert shapes(model.state_dict()) == entry["state_dict_shapes"]
    assert sum(p.numel() for p in model.parameters()) == entry["params"]


def dinat_l_expected_names(head: dict) -> set:
    """DiNAT-L's state_dict names: the original DiNAT's backbone names (those of the small original model of
    m2f_dinat_reference.pt, with DiNAT-L's depths) and the head of the Swin-L model of the same dataset and task
    (same channels, classes and queries)."""
    small = torch.load(FIXTURES / "m2f_dinat_reference.pt", weights_only=True)["state_dict"]
    names = set(head)
    for key in small:
        block = re.match(r"backbone\.levels\.(\d+)\.blocks\.\d+\.(.*)", key)
        if block:
            level, rest = int(block.group(1)), block.group(2)
            names |= {f"backbone.levels.{level}.blocks.{i}.{rest}" for i in range(DINAT_L_DEPTHS[level])}
        elif key.startswith("backbone."):
            names.add(key)
    return names


@pytest.mark.parametrize("path", sorted(DINAT))
def test_dinat_l_config_builds_the_released_state_dict(path):
    """The released DiNAT-L files have the original names; their head is Mask2Former's for DiNAT-L's channels
    (192..1536, as Swin-L's), so it equals the reference's Swin-L head of the same dataset and task."""
    cfg = load_cfg(path)
    assert cfg.MODEL.BACKBONE.NAME == "D2DiNAT"
    swin_l = MASK2FORMER[path.replace("dinat_l", "swin_l")]
    swin_l_head = {k: v for k, v in swin_l["state_dict_shapes"].items() if not k.startswith("backbone.")}
    model = build_on_meta(cfg)
    state = shapes(model.state_dict())
    assert set(state) == dinat_l_expected_names(swin_l_head)
    assert {k: v for k, v in state.items() if not k.startswith("backbone.")} == swin_l_head
    backbone = sum(p.numel() for p in model.backbone.parameters())
    assert backbone == DINAT_L_BACKBONE_PARAMETERS
    swin_l_backbone = sum(np.prod(v) for k, v in swin_l["state_dict_shapes"].items()
                          if k.startswith("backbone.") and not k.endswith("relative_position_index"))
    assert sum(p.numel() for p in model.parameters()) == backbone + swin_l["params"] - swin_l_backbone
    if path == "configs/coco/panoptic/dinat_l.yaml":
        assert sum(p.numel() for p in model.parameters()) == DINAT_L_PARAMETERS_COCO_PANOPTIC


@pytest.mark.parametrize("path", sorted([*MASK2FORMER, *DINAT]))
def test_config_follows_the_original_recipe(path):
    """The original config's schedule (from its name), ImageNet weights and input size, and the task settings
    every config of the same dataset and task shares (those of its dinat_l.yaml)."""
    entry = MASK2FORMER.get(path) or DINAT[path]
    original, variant = entry["original_config"], variant_of(path)
    cfg = load_cfg(path)
    schedule = re.search(r"_(\d+ep|\d+k)(_res640)?\.yaml$", original).group(1)
    if path == "configs/ade20k/semantic/r101.yaml":
        schedule = "160k"  # the file is named 90k, but it only changes the R50 160k config's backbone
    assert cfg.SOLVER.MAX_ITER == ITERATIONS[schedule]
    assert cfg.MODEL.WEIGHTS == IMAGENET_WEIGHTS[variant]
    dataset, task = path.split("/")[1:3]
    if (dataset, task) == ("ade20k", "semantic"):
        size = 640 if "res640" in original or variant in ("swin_l", "dinat_l") else 512
        assert (cfg.INPUT.CROP.SIZE, cfg.INPUT.MIN_SIZE_TEST, cfg.TEST.AUG.MIN_SIZES[2]) == ([size, size], size, size)
    if (dataset == "cityscapes" and variant in ("r50", "r101")) or path == "configs/ade20k/semantic/r101.yaml":
        assert cfg.MODEL.RESNETS.NORM == "SyncBN"
    dinat = load_cfg(f"configs/{dataset}/{task}/dinat_l.yaml")
    for key in ("DATASETS", "MODEL.MASK_FORMER.TEST", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "INPUT.DATASET_MAPPER_NAME",
                "INPUT.FORMAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "SOLVER.LR_SCHEDULER_NAME",
                "SOLVER.BASE_LR", "SOLVER.IMS_PER_BATCH", "SOLVER.CLIP_GRADIENTS"):
        mine, theirs = cfg, dinat
        for part in key.split("."):
            mine, theirs = mine[part], theirs[part]
        assert mine == theirs, key


# --- released files, written from the reference's names and shapes, loaded and run ----------------------------


def released_state_dict(reference_shapes: dict, model: torch.nn.Module, seed: int) -> dict:
    """A released file's state_dict: the reference's names and shapes with random float32 values of a trained
    model's size (norm scales and BN variances around 1); integer buffers (Swin's relative_position_index,
    SyncBN's num_batches_tracked) hold the values the architecture defines, taken from `model`."""
    generator = torch.Generator().manual_seed(seed)
    model_state = model.state_dict()
    state = {}
    for key, shape in reference_shapes.items():
        if not model_state[key].is_floating_point():
            state[key] = model_state[key].clone()
            continue
        scale = 0.03 if len(shape) > 1 else 0.2
        value = torch.empty(shape).uniform_(-scale, scale, generator=generator)
        if re.search(r"norm\d*\.weight$|running_var$", key):
            value = 1 + value.abs()
        state[key] = value
    return state


def write_released(path, state: dict) -> None:
    """Mask2Former's model_final_*.pkl (detectron2's {"model": numpy arrays, "__author__"} pickle) or DiNAT's
    .pth ({"model": tensors, ...} by torch.save)."""
    if path.suffix == ".pkl":
        with open(path, "wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "Mask2Former"}, f)
    else:
        torch.save({"model": state, "iteration": 89999}, path)


@pytest.mark.parametrize("path,file_name", [
    ("configs/cityscapes/panoptic/r50.yaml", "model_final_4ab90c.pkl"),  # SyncBN: integer num_batches_tracked
    ("configs/ade20k/semantic/swin_s.yaml", "model_final_011c6d.pkl"),
    ("configs/cityscapes/semantic/dinat_l.yaml", "mask2former_dinat_large_cityscapes_semantic.pth"),
])
def test_released_checkpoint_loads_strictly_and_runs(tmp_path, path, file_name):
    cfg = load_cfg(path)
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if path in MASK2FORMER:
        reference_shapes = MASK2FORMER[path]["state_dict_shapes"]
    else:
        reference_shapes = shapes(model.state_dict())  # equal to the released names and shapes (test above)
    state = released_state_dict(reference_shapes, model, seed=1)
    weights = tmp_path / file_name
    write_released(weights, state)

    checkpointer = SafeDetectionCheckpointer(model, save_dir=str(tmp_path / "output"))
    with RecordLogs(checkpointer.logger) as logs:
        checkpointer.resume_or_load(str(weights), resume=False)  # what train_net.py --eval-only does
    log = "\n".join(logs.messages)
    assert "not found in the checkpoint" not in log
    assert "not used by the model" not in log
    assert "incompatible shapes" not in log
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    del state

    with torch.no_grad():
        result = model([{"image": torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8), "height": 32,
                         "width": 48}])[0]
    test = cfg.MODEL.MASK_FORMER.TEST
    wanted = {"sem_seg": test.SEMANTIC_ON, "panoptic_seg": test.PANOPTIC_ON, "instances": test.INSTANCE_ON}
    assert set(result) == {name for name, on in wanted.items() if on}
    if "sem_seg" in result:
        assert result["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 32, 48)
        assert torch.isfinite(result["sem_seg"]).all()
    if "instances" in result:
        assert result["instances"].image_size == (32, 48) and torch.isfinite(result["instances"].scores).all()
