"""Checkpoints that loaded silently wrong or failed with an error hiding the cause: weights of the wrong dtype or
NaN/inf values, keys that are not strings, a non-dict "blobs", an empty array in a protocol-2 pickle (accepted),
MODEL.WEIGHTS naming a folder, a device or a FIFO, a zip bomb, safetensors headers that lie, and a resume after the
model's shapes changed."""
import json
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from dinat_m2f.checkpoint import CheckpointFileError, SafeDetectionCheckpointer
from memory_limit import address_space_budget


def linear_state(**changes):
    state = {"weight": torch.randn(4, 4), "bias": torch.randn(4)}
    state.update(changes)
    return state


def load(path, model=None):
    model = model or nn.Linear(4, 4)
    SafeDetectionCheckpointer(model).load(str(path))
    return model


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
@pytest.mark.parametrize("stored", [torch.int64, torch.bool])
def test_weights_of_an_integer_or_bool_dtype_are_refused_naming_the_keys(tmp_path, suffix, stored):
    """Loading cast them silently to float (a model of 0/1 weights, exit status 0)."""
    path = tmp_path / f"model{suffix}"
    state = linear_state(weight=torch.ones(4, 4, dtype=stored))
    if suffix == ".pkl":
        with open(path, "wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "x"}, f)
    else:
        torch.save({"model": state}, path)
    model = nn.Linear(4, 4)
    before = model.weight.detach().clone()
    with pytest.raises(CheckpointFileError) as error:
        load(path, model)
    message = str(error.value)
    assert f"Refusing to load {path}" in message and f"weight ({stored}, the model's is torch.float32)" in message
    assert "bias" not in message
    assert torch.equal(model.weight.detach(), before), "nothing is loaded"


def test_integer_buffers_of_the_model_still_load(tmp_path):
    model = nn.BatchNorm1d(4)
    model.running_mean.fill_(3)
    model.num_batches_tracked.fill_(7)  # an int64 buffer: int64 in the checkpoint is right
    torch.save({"model": model.state_dict()}, tmp_path / "bn.pth")
    loaded = load(tmp_path / "bn.pth", nn.BatchNorm1d(4))
    assert loaded.num_batches_tracked.item() == 7 and loaded.running_mean[0].item() == 3


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_infinite_weights_are_refused_naming_keys_and_file(tmp_path, value):
    """They loaded, and the demo wrote empty results with exit status 0."""
    weight = torch.randn(4, 4)
    weight[1, 2] = weight[3, 0] = value
    torch.save({"model": linear_state(weight=weight)}, tmp_path / "model.pth")
    with pytest.raises(CheckpointFileError) as error:
        load(tmp_path / "model.pth")
    message = str(error.value)
    assert f"Refusing to load {tmp_path / 'model.pth'}" in message
    assert "NaN or infinite values" in message and "weight (2 of 16 values)" in message and "bias" not in message


def test_non_finite_values_under_names_the_model_lacks_are_not_looked_at(tmp_path):
    torch.save({"model": linear_state(unused=torch.full((2,), float("nan")))}, tmp_path / "model.pth")
    load(tmp_path / "model.pth")


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
@pytest.mark.parametrize("where", ["model", "top"])
def test_keys_that_are_not_strings_are_named(tmp_path, suffix, where):
    """They failed with AttributeError ("'int' object has no attribute 'endswith'") or TypeError."""
    array = np.zeros if suffix == ".pkl" else torch.zeros
    weights = {0: array(2), "bias": array(4)}
    content = {"model": weights, "__author__": "x"} if where == "model" else weights
    path = tmp_path / f"model{suffix}"
    if suffix == ".pkl":
        with open(path, "wb") as f:
            pickle.dump(content, f)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointFileError, match=r"model\.(pth|pkl).*keys that are not strings: 0 \(int\)"):
        load(path)


@pytest.mark.parametrize("blobs", [[1, 2], "weights", np.zeros(3, np.float32)])
def test_blobs_that_are_not_a_dict_are_named(tmp_path, blobs):
    with open(tmp_path / "detectron1.pkl", "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    with pytest.raises(CheckpointFileError, match=r"detectron1\.pkl.*its 'blobs' is a (list|str|ndarray), not a dict"):
        load(tmp_path / "detectron1.pkl")


def test_a_protocol_2_pickle_with_empty_arrays_loads(tmp_path):
    """detectron2's own .pkl files use protocol 2, which stores an empty array's data as bytes(): it was refused
    as "can execute code". bytes() with an argument (an allocation, or an iterable) still is."""
    model = nn.Linear(4, 0)  # an empty weight and bias
    with open(tmp_path / "empty.pkl", "wb") as f:
        pickle.dump({"model": {"weight": np.zeros((0, 4), np.float32), "bias": np.zeros(0, np.float32)},
                     "__author__": "Detectron2 Model Zoo"}, f, protocol=2)
    load(tmp_path / "empty.pkl", model)

    class BytesCall:
        def __reduce__(self):
            return bytes, (1 << 40,)

    with open(tmp_path / "allocates.pkl", "wb") as f:
        pickle.dump({"model": {"weight": BytesCall()}, "__author__": "x"}, f, protocol=2)
    with pytest.raises(CheckpointFileError, match=r"allocates\.pkl: it needs bytes\(\) called with 1 argument"):
        load(tmp_path / "allocates.pkl")


@pytest.mark.parametrize("kind", ["folder", "device", "fifo"])
def test_weights_that_are_not_a_regular_file_are_named_by_kind(tmp_path, kind):
    """A folder, /dev/zero or a FIFO was reported "not found" although it exists (and a FIFO could block)."""
    if kind == "folder":
        path, expected = tmp_path / "weights.pth", "is a folder"
        path.mkdir()
    elif kind == "device":
        path, expected = "/dev/zero", "is a character device"
    else:
        path, expected = tmp_path / "weights.pth", r"is a FIFO \(named pipe\)"
        os.mkfifo(path)
    with pytest.raises(CheckpointFileError, match=f"Checkpoint {path} {expected}, not a file"):
        load(path)


def zip_bomb(tmp_path, declared_bytes: int):
    """A torch archive whose tensor record is compressed: a few kB on disk, `declared_bytes` when read."""
    torch.save({"model": {"weight": torch.zeros(declared_bytes // 4)}}, tmp_path / "plain.pth")
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(tmp_path / "plain.pth") as source, zipfile.ZipFile(bomb, "w") as target:
        for record in source.infolist():
            compression = zipfile.ZIP_DEFLATED if "/data/" in record.filename else zipfile.ZIP_STORED
            target.writestr(record, source.read(record), compress_type=compression)
    os.remove(tmp_path / "plain.pth")
    return bomb


def test_a_zip_bomb_is_refused_before_anything_is_allocated(tmp_path):
    """A 3 MB file took 3.8 GB of memory: a record that declares more than the file holds is refused."""
    bomb = zip_bomb(tmp_path, 256 << 20)
    assert bomb.stat().st_size < 1 << 20
    with address_space_budget(128 << 20), pytest.raises(CheckpointFileError) as error:
        load(bomb)
    message = str(error.value)
    assert f"Refusing to load {bomb}: its record 'plain/data/0' declares {256 << 20} bytes" in message


class Queries(nn.Module):
    def __init__(self, num_queries: int):
        super().__init__()
        self.query_feat = nn.Embedding(num_queries, 8)
        self.head = nn.Linear(8, 2)


def test_resume_after_the_shapes_changed_names_the_parameter_and_both_shapes(tmp_path):
    """After changing NUM_OBJECT_QUERIES, --resume failed at the first step with a bare tensor-size error (the
    optimizer state has the old shapes). Fine-tuning from the same file (no resume) still skips them."""
    model = Queries(100)
    optimizer = torch.optim.AdamW(model.parameters())
    model.query_feat.weight.sum().add(model.head.weight.sum()).backward()
    optimizer.step()
    SafeDetectionCheckpointer(model, str(tmp_path), optimizer=optimizer).save("model_0000009", iteration=9)

    changed = Queries(200)
    resumer = SafeDetectionCheckpointer(changed, str(tmp_path), optimizer=torch.optim.AdamW(changed.parameters()))
    with pytest.raises(ValueError) as error:
        resumer.resume_or_load("", resume=True)
    message = str(error.value)
    assert f"Cannot resume from {tmp_path / 'model_0000009.pth'}" in message
    assert "query_feat.weight: (100, 8) in the checkpoint, (200, 8) in the model" in message
    assert "NUM_OBJECT_QUERIES" in message

    fine_tuned = Queries(200)
    SafeDetectionCheckpointer(fine_tuned, str(tmp_path / "new_run")).load(str(tmp_path / "model_0000009.pth"), [])
    assert torch.equal(fine_tuned.head.weight, model.head.weight)


def safetensors_file(path, header: dict, data: bytes = b"", header_length=None):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if header_length is None else header_length) + text + data)
    return path


@pytest.mark.parametrize("name, header, data, header_length", [
    ("huge_header", {}, b"", 1 << 60),
    ("offsets_past_the_end", {"weight": {"dtype": "F32", "shape": [1 << 20], "data_offsets": [0, 4 << 20]}}, b"", None),
    ("shape_and_offsets_disagree", {"weight": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 16]}},
     bytes(16), None),
    ("overlapping", {"weight": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                     "bias": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, bytes(24), None),
])  # fmt: skip
def test_safetensors_structural_attacks_are_named_without_allocating(tmp_path, name, header, data, header_length):
    path = safetensors_file(tmp_path / f"{name}.safetensors", header, data, header_length)
    with address_space_budget(128 << 20), pytest.raises(CheckpointFileError, match=f"{name}\\.safetensors"):
        load(path)
