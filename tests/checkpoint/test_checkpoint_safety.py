"""Hostile and broken checkpoint files: nothing in them runs or crashes the process, and every error names
the file and the real cause. Legitimate numpy pickles (protocols 2-5, Python 2, big-endian, scalars) load."""
import collections
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from dinat_m2f.checkpoint import CheckpointFileError, SafeDetectionCheckpointer
from project_paths import REPO

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]
_SCALAR = np.float32(0).__reduce__()[0]
ADDRESS = b"\x41" * 8  # read as a PyObject* by an object array: a crash when anything looks at it


class Call:
    """Pickles as ``func(*args)``, followed by ``BUILD(state)`` when a state is given."""

    def __init__(self, func, *args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def dtype(spec, state=None):
    return Call(np.dtype, spec, False, True, state=state)


def array_with(forged_dtype, data=ADDRESS):
    return Call(_RECONSTRUCT, np.ndarray, (0,), b"b", state=(1, (1,), forged_dtype, False, data))


object_array = Call(np.ndarray, (1,), dtype("O8"), ADDRESS)  # ndarray(shape, dtype, buffer)
object_field = dtype("V8", state=(3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 8, 0))  # no HASOBJECT flag
field_past_itemsize = dtype("V8", state=(3, "|", None, ("a",), {"a": (np.dtype("f8"), 1 << 20)}, 8, 1, 16))
subarray = dtype("V8", state=(3, "|", (np.dtype("f4"), (2,)), None, None, 8, 4, 0))

HOSTILE = {
    "object_array_as_author": {"model": {}, "__author__": object_array},
    "object_array_as_weight": {"model": {"weight": object_array}, "__author__": "x"},
    "forged_object_field_as_matching_heuristics": {
        "model": {}, "__author__": "x", "matching_heuristics": array_with(object_field),
    },
    "forged_object_field_as_weight": {"model": {"weight": array_with(object_field)}, "__author__": "x"},
    "field_offset_past_itemsize": {"model": {"weight": array_with(field_past_itemsize)}, "__author__": "x"},
    "subarray_dtype": {"model": {"weight": array_with(subarray)}, "__author__": "x"},
    "object_scalar": {"model": {}, "__author__": Call(_SCALAR, dtype("O8"), ADDRESS)},
    "string_array": {"model": {"weight": np.array(["text"])}, "__author__": "x"},
    "ndarray_subclass": {"model": {"weight": np.zeros(2).view(np.recarray)}, "__author__": "x"},
    "codec_other_than_latin1": {"model": {}, "__author__": Call(__import__("codecs").encode, "x", "rot13")},
    "state_given_to_a_dict": {"model": Call(collections.OrderedDict, state={"_metadata": {}}), "__author__": "x"},
}

LOAD_EACH = """
import sys
from torch import nn
from dinat_m2f.checkpoint import SafeDetectionCheckpointer
for path in sys.argv[1:]:
    try:
        SafeDetectionCheckpointer(nn.Linear(2, 2)).load(path)
        print("LOADED", path, flush=True)
    except Exception as error:
        print(type(error).__name__, path, str(error).replace("\\n", " "), flush=True)
"""


def test_hostile_numpy_pickles_are_refused_without_crashing(tmp_path):
    """Object arrays, forged dtypes (object field, out-of-bounds field, subarray) and other objects a numpy
    pickle does not need: each file is refused, in one process that must survive them all."""
    paths = []
    for name, payload in HOSTILE.items():
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(pickle.dumps(payload, protocol=2))
        paths.append(str(path))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", LOAD_EACH, *paths], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, f"loader died with {result.returncode}:\n{result.stdout}{result.stderr[-3000:]}"
    lines = result.stdout.splitlines()
    assert len(lines) == len(paths), result.stdout
    for path, line in zip(paths, lines):
        assert line.startswith(f"CheckpointFileError {path} Refusing to load {path}"), line


class Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` (BINSTRING), like the pickles of Caffe2 / Detectron1 model zoos."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes_as_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes_as_str


@pytest.mark.parametrize("protocol", [2, 3, 4, 5, "python2"])
def test_legitimate_numpy_pickles_load(tmp_path, protocol):
    weight = np.arange(4, dtype=">f4").reshape(2, 2)  # big-endian, as some converted files are
    bias = np.array([1.5, -2.0], dtype=np.float64)
    payload = {"model": {"weight": weight, "bias": bias}, "__author__": "tests",
               "extra": [np.float32(3.0), np.int64(7), np.bool_(True), (1, "a", None)]}  # fmt: skip
    path = tmp_path / "weights.pkl"
    with open(path, "wb") as f:
        if protocol == "python2":
            Python2Pickler(f, protocol=2).dump(payload)
        else:
            pickle.dump(payload, f, protocol=protocol)
    model = nn.Linear(2, 2)
    extra = SafeDetectionCheckpointer(model).load(str(path))
    assert torch.equal(model.weight.detach(), torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    assert torch.equal(model.bias.detach(), torch.tensor([1.5, -2.0]))
    assert extra["extra"][:3] == [3.0, 7, True] and extra["extra"][3] == (1, "a", None)


class WritesFileWhenUnpickled:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("name", ["pycls_model.pyth", "weights.bin", "model.pt"])
def test_every_extension_is_read_weights_only_even_when_torch_is_told_otherwise(tmp_path, monkeypatch, name):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (set by users for old checkpoints) makes a plain torch.load run
    pickled code; .pyth went to such a torch.load in detectron2, unknown extensions too."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    target = tmp_path / "touched"
    path = tmp_path / name
    torch.save({"model_state": {"weight": WritesFileWhenUnpickled(target)}}, path)
    with pytest.raises(CheckpointFileError, match=f"Refusing to load {path}.*execute code"):
        SafeDetectionCheckpointer(nn.Linear(2, 2)).load(str(path))
    assert not target.exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_plain_pickle_named_pth_is_refused_as_code_not_called_corrupt(tmp_path, protocol):
    """torch's weights-only unpickler cannot read protocol-4 framing; the reader still says what the file
    is: a pickle naming os.system (read with pickletools, nothing runs)."""
    target = tmp_path / "touched"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"model": WritesFileWhenUnpickled(target)}, protocol=protocol))
    with pytest.raises(CheckpointFileError, match=f"Refusing to load {path}.*system.*execute code"):
        SafeDetectionCheckpointer(nn.Linear(2, 2)).load(str(path))
    assert not target.exists()


def test_pycls_checkpoint_loads(tmp_path):
    torch.save({"model_state": {"weight": torch.ones(2, 2), "bias": torch.zeros(2)}, "epoch": 3}, tmp_path / "m.pyth")
    model = nn.Linear(2, 2)
    SafeDetectionCheckpointer(model).load(str(tmp_path / "m.pyth"))
    assert torch.equal(model.weight.detach(), torch.ones(2, 2))


def _valid_bytes(suffix):
    state = {"weight": torch.randn(64, 64), "bias": torch.randn(64)}
    path = f"/tmp/_valid{os.getpid()}{suffix}"
    try:
        if suffix == ".pkl":
            with open(path, "wb") as f:
                pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "x"}, f)
        elif suffix == ".safetensors":
            save_file(state, path)
        else:
            torch.save({"model": state}, path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.remove(path)


@pytest.mark.parametrize("suffix", [".pth", ".pkl", ".safetensors"])
@pytest.mark.parametrize("damage, cause", [
    ("empty", "is empty"),
    ("truncated", "is truncated"),
    ("random", "is corrupt or not a checkpoint"),
])  # fmt: skip
def test_broken_files_name_the_file_and_the_real_cause(tmp_path, suffix, damage, cause):
    content = _valid_bytes(suffix)
    content = {"empty": b"", "truncated": content[: len(content) // 2], "random": os.urandom(len(content))}[damage]
    path = tmp_path / f"model_final{suffix}"
    path.write_bytes(content)
    with pytest.raises(CheckpointFileError) as error:
        SafeDetectionCheckpointer(nn.Linear(64, 64)).load(str(path))
    message = str(error.value)
    assert str(path) in message and cause in message, message
    assert "execute code" not in message  # a broken file is not an attack


def test_a_file_that_is_not_a_state_dict_is_named_with_the_key(tmp_path):
    torch.save({"state_dict": {"weight": torch.zeros(2, 2)}}, tmp_path / "mmcv_style.pth")
    with pytest.raises(CheckpointFileError, match=r"mmcv_style\.pth.*no 'model' entry.*'state_dict'"):
        SafeDetectionCheckpointer(nn.Linear(2, 2)).load(str(tmp_path / "mmcv_style.pth"))
