"""Tests for reslab.data.unpickle: pickles carrying code are refused and provably never run,
plain data round-trips in every protocol, and memo bombs, numpy edge cases and fuzzed bytes raise
only reslab's errors."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import reslab.data as rd
from conftest import random_images, write_cifar
from reslab.errors import DataError, ReslabError, UnsafePickleError


def _write_sentinel(path: str) -> None:
    Path(path).write_text("pwned")


class _Evil:
    """Unpickling this would run ``os.system``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


class _EvilWriter:
    """Unpickling this would call a (module-level, importable) function that writes a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_write_sentinel, (self.path,))


@pytest.mark.parametrize("proto", [0, 2, 4, 5])
def test_safe_unpickle_refuses_code_and_proves_it_did_not_run(tmp_path: Path, proto: int) -> None:
    sentinel = tmp_path / "sentinel"
    payloads = {
        "posix.system": _Evil(f"touch {sentinel}"),
        "_write_sentinel": _EvilWriter(str(sentinel)),
        r"(__builtin__|builtins)\.eval": _reduce(eval, f"open({str(sentinel)!r}, 'w').write('x')"),
    }
    for refused, payload in payloads.items():
        blob = pickle.dumps({b"data": [1, 2], b"evil": payload}, protocol=proto)
        path = tmp_path / "batch"
        path.write_bytes(blob)
        with pytest.raises(UnsafePickleError, match=refused) as info:
            rd.safe_unpickle(path)
        assert str(path) in str(info.value) and isinstance(info.value, DataError)
        with pytest.raises(UnsafePickleError):
            rd.safe_unpickle(blob, "in-memory")
        assert not sentinel.exists()


def _reduce(func: object, arg: str) -> object:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (func, (arg,))

    return Payload()


def test_malicious_cifar_batch_is_refused(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar10", "py")
    sentinel = tmp_path / "sentinel"
    evil = {b"data": random_images(1, 0).reshape(1, -1), b"labels": _EvilWriter(str(sentinel))}
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps(evil))
    with pytest.raises(UnsafePickleError, match=r"data_batch_2.*_write_sentinel"):
        rd.load_dataset("cifar10", data_dir=tmp_path)
    assert not sentinel.exists()


@pytest.mark.parametrize("proto", [0, 1, 2, 3, 4, 5])
def test_safe_unpickle_round_trips_plain_data(tmp_path: Path, proto: int) -> None:
    obj = {
        b"data": np.arange(24, dtype=np.uint8).reshape(2, 12),
        "floats": np.linspace(0, 1, 5, dtype=np.float32),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
        "scalar": np.int64(7),
        "nested": [1, 2.5, (3, None), {"a": b"bytes", "b": "str"}, {1, 2}, frozenset({3})],
        "big": 2**70,
        "cplx": 1 + 2j,
        "flags": [True, False],
        "ba": bytearray(b"xy"),
    }
    blob = pickle.dumps(obj, protocol=proto)
    path = tmp_path / "ok.pkl"
    path.write_bytes(blob)
    for source in (blob, path, str(path), io.BytesIO(blob)):
        got = rd.safe_unpickle(source)
        assert set(got) == set(obj)
        for key in ("data", "floats", "fortran"):
            k = b"data" if key == "data" else key
            assert np.array_equal(got[k], obj[k]) and got[k].dtype == obj[k].dtype
        assert got["scalar"] == 7 and got["nested"] == obj["nested"] and got["big"] == 2**70
        assert got["cplx"] == 1 + 2j and got["ba"] == bytearray(b"xy")


def test_safe_unpickle_memo_bomb_and_garbage() -> None:
    # LONG_BINPUT with index 2**32-16 would make the C unpickler allocate a 32 GiB memo table.
    bomb = b"\x80\x02N" + b"r" + struct.pack("<I", 0xFFFFFFF0) + b"."
    with pytest.raises(DataError, match="memo index"):
        rd.safe_unpickle(bomb, "bomb.pkl")
    bytearray_bomb = b"\x80\x05\x96" + struct.pack("<Q", 1 << 60) + b"."
    with pytest.raises(DataError, match="bomb2"):
        rd.safe_unpickle(bytearray_bomb, "bomb2")
    for garbage in (b"", b"\x80\x04", b"not a pickle", b"\x80\x02}q\x00(U\x04datq"):
        with pytest.raises(DataError):
            rd.safe_unpickle(garbage, "garbage")
    codecs_abuse = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(DataError, match=r"_codecs\.encode is only allowed"):
        rd.safe_unpickle(codecs_abuse, "codecs")
    with pytest.raises(DataError, match="cannot read"):
        rd.safe_unpickle(Path("/nonexistent/file.pkl"))


def test_safe_unpickle_numpy_edge_cases() -> None:
    # One byte flipped (a NONE turned into POP) in a pickle of two numpy scalars gives numpy's
    # dtype.__setstate__ a 7-tuple; fed to numpy's own reconstructors this segfaults (numpy
    # 2.4, found by fuzzing). The stand-ins only read the dtype code and byte order.
    crasher = bytes.fromhex(
        "80037d7100285801000000667101636e756d70792e5f636f72652e6d756c746961727261790a7363616c"
        "61720a7102636e756d70790a64747970650a71035802000000663471048988877105527106284b035801"
        "0000003c71074e4e4e4affffffff4affffffff4b007471086243040000c03f710986710a52710b580100"
        "000069710c6802680358020000006938710d898887710e52710f284b0368074e304e4affffffff4affff"
        "ffff4b0074711062430803000000000000007111867112527113752e"
    )
    assert rd.safe_unpickle(crasher, "crasher") == {"f": 1.5, "i": 3}
    big_endian = np.arange(6, dtype=">f4").reshape(2, 3)
    got = rd.safe_unpickle(pickle.dumps(big_endian, protocol=2))
    assert got.dtype == np.dtype(">f4") and np.array_equal(got, big_endian) and got.flags.writeable
    for proto in (2, 5):
        with pytest.raises(DataError, match="not a plain numeric type"):
            rd.safe_unpickle(pickle.dumps(np.array([1, "a"], dtype=object), protocol=proto))
    with pytest.raises(DataError, match="not a plain numeric type"):
        rd.safe_unpickle(pickle.dumps(np.zeros(2, dtype=[("a", "u1"), ("b", "f4")])))
    with pytest.raises(DataError, match="not callable"):
        rd.safe_unpickle(b"\x80\x02cnumpy\nndarray\nK\x03\x85R.")  # numpy.ndarray((3,))
    blob = pickle.dumps(np.arange(4, dtype=np.int32), protocol=2)
    assert blob.count(b"K\x04\x85") == 1  # the shape (4,) in the array's state
    with pytest.raises(DataError, match="needs 20 bytes, the pickle has 16"):
        rd.safe_unpickle(blob.replace(b"K\x04\x85", b"K\x05\x85"))


_VALID_PICKLES = [
    pickle.dumps(obj, protocol=p)
    for p in (2, 4, 5)
    for obj in (
        {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), b"labels": [1, 2, 3], "s": "x"},
        {"f": np.float32(1.5), "i": np.int64(3), "a": np.ones((2, 2), dtype=">f8")},
    )
]


@st.composite
def _mutated_pickles(draw: st.DrawFn) -> bytes:
    blob = bytearray(draw(st.sampled_from(_VALID_PICKLES)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(blob) - 1))
        blob[pos] = draw(st.integers(0, 255))
    return bytes(blob[: draw(st.integers(0, len(blob)))])


@given(st.one_of(st.binary(max_size=300), _mutated_pickles()))
def test_fuzz_safe_unpickle_only_raises_reslab_errors(blob: bytes) -> None:
    with contextlib.suppress(ReslabError):
        rd.safe_unpickle(blob, "fuzz")
