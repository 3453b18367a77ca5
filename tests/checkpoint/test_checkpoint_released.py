"""Released Mask2Former-DiNAT checkpoints load through MODEL.WEIGHTS with no missing or unexpected keys.

The files are written in the released formats from the fixture's state_dict (the original code's names):
detectron2's {"model": state_dict, ...} .pth (torch.save), a detectron2 model-zoo .pkl (numpy arrays)
and a plain .safetensors state_dict. Each loads like `train_net.py --eval-only MODEL.WEIGHTS <file>` does,
and the model's outputs stay those of the fixture.
"""
import logging
import pickle

import pytest
import torch
import yaml
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from safetensors.torch import save_file

import dinat_m2f  # noqa: F401  (registers the model)
from dinat_m2f.checkpoint import SafeDetectionCheckpointer
from dinat_m2f.config import get_project_cfg
from log_capture import RecordLogs

DATASET = "released_checkpoint_fixture"


def reference_cfg(reference: dict, weights: str) -> CfgNode:
    """Project defaults + the fixture's MODEL keys (its yaml also has keys of other projects outside MODEL)."""
    cfg = get_project_cfg()
    cfg.MODEL.merge_from_other_cfg(CfgNode(yaml.safe_load(reference["full_config_yaml"])["MODEL"]))
    MetadataCatalog.get(DATASET).set(**reference["metadata"])
    cfg.DATASETS.TRAIN = cfg.DATASETS.TEST = (DATASET,)
    cfg.TEST.DETECTIONS_PER_IMAGE = reference["config"]["TEST.DETECTIONS_PER_IMAGE"]
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = weights
    return cfg


def write_released_format(path, state_dict: dict) -> None:
    if path.suffix == ".pth":
        torch.save({"model": state_dict, "iteration": 368749}, path)
    elif path.suffix == ".pkl":
        with open(path, "wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in state_dict.items()}, "__author__": "SHI-Labs"}, f)
    else:
        save_file(state_dict, str(path))


@pytest.mark.parametrize("name", [
    "mask2former_dinat_large_coco_panoptic.pth",
    "mask2former_dinat_large_coco_panoptic.pkl",
    "mask2former_dinat_large_coco_panoptic.safetensors",
])
def test_released_checkpoint_loads_exactly_and_reproduces_the_fixture(tmp_path, m2f_reference, name):
    weights = tmp_path / name
    write_released_format(weights, m2f_reference["state_dict"])
    cfg = reference_cfg(m2f_reference, str(weights))
    torch.manual_seed(0)
    model = build_model(cfg).eval()

    checkpointer = SafeDetectionCheckpointer(model, save_dir=str(tmp_path / "output"))
    with RecordLogs(checkpointer.logger) as logs:
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=False)  # what train_net.py --eval-only does
    log = "\n".join(logs.messages)
    assert "not found in the checkpoint" not in log
    assert "not used by the model" not in log
    assert "incompatible shapes" not in log
    for key, value in m2f_reference["state_dict"].items():
        assert torch.equal(model.state_dict()[key], value), key

    with torch.no_grad():
        result = model([{"image": m2f_reference["image"], "height": m2f_reference["height"],
                         "width": m2f_reference["width"]}])[0]
    assert (result["sem_seg"] - m2f_reference["sem_seg"]).abs().max() < 1e-3
    panoptic_seg, segments_info = result["panoptic_seg"]
    assert torch.equal(panoptic_seg, m2f_reference["panoptic_seg"])
    assert segments_info == m2f_reference["segments_info"]
    instances = result["instances"]
    assert sorted(instances.pred_classes.tolist()) == sorted(m2f_reference["instance_classes"].tolist())
    torch.testing.assert_close(instances.scores.sort().values, m2f_reference["instance_scores"].sort().values,
                               rtol=0, atol=1e-4)


def test_a_checkpoint_for_another_model_lists_its_mismatches(tmp_path, m2f_reference):
    """E.g. a COCO checkpoint (133 classes) loaded into a model with another class count: the class head starts
    fresh, logged by name with both shapes, missing keys are reported by name, the rest loads."""
    state = dict(m2f_reference["state_dict"])
    class_key = "sem_seg_head.predictor.class_embed.weight"
    state[class_key] = torch.zeros(state[class_key].shape[0] + 3, state[class_key].shape[1])
    dropped = "sem_seg_head.predictor.query_feat.weight"
    state.pop(dropped)
    weights = tmp_path / "other.pth"
    write_released_format(weights, state)
    model = build_model(reference_cfg(m2f_reference, str(weights))).eval()
    checkpointer = SafeDetectionCheckpointer(model)
    checkpointer.logger.setLevel(logging.INFO)  # the fresh class head is reported at INFO level
    with RecordLogs(checkpointer.logger) as logs:
        checkpointer.load(str(weights))
    log = "\n".join(logs.messages)
    assert "the class head starts fresh" in log
    assert f"{class_key} {tuple(state[class_key].shape)} -> {tuple(model.state_dict()[class_key].shape)}" in log
    assert dropped in log.split("not found in the checkpoint")[1]
    assert torch.equal(model.state_dict()["backbone.patch_embed.proj.0.weight"],
                       state["backbone.patch_embed.proj.0.weight"])
