"""Checkpoint loading that never executes pickled code.

`SafeDetectionCheckpointer` is detectron2's `DetectionCheckpointer` (same resume logic, same "model" /
"optimizer" / "scheduler" / "iteration" handling, same missing/unexpected key reports) with safe readers:

- ``.pth`` / ``.pt`` (and any other torch file): ``torch.load(..., weights_only=True)`` on the CPU;
- ``.pkl`` (detectron2 model zoo / converted ImageNet weights): an unpickler that only admits numpy arrays,
  numpy scalars, dicts, lists, tuples, numbers and strings;
- ``.safetensors``: a flat dict of tensors, loaded by exact key names.

A file that needs anything else (a class whose unpickling could run code) is refused with an error that
names the file.
"""
import codecs
import collections
import pickle
from typing import Any, Dict

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

__all__ = ["SafeDetectionCheckpointer", "load_safe_pickle", "load_safetensors", "torch_load_weights_only"]

# Every global a pickle of numpy arrays needs (numpy 1.x and 2.x module paths; Python 2 pickles too).
# `_reconstruct` only builds an empty array of an admitted type (ndarray), whose state is then raw bytes;
# `_codecs.encode` turns the latin-1 text Python 3 uses for bytes under protocol 2 back into bytes.
_NUMPY_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]
_NUMPY_SCALAR = np.float32(0).__reduce__()[0]
_NUMPY_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # pickle protocol 5: array from raw bytes
_SAFE_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _NUMPY_SCALAR,
    ("numpy._core.multiarray", "scalar"): _NUMPY_SCALAR,
    ("numpy.core.numeric", "_frombuffer"): _NUMPY_FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _NUMPY_FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals in `_SAFE_PICKLE_GLOBALS`; everything else is refused."""

    def __init__(self, file, filename: str):
        super().__init__(file, encoding="latin1")  # latin1: Python 2 (Caffe2 / Detectron1) pickles
        self._filename = filename

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"Refusing to load {self._filename}: it needs the Python object '{module}.{name}', and "
                "unpickling arbitrary objects can execute code. Only numpy arrays, dicts, lists, tuples, "
                "numbers and strings are accepted in .pkl checkpoints."
            ) from None


def load_safe_pickle(filename: str) -> Any:
    """Unpickle `filename`, admitting only numpy arrays, numpy scalars, dicts, lists, tuples, numbers
    and strings. Raises pickle.UnpicklingError naming the file otherwise."""
    with PathManager.open(filename, "rb") as f:
        return _ArraysOnlyUnpickler(f, filename).load()


def torch_load_weights_only(filename: str) -> Any:
    """`torch.load` restricted to tensors and plain containers, on the CPU; the error names the file."""
    with PathManager.open(filename, "rb") as f:
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(
                f"Refusing to load {filename}: it holds Python objects other than tensors and plain "
                f"containers, and unpickling them can execute code.\n{e}"
            ) from e


def load_safetensors(filename: str) -> Dict[str, Any]:
    """Read a .safetensors file as a detectron2 checkpoint dict: {"model": tensors}.
    String metadata "__author__" and "matching_heuristics" ("True") carry over like in .pkl files;
    a plain state_dict without metadata loads by exact key names."""
    from safetensors import safe_open

    with safe_open(PathManager.get_local_path(filename), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        checkpoint: Dict[str, Any] = {"model": {k: f.get_tensor(k) for k in f.keys()}}
    if "__author__" in metadata:
        checkpoint["__author__"] = metadata["__author__"]
    if metadata.get("matching_heuristics") == "True":
        checkpoint["matching_heuristics"] = True
    return checkpoint


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """detectron2's DetectionCheckpointer with loaders that never execute pickled code."""

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(".pkl"):
            return self._load_detectron2_pickle(filename)
        # .pth/.pt/.safetensors: detectron2's path (query "?matching_heuristics=True", wrapping a bare
        # state_dict into {"model": ...}), reading the file through `_torch_load` below.
        return super()._load_file(filename)

    def _torch_load(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(".safetensors"):
            return load_safetensors(filename)
        loaded = torch_load_weights_only(filename)
        if not isinstance(loaded, dict):
            raise ValueError(f"Checkpoint {filename} holds a {type(loaded).__name__}, expected a dict.")
        return loaded

    def _load_detectron2_pickle(self, filename: str) -> Dict[str, Any]:
        # Same interpretation as detectron2's DetectionCheckpointer, only the unpickler differs.
        data = load_safe_pickle(filename)
        if not isinstance(data, dict):
            raise ValueError(f"Checkpoint {filename} holds a {type(data).__name__}, expected a dict.")
        if "model" in data and "__author__" in data:
            # detectron2 model zoo format; "matching_heuristics" in the file is honoured as-is
            self.logger.info("Reading a file from '{}'".format(data["__author__"]))
            return data
        # Caffe2 / Detectron1 model zoo format: names are converted by matching heuristics
        if "blobs" in data:
            data = data["blobs"]
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
