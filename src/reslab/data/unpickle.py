"""A restricted unpickler for the CIFAR python batches: plain data in, nothing ever called.

The CIFAR "python version" files are pickles, and unpickling runs whatever functions the file
names. :func:`safe_unpickle` follows the "Restricting Globals" recipe of Python's :mod:`pickle`
documentation: its :class:`_RestrictedUnpickler` resolves only the globals in
:data:`_ALLOWED_GLOBALS` (numpy's array, dtype and scalar reconstructors and a few builtin
types) and refuses every other one with :class:`~reslab.errors.UnsafePickleError` before
anything runs. Two more layers came from fuzzing:

* numpy's own reconstructors trust their arguments and can crash the process on a corrupted
  pickle, so the allowed globals resolve to stand-ins that only record their arguments;
  :func:`_materialize` then checks them and builds the arrays from their bytes;
* the C unpickler sizes its memo table and some buffers from numbers in the file before checking
  them, so :func:`_prescan_pickle` walks the opcodes first and refuses such pickles.

And one from budgeting (issue 20): a memo lets a small pickle name one row a million times,
which costs nothing to unpickle but gigabytes once a reader turns it into an array.
:func:`expanded_bytes` measures the data as if every shared object were copied, and
:func:`safe_unpickle` refuses a pickle that expands past
:func:`reslab.checks.check_inflation`'s budget.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import struct
from pathlib import Path
from typing import IO, Any

import numpy as np

from reslab import checks
from reslab.errors import DataError, ReslabError, UnsafePickleError

# numpy's own reconstructors (ndarray.__setstate__, dtype.__setstate__, multiarray.scalar) trust
# their arguments: fed a corrupted pickle they can segfault the process (found by fuzzing
# mutated pickles). So the globals a pickle names for numpy data resolve to the stand-ins below,
# which only record their arguments; _materialize then checks them and builds the arrays with
# np.frombuffer, for plain numeric dtypes only.
_SAFE_DTYPES = frozenset(
    {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"}
)


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value if isinstance(value, str) else None


class _NdarrayMark:
    """Stands for the ``numpy.ndarray`` class, which pickles only pass to ``_reconstruct``."""


_NDARRAY = _NdarrayMark()


class _DtypeStub:
    """Records ``numpy.dtype(spec, align, copy)`` and its BUILD state (for the byte order)."""

    def __init__(self, spec: object = None, *_flags: object) -> None:
        self.spec = spec
        self.state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state

    def resolve(self) -> np.dtype[Any]:
        spec = _text(self.spec)
        if spec not in _SAFE_DTYPES:
            raise pickle.UnpicklingError(f"numpy dtype {self.spec!r} is not a plain numeric type")
        dtype = np.dtype(spec)
        state = self.state
        order = _text(state[1]) if isinstance(state, tuple) and len(state) > 1 else None
        if order == "<":
            dtype = dtype.newbyteorder("<")
        elif order == ">":
            dtype = dtype.newbyteorder(">")
        elif order not in (None, "|", "="):
            raise pickle.UnpicklingError(f"numpy dtype byte order {order!r} is not valid")
        return dtype


def _array_from_bytes(buffer: object, dtype: object, shape: object, fortran: bool) -> np.ndarray:
    if not isinstance(dtype, _DtypeStub):
        raise pickle.UnpicklingError("numpy array without a numpy dtype")
    dt = dtype.resolve()
    if not (isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise pickle.UnpicklingError(f"numpy array shape {shape!r} is not a tuple of sizes")
    if isinstance(buffer, pickle.PickleBuffer):
        buffer = bytes(buffer.raw())
    if not isinstance(buffer, (bytes, bytearray)):
        raise pickle.UnpicklingError("numpy array data is not bytes")
    count = math.prod(shape)
    if len(buffer) != count * dt.itemsize:
        raise pickle.UnpicklingError(
            f"numpy array of shape {shape} and dtype {dt} needs {count * dt.itemsize} bytes, "
            f"the pickle has {len(buffer)}"
        )
    flat = np.frombuffer(buffer, dtype=dt, count=count)
    return flat.reshape(shape, order="F" if fortran else "C").copy(order="K")


class _ArrayStub:
    """Records ``_reconstruct(ndarray, shape, typecode)`` and the BUILD state with the data."""

    def __init__(self) -> None:
        self.state: object = None

    def __setstate__(self, state: object) -> None:
        self.state = state

    def build(self) -> np.ndarray:
        state = self.state
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]  # numpy writes (version, shape, dtype, is_fortran, data)
        if not (isinstance(state, tuple) and len(state) == 4):
            raise pickle.UnpicklingError("numpy array without a valid state")
        shape, dtype, fortran, data = state
        return _array_from_bytes(data, dtype, shape, bool(fortran))


def _reconstruct_stub(subtype: object, *_args: object) -> _ArrayStub:
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("only plain numpy.ndarray objects are allowed")
    return _ArrayStub()


def _scalar_stub(dtype: object, data: object = None) -> Any:
    return _array_from_bytes(data, dtype, (), False)[()]


def _frombuffer_stub(buffer: object, dtype: object, shape: object, order: object) -> np.ndarray:
    return _array_from_bytes(buffer, dtype, shape, _text(order) == "F")


def _latin1_encode(text: object, encoding: object = "latin1") -> bytes:
    # Protocol <= 2 pickles write bytes as _codecs.encode(str, "latin1"); allow exactly that use.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed as (str, 'latin1')")
    return text.encode("latin-1")


def _bytearray(data: object = b"", encoding: object = None) -> bytearray:
    # bytearray(n) would allocate n bytes; pickles only ever pass the content.
    if isinstance(data, (bytes, bytearray)) and encoding is None:
        return bytearray(data)
    return bytearray(_latin1_encode(data, encoding))


# The only globals a pickle may name: numpy's reconstructors for arrays, dtypes and scalars
# (numpy 1.x and 2.x spellings, mapped to the stand-ins above) and a few builtin types.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DtypeStub,
    ("_codecs", "encode"): _latin1_encode,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = _reconstruct_stub
    _ALLOWED_GLOBALS[(f"{_core}.multiarray", "scalar")] = _scalar_stub
    _ALLOWED_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = _frombuffer_stub
for _builtins in ("builtins", "__builtin__"):
    _ALLOWED_GLOBALS[(_builtins, "set")] = set
    _ALLOWED_GLOBALS[(_builtins, "frozenset")] = frozenset
    _ALLOWED_GLOBALS[(_builtins, "complex")] = complex
    _ALLOWED_GLOBALS[(_builtins, "bytearray")] = _bytearray


def _materialize(root: Any) -> Any:
    """Replace the array and dtype stand-ins in the unpickled containers with numpy objects.

    Lists and dicts are updated in place (so shared and self-referencing ones stay so), tuples
    rebuilt; set members and dict keys are hashable, so they cannot be arrays and are left.
    """
    seen: dict[int, Any] = {}

    def visit(obj: Any) -> Any:
        key = id(obj)
        if key in seen:
            return seen[key]
        if isinstance(obj, _ArrayStub):
            seen[key] = obj.build()
        elif isinstance(obj, _DtypeStub):
            seen[key] = obj.resolve()
        elif isinstance(obj, list):
            seen[key] = obj
            obj[:] = [visit(v) for v in obj]
        elif isinstance(obj, dict):
            seen[key] = obj
            for k, v in obj.items():
                obj[k] = visit(v)
        elif isinstance(obj, tuple):
            seen[key] = tuple(visit(v) for v in obj)
        else:
            return obj
        return seen[key]

    return visit(root)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], source: str) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        obj = _ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"refusing to unpickle {self._source}: it asks for the global {module}.{name}; "
                "only containers, numbers, strings, bytes and numpy arrays are allowed"
            )
        return obj


# Opcode byte -> (name, argument size), from pickletools' table: a size >= 0 is fixed, the
# negative TAKEN_FROM_ARGUMENT* sizes are a length prefix, UP_TO_NEWLINE a text line.
_OPCODES = {
    op.code.encode("latin-1")[0]: (op.name, op.arg.n if op.arg is not None else 0)
    for op in pickletools.opcodes
}
_LENGTH_PREFIX = {
    pickletools.TAKEN_FROM_ARGUMENT1: ("<B", 1),
    pickletools.TAKEN_FROM_ARGUMENT4: ("<i", 4),
    pickletools.TAKEN_FROM_ARGUMENT4U: ("<I", 4),
    pickletools.TAKEN_FROM_ARGUMENT8U: ("<Q", 8),
}


def _prescan_pickle(data: bytes, source: str) -> None:
    """Walk the opcodes without executing any, rejecting what the C unpickler would over-allocate.

    The C unpickler sizes its memo table from PUT indices and some buffers from length prefixes
    before checking them against the input, so a few crafted bytes can demand gigabytes. A real
    pickler numbers memo entries consecutively and its length prefixes fit in the file. This
    walk only measures arguments (``pickletools.genops`` would decode each one and takes
    seconds on a CIFAR batch).
    """

    def corrupt(why: str) -> DataError:
        return DataError(f"{source} is not a readable pickle ({why}); the file is corrupt")

    pos, n_ops, end = 0, 0, len(data)
    while True:
        if pos >= end:
            raise corrupt("it ends before the STOP opcode")
        code = data[pos]
        if code not in _OPCODES:
            raise corrupt(f"unknown opcode {bytes([code])!r} at byte {pos}")
        name, size = _OPCODES[code]
        pos += 1
        n_ops += 1
        if name == "STOP":
            return
        arg_start = pos
        if size >= 0:
            pos += size
        elif size == pickletools.UP_TO_NEWLINE:
            lines = 2 if name in ("GLOBAL", "INST") else 1
            for _ in range(lines):
                newline = data.find(b"\n", pos)
                if newline < 0:
                    raise corrupt(f"unterminated {name} argument at byte {arg_start}")
                pos = newline + 1
        else:
            fmt, width = _LENGTH_PREFIX[size]
            if pos + width > end:
                raise corrupt(f"truncated {name} length at byte {pos}")
            (length,) = struct.unpack_from(fmt, data, pos)
            if length < 0:
                raise corrupt(f"negative {name} length at byte {pos}")
            pos += width + length
        if pos > end:
            raise corrupt(f"{name} at byte {arg_start - 1} runs past the end of the data")
        if name in ("PUT", "BINPUT", "LONG_BINPUT"):
            raw = data[arg_start:pos]
            if name == "BINPUT":
                index = raw[0]
            elif name == "LONG_BINPUT":
                (index,) = struct.unpack("<I", raw)
            else:
                try:
                    index = int(raw)
                except ValueError:
                    raise corrupt(f"bad PUT index {raw[:20]!r}") from None
            # A real pickler never needs more memo slots than it has written opcodes.
            if not 0 <= index <= n_ops:
                raise corrupt(f"memo index {index} at opcode {n_ops} is out of range")


def safe_unpickle(
    source: str | os.PathLike[str] | bytes | bytearray | IO[bytes], source_name: str | None = None
) -> Any:
    """Unpickle plain data (containers, numbers, str, bytes, numpy arrays) and nothing else.

    ``source`` is a path, the pickle's bytes, or a binary file object; ``source_name`` names it
    in errors. A pickle that names any other global (``os.system``, ``builtins.eval``...) raises
    :class:`~reslab.errors.UnsafePickleError` before anything is called; a malformed one raises
    :class:`~reslab.errors.DataError`. numpy arrays and scalars come back as real numpy objects
    but are rebuilt by reslab from their bytes, and only for bool/int/uint/float/complex dtypes
    (object, string and structured arrays are refused). Strings pickled by Python 2 load as
    ``bytes`` (``encoding="bytes"``), as the CIFAR python batches expect.
    """
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        name = source_name or "pickle data"
    elif isinstance(source, (str, os.PathLike)):
        name = source_name or str(source)
        data = _read_file(Path(source), name)
    else:
        name = source_name or str(getattr(source, "name", "pickle stream"))
        try:
            data = source.read()
        except OSError as exc:
            raise DataError(f"cannot read {name}: {exc.strerror or exc}") from exc
    _prescan_pickle(data, name)
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), name).load()
        checks.check_inflation(expanded_bytes(obj), len(data), name, error=DataError)
        return _materialize(obj)
    except ReslabError:
        raise
    except Exception as exc:
        # Whatever the allowed reconstructors or the unpickler raise on malformed input
        # (UnpicklingError, EOFError, ValueError, TypeError, MemoryError...) is a data problem.
        raise DataError(
            f"{name} is not a readable pickle ({type(exc).__name__}: {exc}); the file is corrupt"
        ) from exc


def _read_file(path: Path, name: str) -> bytes:
    """A regular file's bytes (never a FIFO or a device), if the memory for them is there."""
    with checks.open_input(path, "pickle file", error=DataError) as f:
        size = os.fstat(f.fileno()).st_size
        checks.check_memory(size, name, "free some memory", error=DataError)
        try:
            return f.read()
        except OSError as exc:
            raise DataError(f"cannot read {name}: {exc.strerror or exc}") from exc


def expanded_bytes(root: Any) -> int:
    """Bytes the unpickled data takes with every shared object counted each time it appears:
    what ``np.asarray`` of nested lists allocates (8 bytes a number), an array's (or its
    stand-in's) data, a string's length. Each object is measured once (memoised by id), so a
    row shared a million times costs one lookup each; a cycle counts once.
    """
    sizes: dict[int, int] = {}

    def size(obj: Any) -> int:
        key = id(obj)
        if key in sizes:
            return sizes[key]
        if isinstance(obj, (bytes, bytearray, str)):
            return len(obj)
        if isinstance(obj, _ArrayStub):
            state = obj.state
            data = state[-1] if isinstance(state, tuple) and state else b""
            return len(data) if isinstance(data, (bytes, bytearray)) else 8
        if isinstance(obj, np.ndarray):
            return int(obj.nbytes)
        if isinstance(obj, dict):
            items: list[Any] = [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            items = list(obj)
        else:
            return 8
        sizes[key] = 0  # a cycle back here counts nothing more
        sizes[key] = sum(size(v) for v in items)
        return sizes[key]

    return size(root)
