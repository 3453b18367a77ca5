"""Readers for every checkpoint extension that never execute code from the file, with errors that name the
file and the real cause (empty, truncated, corrupt, or holding objects that unpickling would have to run).

- ``.pkl`` (detectron2 model zoo, converted ImageNet weights, Caffe2/Detectron1): :mod:`.safe_pickle`;
- ``.pyth`` (pycls): a weights-only torch file holding "model_state";
- ``.safetensors``: a flat dict of tensors;
- ``.pth``, ``.pt`` and any other extension: ``torch.load(weights_only=True)``, which torch honours even
  when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is set (that variable only changes the default).

Each returns a detectron2 checkpoint dict: {"model": state_dict, ...} with "__author__" and
"matching_heuristics" where the format has them.
"""
import os
import pickle
import pickletools
import zipfile
from typing import Any, Callable, Dict, List

import numpy as np
import torch

from ..special_files import special_file_kind
from .safe_pickle import UnsafePickleError, load_numpy_pickle

__all__ = ["CheckpointFileError", "check_regular_file", "read_checkpoint_file"]

# A torch file starts with a zip archive's signature (torch >= 1.6) or a pickle's PROTO opcode (legacy).
_TORCH_FILE_SIGNATURES = (b"PK\x03\x04", b"\x80")


class CheckpointFileError(pickle.UnpicklingError, ValueError):
    """A checkpoint file cannot be read: missing, empty, truncated, corrupt, or it would execute code."""


def _refused(filename: str, reason: Any) -> CheckpointFileError:
    return CheckpointFileError(f"Refusing to load {filename}: {reason}")


def _corrupt(filename: str, reason: Any) -> CheckpointFileError:
    return CheckpointFileError(f"Cannot load {filename}: it is corrupt or not a checkpoint ({reason})")


def _truncated(filename: str) -> CheckpointFileError:
    return CheckpointFileError(
        f"Cannot load {filename}: it is truncated ({os.path.getsize(filename)} bytes, the data ends early; "
        "a run killed while writing it, or an incomplete copy)"
    )


def _native_byte_order(state: Dict[str, Any]) -> Dict[str, Any]:
    # torch.from_numpy refuses big-endian arrays (protocol-5 pickles keep the byte order they were saved in)
    return {k: v.astype(v.dtype.newbyteorder("=")) if isinstance(v, np.ndarray) and not v.dtype.isnative else v
            for k, v in state.items()}


def read_numpy_pickle_file(filename: str) -> Dict[str, Any]:
    """A .pkl checkpoint, interpreted like detectron2's DetectionCheckpointer does."""
    with open(filename, "rb") as f:
        try:
            data = load_numpy_pickle(f)
        except UnsafePickleError as error:
            raise _refused(filename, error) from error
        except Exception as error:  # the unpickler raises many types on corrupt or truncated data
            if f.tell() >= os.path.getsize(filename):  # it failed for want of more data
                raise _truncated(filename) from error
            raise _corrupt(filename, error) from error
    if not isinstance(data, dict):
        raise CheckpointFileError(f"Checkpoint {filename} holds a {type(data).__name__}, expected a dict.")
    if "model" in data and "__author__" in data:
        # detectron2 model zoo format; its "matching_heuristics" is honoured as-is
        if isinstance(data["model"], dict):
            data["model"] = _native_byte_order(data["model"])
        return data
    # Caffe2 / Detectron1 model zoo format: names are converted by matching heuristics
    if "blobs" in data:
        data = data["blobs"]
        if not isinstance(data, dict):
            raise _corrupt(filename, f"its 'blobs' is a {type(data).__name__}, not a dict of arrays")
    _check_keys(filename, data, "its weights")
    data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
    return {"model": _native_byte_order(data), "__author__": "Caffe2", "matching_heuristics": True}


def _pickled_globals(filename: str) -> List[str]:
    """The Python objects the first pickle in ``filename`` names (read with pickletools: nothing runs), as far
    as it can be parsed."""
    names: List[str] = []
    strings: List[str] = []
    with open(filename, "rb") as f:
        try:
            for opcode, argument, _ in pickletools.genops(f):
                if opcode.name in ("GLOBAL", "INST"):
                    names.append(str(argument).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(".".join(strings[-2:]))
                elif isinstance(argument, str):
                    strings.append(argument)
        except Exception:  # corrupt or truncated: what was parsed so far is the answer
            pass
    return names


def _check_zip_records(filename: str) -> None:
    """Every record of a torch zip archive declares at most what the file can hold: torch stores records
    uncompressed, so a larger declared size is a decompression bomb (or a lie) that would be allocated
    before anything is read."""
    if not zipfile.is_zipfile(filename):
        raise _truncated(filename)  # a zip archive's directory is at its end
    size = os.path.getsize(filename)
    try:
        with zipfile.ZipFile(filename) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise _corrupt(filename, error) from error
    for record in records:
        if record.file_size > size:
            raise _refused(
                filename, f"its record {record.filename!r} declares {record.file_size} bytes, more than the whole "
                f"file ({size} bytes) can hold: a compressed record that would expand (torch writes none), or a "
                "damaged archive"
            )


def read_torch_file(filename: str) -> Any:
    """A torch.save file (or a plain pickle), tensors and plain containers only."""
    with open(filename, "rb") as f:
        signature = f.read(4)
    if not signature:
        raise CheckpointFileError(f"Cannot load {filename}: it is empty (0 bytes)")
    if not signature.startswith(_TORCH_FILE_SIGNATURES):
        raise _corrupt(filename, "it is neither a torch zip archive nor a pickle")
    if signature.startswith(b"PK"):
        _check_zip_records(filename)
    try:
        loaded = torch.load(filename, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = str(error.__context__ or error)  # torch's own message hides the unpickler's
        names = _pickled_globals(filename)  # e.g. a plain pickle, whose opcodes torch's unpickler may not read
        if "GLOBAL" in detail or "allowlisted" in detail or names:
            raise _refused(
                filename, "it holds Python objects other than tensors and plain containers"
                f"{' (' + ', '.join(sorted(set(names))[:5]) + ')' if names else ''}, and unpickling them can "
                f"execute code ({detail})"
            ) from error
        raise _corrupt(filename, detail) from error
    except EOFError as error:  # a legacy (pickle) torch file that ends early
        raise _truncated(filename) from error
    except Exception as error:  # e.g. RuntimeError "PytorchStreamReader failed reading zip archive"
        raise _corrupt(filename, str(error).splitlines()[0]) from error
    return loaded


def read_pycls_file(filename: str) -> Dict[str, Any]:
    """A pycls .pyth checkpoint: its "model_state", names matched heuristically (as detectron2 does)."""
    data = read_torch_file(filename)
    if not isinstance(data, dict) or "model_state" not in data:
        raise CheckpointFileError(f"Cannot load .pyth file {filename}: pycls checkpoints must contain 'model_state'.")
    model_state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
    return {"model": model_state, "__author__": "pycls", "matching_heuristics": True}


def read_safetensors_file(filename: str) -> Dict[str, Any]:
    """A .safetensors file as {"model": tensors}. String metadata "__author__" and "matching_heuristics"
    ("True") carry over like in .pkl files; a plain state_dict without metadata loads by exact key names."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(filename, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            checkpoint: Dict[str, Any] = {"model": {k: f.get_tensor(k) for k in f.keys()}}
    except SafetensorError as error:
        if "incomplete metadata" in str(error) or "too small" in str(error):
            raise _truncated(filename) from error
        raise _corrupt(filename, error) from error
    if "__author__" in metadata:
        checkpoint["__author__"] = metadata["__author__"]
    if metadata.get("matching_heuristics") == "True":
        checkpoint["matching_heuristics"] = True
    return checkpoint


READERS: Dict[str, Callable[[str], Dict[str, Any]]] = {
    ".pkl": read_numpy_pickle_file,
    ".pyth": read_pycls_file,
    ".safetensors": read_safetensors_file,
}


def _check_keys(filename: str, mapping: Dict[Any, Any], what: str) -> None:
    others = [key for key in mapping if not isinstance(key, str)]
    if others:
        shown = ", ".join(f"{key!r} ({type(key).__name__})" for key in others[:5])
        raise _corrupt(filename, f"{what} have keys that are not strings: {shown}{', ...' if len(others) > 5 else ''}")


def _check_checkpoint(filename: str, checkpoint: Dict[str, Any]) -> None:
    """What the checkpointer reads next has the types it expects."""
    _check_keys(filename, checkpoint, "its top-level entries")
    if not isinstance(checkpoint.get("__author__", ""), str):
        raise _corrupt(filename, f"its '__author__' is a {type(checkpoint['__author__']).__name__}")
    if not isinstance(checkpoint.get("matching_heuristics", False), bool):
        raise _corrupt(filename, f"its 'matching_heuristics' is a {type(checkpoint['matching_heuristics']).__name__}")
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, dict):
        raise _corrupt(filename, f"its 'model' is a {type(state).__name__}, not a state_dict")
    _check_keys(filename, state, "its weights")
    for key, value in state.items():
        if not isinstance(value, (torch.Tensor, np.ndarray)):
            where = "its 'model'" if "model" in checkpoint else "it has no 'model' entry and its top level"
            raise _corrupt(filename, f"{where} holds {key!r} of type {type(value).__name__}, not a tensor")


def check_regular_file(filename: str) -> None:
    """``filename`` exists and is a regular file (or a link to one): a folder, a device such as /dev/zero
    (endless), a FIFO (blocks until written) or a socket is refused naming what it is."""
    kind = special_file_kind(filename)
    if kind:
        raise CheckpointFileError(
            f"Checkpoint {filename} is {kind}, not a file: checkpoints are read from regular files only"
        )
    if not os.path.exists(filename):
        raise CheckpointFileError(f"Checkpoint {filename} does not exist")


def read_checkpoint_file(filename: str) -> Dict[str, Any]:
    """Read a local checkpoint file with the reader of its extension (torch weights-only for unknown ones).

    Raises CheckpointFileError naming the file when it is missing, empty, truncated, corrupt, or needs
    objects whose unpickling could execute code."""
    check_regular_file(filename)
    if os.path.getsize(filename) == 0:
        raise CheckpointFileError(f"Cannot load {filename}: it is empty (0 bytes)")
    reader = READERS.get(os.path.splitext(filename)[1], read_torch_file)
    checkpoint = reader(filename)
    if not isinstance(checkpoint, dict):
        raise CheckpointFileError(f"Checkpoint {filename} holds a {type(checkpoint).__name__}, expected a dict.")
    _check_checkpoint(filename, checkpoint)
    return checkpoint
