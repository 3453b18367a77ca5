"""SafeDetectionCheckpointer: the formats it reads, what it refuses, and detectron2's semantics it keeps."""
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from detectron2.solver.lr_scheduler import LRMultiplier
from fvcore.common.param_scheduler import CosineParamScheduler

from dinat_m2f.checkpoint import SafeDetectionCheckpointer
from log_capture import RecordLogs


class TinyDetector(nn.Module):
    """A model whose parameters sit under `backbone.` like detectron2 meta-architectures."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LayerNorm(4))
        self.head = nn.Linear(4, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        conv, norm = self.backbone
        features = norm(conv(images).permute(0, 2, 3, 1))  # LayerNorm over channels, channels-last
        return self.head(features.mean(dim=(1, 2)))


def random_state(model: nn.Module, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}


def assert_state_equal(model: nn.Module, state: dict) -> None:
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(loaded[k], torch.as_tensor(v)), k


class WritesFileWhenUnpickled:
    """Unpickling this calls os.system: the attack a checkpoint loader must not run."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_detectron2_pkl_with_numpy_arrays_loads(tmp_path, protocol):
    model = TinyDetector()
    state = random_state(model, 0)
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        numpy_state = {k: v.numpy() for k, v in state.items()}
        pickle.dump({"model": numpy_state, "__author__": "tests"}, f, protocol=protocol)

    SafeDetectionCheckpointer(model).load(str(path))
    assert_state_equal(model, state)


def test_pkl_matching_heuristics_adds_the_module_prefix(tmp_path):
    """Like detectron2: a pkl flagged with matching_heuristics maps `0.weight` to `backbone.0.weight`."""
    model = TinyDetector()
    state = random_state(model, 1)
    backbone_only = {k[len("backbone."):]: v.numpy() for k, v in state.items() if k.startswith("backbone.")}
    path = tmp_path / "imagenet.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": backbone_only, "__author__": "tests", "matching_heuristics": True}, f)
    head_before = model.head.weight.detach().clone()

    SafeDetectionCheckpointer(model).load(str(path))

    assert torch.equal(model.backbone[0].weight, state["backbone.0.weight"])
    assert torch.equal(model.backbone[1].bias, state["backbone.1.bias"])
    assert torch.equal(model.head.weight, head_before)


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_code_executing_pickle_is_refused_and_not_run(tmp_path, suffix):
    target = tmp_path / "touched_by_pickle"
    path = tmp_path / f"malicious{suffix}"
    payload = {"model": {"backbone.0.weight": WritesFileWhenUnpickled(str(target))}, "__author__": "x"}
    if suffix == ".pkl":
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    else:
        torch.save(payload, path)

    with pytest.raises(pickle.UnpicklingError, match=str(path)) as err:
        SafeDetectionCheckpointer(TinyDetector()).load(str(path))
    assert "execute code" in str(err.value)
    assert not target.exists()


def test_pth_plain_state_dict_and_wrapped_state_dict(tmp_path):
    model = TinyDetector()
    state = random_state(model, 2)
    torch.save(state, tmp_path / "plain.pth")
    SafeDetectionCheckpointer(model).load(str(tmp_path / "plain.pth"))
    assert_state_equal(model, state)

    state = random_state(model, 3)
    torch.save({"model": state, "iteration": 5}, tmp_path / "wrapped.pth")
    extra = SafeDetectionCheckpointer(model).load(str(tmp_path / "wrapped.pth"))
    assert_state_equal(model, state)
    assert extra["iteration"] == 5


def test_safetensors_plain_state_dict_loads_by_exact_names(tmp_path):
    model = TinyDetector()
    state = random_state(model, 4)
    save_file(state, str(tmp_path / "model.safetensors"))
    SafeDetectionCheckpointer(model).load(str(tmp_path / "model.safetensors"))
    assert_state_equal(model, state)

    # without metadata there is no heuristic matching: un-prefixed names stay unmatched
    backbone_only = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    save_file(backbone_only, str(tmp_path / "backbone.safetensors"))
    fresh = TinyDetector()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    checkpointer = SafeDetectionCheckpointer(fresh)
    with RecordLogs(checkpointer.logger) as logs:
        checkpointer.load(str(tmp_path / "backbone.safetensors"))
    assert_state_equal(fresh, before)
    text = "\n".join(logs.messages)
    missing, unexpected = text.split("not used by the model")
    assert "backbone.0.{bias, weight}" in missing
    assert "  0.{bias, weight}" in unexpected


def test_mismatched_keys_and_shapes_are_listed(tmp_path):
    model = TinyDetector()
    state = random_state(model, 5)
    state.pop("backbone.1.bias")
    state["head.weight"] = torch.zeros(3, 4)  # wrong shape
    state["neck.extra"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "mismatch.pth")

    checkpointer = SafeDetectionCheckpointer(model)
    with RecordLogs(checkpointer.logger) as logs:
        checkpointer.load(str(tmp_path / "mismatch.pth"))
    text = "\n".join(logs.messages)
    missing, unexpected = text.split("not used by the model")
    assert "backbone.1.bias" in missing
    assert "neck.extra" in unexpected
    assert "'head.weight'" in text and "(3, 4) in the checkpoint but (2, 4) in the model" in text


def test_resume_restores_model_optimizer_scheduler_and_iteration(tmp_path):
    model = TinyDetector()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    scheduler = LRMultiplier(optimizer, CosineParamScheduler(1.0, 0.0), max_iter=10)
    loss = model(torch.randn(2, 3, 6, 6)).square().sum()
    loss.backward()
    optimizer.step()
    scheduler.step()
    saver = SafeDetectionCheckpointer(model, str(tmp_path), optimizer=optimizer, scheduler=scheduler)
    saver.save("model_0000006", iteration=6)
    assert saver.has_checkpoint()

    model2 = TinyDetector()
    optimizer2 = torch.optim.AdamW(model2.parameters(), lr=1e-3, weight_decay=0.05)
    scheduler2 = LRMultiplier(optimizer2, CosineParamScheduler(1.0, 0.0), max_iter=10)
    loader = SafeDetectionCheckpointer(model2, str(tmp_path), optimizer=optimizer2, scheduler=scheduler2)
    extra = loader.resume_or_load("unused_when_resuming.pth", resume=True)

    assert extra["iteration"] == 6
    assert_state_equal(model2, model.state_dict())
    assert scheduler2.last_epoch == scheduler.last_epoch == 1
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])
    for p, p2 in zip(model.parameters(), model2.parameters()):
        s, s2 = optimizer.state[p], optimizer2.state[p2]
        assert torch.equal(s["exp_avg"], s2["exp_avg"]) and torch.equal(s["exp_avg_sq"], s2["exp_avg_sq"])


def test_not_resuming_loads_only_the_model(tmp_path):
    model = TinyDetector()
    state = random_state(model, 6)
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}}, tmp_path / "w.pth")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    extra = SafeDetectionCheckpointer(model, str(tmp_path / "out"), optimizer=optimizer).resume_or_load(
        str(tmp_path / "w.pth"), resume=True
    )
    assert_state_equal(model, state)
    assert optimizer.param_groups[0]["lr"] == 0.5  # the optimizer in the weights file is not loaded
    assert "optimizer" in extra


def test_pkl_that_is_not_a_dict_is_rejected_with_its_name(tmp_path):
    path = tmp_path / "list.pkl"
    with open(path, "wb") as f:
        pickle.dump([np.zeros(2)], f)
    with pytest.raises(ValueError, match="list.pkl"):
        SafeDetectionCheckpointer(TinyDetector()).load(str(path))


class TinyMaskFormer(nn.Module):
    """The parameter names of MaskFormer whose shapes follow the class count, and one that does not."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.backbone = nn.Linear(3, 4)
        self.sem_seg_head = nn.Module()
        self.sem_seg_head.predictor = nn.Module()
        self.sem_seg_head.predictor.class_embed = nn.Linear(4, num_classes + 1)
        self.criterion = nn.Module()
        self.criterion.register_buffer("empty_weight", torch.ones(num_classes + 1))


def test_weights_of_another_class_count_fine_tune_with_a_fresh_class_head(tmp_path):
    """Everything whose shape fits loads; the class head stays as initialized and one message names it, without
    detectron2's shape and missing-key warnings."""
    trained = TinyMaskFormer(num_classes=133)
    torch.save({"model": random_state(trained, 1)}, tmp_path / "coco.pth")
    model = TinyMaskFormer(num_classes=4)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    checkpointer = SafeDetectionCheckpointer(model)
    level = checkpointer.logger.level
    checkpointer.logger.setLevel(logging.INFO)  # the message is information, as train_net's logger shows it
    try:
        with RecordLogs(checkpointer.logger) as logs:
            checkpointer.load(str(tmp_path / "coco.pth"))
    finally:
        checkpointer.logger.setLevel(level)
    state = model.state_dict()
    assert torch.equal(state["backbone.weight"], random_state(trained, 1)["backbone.weight"])
    for key in ("sem_seg_head.predictor.class_embed.weight", "sem_seg_head.predictor.class_embed.bias",
                "criterion.empty_weight"):  # fmt: skip
        assert torch.equal(state[key], fresh[key]), key
    (message,) = [m for m in logs.messages if "class head" in m]
    assert message.startswith("Fine-tuning from weights trained on 133 classes into a model of 4")
    assert "sem_seg_head.predictor.class_embed.weight (134, 4) -> (5, 4)" in message
    assert "criterion.empty_weight (134,) -> (5,)" in message
    assert not [m for m in logs.messages if "Skip loading" in m or "not found in the checkpoint" in m]
