"""An unpickler for .pkl checkpoints (detectron2 model zoo, converted ImageNet weights) that admits only
what a pickle of numpy arrays needs: plain numeric/bool arrays and scalars, dicts, lists, tuples, numbers
and strings.

Admitting the numpy callables themselves is not enough: a pickle may *call* ``numpy.ndarray`` with an
object dtype and a buffer read from the file (the elements are then addresses from the file), or give a
``numpy.dtype`` forged fields, subarrays or object members through BUILD (``__setstate__``). So every
numpy global resolves to a wrapper that accepts plain numeric/bool dtypes only and exactly the arguments
numpy's own pickles use; BUILD is only accepted on a dtype (its byte order, nothing else) and on an
array made by ``_reconstruct`` (shape, dtype and raw bytes of the right length). The result is checked
once more, every array and scalar, before the caller reads anything.

This is the pure-Python unpickler of the standard library (its BUILD opcode can be replaced; the C one's
cannot). Checkpoints hold a few large byte strings, so it is not noticeably slower.
"""
import codecs
import collections
import math
import pickle
from typing import Any, Callable, Dict, Tuple

import numpy as np

__all__ = ["UnsafePickleError", "load_numpy_pickle"]

# numpy's own pickling functions (module paths differ between numpy 1.x and 2.x)
_NUMPY_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]
_NUMPY_SCALAR = np.float32(0).__reduce__()[0]
_NUMPY_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]

# Plain numbers: bool, signed/unsigned integers, floats, complex. No objects, strings, void or datetimes.
PLAIN_DTYPE_KINDS = "biufc"


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something beyond plain numpy arrays and containers."""


def _refuse(what: str) -> UnsafePickleError:
    return UnsafePickleError(
        f"it needs {what}, and unpickling arbitrary objects can execute code or read memory. Only numpy "
        "arrays and scalars of plain numeric/bool dtypes, dicts, lists, tuples, numbers and strings are "
        "accepted in .pkl checkpoints"
    )


def _plain_dtype(dtype: Any) -> np.dtype:
    if not isinstance(dtype, np.dtype):
        raise _refuse(f"a numpy dtype that is a {type(dtype).__name__}")
    if dtype.kind not in PLAIN_DTYPE_KINDS or dtype.fields is not None or dtype.subdtype is not None or dtype.hasobject:
        raise _refuse(f"the numpy dtype {dtype!r} (only plain numeric/bool dtypes are accepted)")
    return dtype


def _raw_bytes(data: Any, dtype: np.dtype, shape: Tuple[int, ...], what: str) -> None:
    """``data`` holds exactly the bytes of an array of ``shape`` and ``dtype``."""
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise _refuse(f"{what} with the shape {shape!r}")
    if isinstance(data, str):  # Python 2 pickles read with encoding="latin1": one char per byte
        size = len(data)
    elif isinstance(data, (bytes, bytearray, pickle.PickleBuffer)):
        size = memoryview(data).nbytes
    else:
        raise _refuse(f"{what} whose data is a {type(data).__name__}")
    expected = math.prod(shape) * dtype.itemsize
    if size != expected:
        raise _refuse(f"{what} of shape {shape} and dtype {dtype} with {size} bytes of data instead of {expected}")


class _NdarrayName:
    """What ``numpy.ndarray`` resolves to: the array type `_reconstruct` expects, never a callable
    (calling ndarray(shape, dtype, buffer) builds an array on any buffer, object dtype included)."""

    def __call__(self, *args, **kwargs):
        raise _refuse("a call of numpy.ndarray")


_NDARRAY = _NdarrayName()


def _dtype(spec: Any, align: bool = False, copy: bool = True) -> np.dtype:
    if not isinstance(spec, str):
        raise _refuse(f"numpy.dtype({spec!r})")
    # copy=True always: numpy's builtin dtypes are shared singletons that a later BUILD must not change
    return _plain_dtype(np.dtype(spec, align=bool(align), copy=True))


def _reconstruct(array_type: Any, shape: Any, typecode: Any) -> np.ndarray:
    if array_type is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):  # "b": Python 2 pickles
        raise _refuse(f"numpy _reconstruct({array_type!r}, {shape!r}, {typecode!r})")
    return _NUMPY_RECONSTRUCT(np.ndarray, (0,), b"b")


def _scalar(dtype: Any, data: Any) -> np.generic:
    dtype = _plain_dtype(dtype)
    _raw_bytes(data, dtype, (), "a numpy scalar")
    return _NUMPY_SCALAR(dtype, data)


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    dtype = _plain_dtype(dtype)
    _raw_bytes(buffer, dtype, shape, "a numpy array")
    if order not in ("C", "F"):
        raise _refuse(f"a numpy array in memory order {order!r}")
    return _NUMPY_FROMBUFFER(buffer, dtype, shape, order)


def _encode(text: Any, encoding: Any = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 pickles bytes under protocol 2 as _codecs.encode(latin-1 text, "latin1")
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise _refuse(f"_codecs.encode(..., {encoding!r})")
    return codecs.encode(text, "latin1")


def _empty_bytes(*args: Any) -> bytes:
    # protocol 2 pickles an empty bytes object (the data of an empty array) as a call of bytes() without
    # arguments; bytes(n) would allocate n bytes, bytes(iterable) read anything
    if args:
        raise _refuse(f"bytes() called with {len(args)} argument(s)")
    return b""


_SAFE_GLOBALS: Dict[Tuple[str, str], Any] = {
    **{(module, "_reconstruct"): _reconstruct for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _scalar for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "_frombuffer"): _frombuffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
    **{(module, "bytes"): _empty_bytes for module in ("__builtin__", "builtins")},
    ("collections", "OrderedDict"): collections.OrderedDict,
}


def _build_dtype(dtype: np.dtype, state: Any) -> None:
    # numpy pickles a dtype as dtype(spec) + BUILD((3, byteorder, None, None, None, -1, -1, 0)); accept
    # exactly that state (any byte order), nothing that adds fields, subarrays or flags.
    byteorder = state[1] if isinstance(state, tuple) and len(state) == 8 else None
    if byteorder not in ("<", ">", "|") or state != dtype.newbyteorder(byteorder).__reduce__()[2]:
        raise _refuse(f"a numpy dtype given the state {state!r}")
    dtype.__setstate__(state)
    _plain_dtype(dtype)


def _build_array(array: np.ndarray, state: Any) -> None:
    # numpy's array state: (version, shape, dtype, is_fortran, raw data); the version is absent in old pickles
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise _refuse(f"a numpy array given a state of type {type(state).__name__}")
    shape, dtype, is_fortran, data = state[-4:]
    _plain_dtype(dtype)
    if not isinstance(is_fortran, bool):
        raise _refuse(f"a numpy array given the memory order flag {is_fortran!r}")
    _raw_bytes(data, dtype, shape, "a numpy array")
    array.__setstate__(state)


class _NumpyOnlyUnpickler(pickle._Unpickler):
    """Resolves only `_SAFE_GLOBALS`; BUILD only on dtypes and arrays (see the module docstring)."""

    dispatch: Dict[int, Callable] = dict(pickle._Unpickler.dispatch)

    def __init__(self, file):
        super().__init__(file, encoding="latin1")  # latin1: Python 2 (Caffe2 / Detectron1) pickles

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise _refuse(f"the Python object '{module}.{name}'") from None

    def load_build(self) -> None:
        state = self.stack.pop()
        target = self.stack[-1]
        if isinstance(target, np.dtype):
            _build_dtype(target, state)
        elif type(target) is np.ndarray:
            _build_array(target, state)
        else:
            raise _refuse(f"to set the state of a {type(target).__name__}")

    dispatch[pickle.BUILD[0]] = load_build


_PLAIN_LEAVES = (str, bytes, int, float, complex, bool, type(None))


def _check_every_value(loaded: Any) -> None:
    """Every array and scalar in the result has a plain dtype; containers hold only admitted values."""
    pending, seen = [loaded], set()
    while pending:
        value = pending.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, dict):  # dict and OrderedDict
            pending.extend(value.keys())
            pending.extend(value.values())
        elif type(value) in (list, tuple):
            pending.extend(value)
        elif type(value) is np.ndarray or isinstance(value, np.generic):
            _plain_dtype(value.dtype)
        elif not isinstance(value, _PLAIN_LEAVES):
            raise _refuse(f"a value of type {type(value).__name__}")


def load_numpy_pickle(file) -> Any:
    """Unpickle the open binary ``file`` admitting only plain numpy arrays and containers.

    Raises UnsafePickleError for anything else; other errors (truncated or corrupt data) propagate as the
    unpickler raises them."""
    loaded = _NumpyOnlyUnpickler(file).load()
    _check_every_value(loaded)
    return loaded
