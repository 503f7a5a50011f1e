"""Tests for reslab.data.download, through the dataset loaders that use it.

Downloads: the one network primitive (``reslab.data.download._fetch``) is replaced by a fake
mirror serving small genuine-looking files. Every file any loader downloads is refused when its
bytes do not match the published md5, before it is parsed or extracted, and nothing is left
that a later run would read; with the right md5 the same path downloads, extracts and loads.
A test first finds, by behaviour over every name in ``DATASETS``, which datasets download, so a
new download path cannot go untested.

Archives: hostile members (``..``, absolute, drive-letter and backslash paths, links, devices,
FIFOs), oversized and corrupt archives are refused with nothing left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest

import reslab.data as rd
from conftest import tar_folder, tar_member, tar_with, write_cifar, write_mnist
from reslab.data import cifar, download, idx
from reslab.errors import DataError

# The official mirrors, and the files each dataset downloads from them, in download order.
_MIRRORS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
    "cifar100": "https://www.cs.toronto.edu/~kriz/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
_IDX_GZ = [f"{stem}.gz" for stem in idx._IDX_FILES]
_FILES = {
    "cifar10": ["cifar-10-binary.tar.gz"],
    "cifar100": ["cifar-100-binary.tar.gz"],
    "mnist": _IDX_GZ,
    "fashion-mnist": _IDX_GZ,
}
# Their published md5s: the CIFAR page's, and torchvision's for (Fashion-)MNIST.
_PUBLISHED = {
    "cifar10": ["c32a1d4ab5d03f1284b67883e8d87530"],
    "cifar100": ["03b5dce01913d631647c71ecec9e9cb8"],
    "mnist": [
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3",
        "ec29112dd5afa0611ce80d1b7f02629c",
    ],
    "fashion-mnist": [
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79",
        "bb300cfdad3c16e7a12a480ee83cd310",
    ],
}
# Where each dataset keeps its downloads under the data folder.
_FOLDER = {"cifar10": "", "cifar100": "", "mnist": "mnist/", "fashion-mnist": "fashion-mnist/"}


def _md5(blob: bytes) -> str:
    return hashlib.md5(blob, usedforsecurity=False).hexdigest()


def _mirror_files(name: str, src: Path) -> dict[str, bytes]:
    """What the mirror serves for ``name``, made small: file name -> bytes.

    ``src`` is left a data folder that holds the same dataset, to compare with what loads.
    """
    if name in cifar._CIFAR:
        spec = cifar._CIFAR[name]
        write_cifar(src, name, "bin")
        tar_folder(src / spec.bin_archive, src / spec.bin_dir)
        return {spec.bin_archive: (src / spec.bin_archive).read_bytes()}
    write_mnist(src / _FOLDER[name], gz=True)
    return {f: (src / _FOLDER[name] / f).read_bytes() for f in _IDX_GZ}


def _checksums(name: str) -> list[str]:
    """The md5s reslab checks ``name``'s downloads against, in download order."""
    if name in cifar._CIFAR:
        return [cifar._CIFAR[name].bin_md5]
    return list(idx._IDX[name].md5)


def _set_checksums(mp: pytest.MonkeyPatch, name: str, sums: list[str]) -> None:
    if name in cifar._CIFAR:
        spec = cifar._CIFAR[name]
        mp.setitem(cifar._CIFAR, name, dataclasses.replace(spec, bin_md5=sums[0]))
    else:
        mp.setitem(idx._IDX, name, dataclasses.replace(idx._IDX[name], md5=tuple(sums)))


def _serve(mp: pytest.MonkeyPatch, name: str, served: dict[str, bytes]) -> list[str]:
    """Replace the network with a mirror of ``served``; returns the URLs fetched, in order."""
    fetched: list[str] = []

    def fetch(url: str, dest: Path) -> None:
        fetched.append(url)
        dest.write_bytes(served[url.removeprefix(_MIRRORS[name])])

    mp.setattr(download, "_fetch", fetch)
    return fetched


def _files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _entries(root: Path) -> list[str]:
    """Everything under ``root``, folders with a trailing slash."""
    return sorted(p.relative_to(root).as_posix() + "/" * p.is_dir() for p in root.rglob("*"))


# ---------------------------------------------------------------------------------------------
# Downloads


def test_every_dataset_that_downloads_is_tested_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloading = set()
    for name in rd.DATASETS:
        called: list[str] = []

        def offline(url: str, dest: Path, called: list[str] = called) -> None:
            called.append(url)
            raise OSError("offline")

        monkeypatch.setattr(download, "_fetch", offline)
        with contextlib.suppress(DataError):
            rd.load_dataset(name, data_dir=tmp_path / name)
        if called:
            downloading.add(name)
    assert downloading == set(_FILES)
    # Every checksum reslab publishes, used or not, is an md5 hex digest.
    specs = [*cifar._CIFAR.values()]
    sums = [s.py_md5 for s in specs] + [s.bin_md5 for s in specs]
    sums += [m for s in idx._IDX.values() for m in s.md5]
    assert len(sums) == 12 and all(re.fullmatch(r"[0-9a-f]{32}", m) for m in sums)


@pytest.mark.parametrize(
    ("name", "index", "junk"),
    [(name, i, False) for name, files in _FILES.items() for i in range(len(files))]
    + [(name, 0, True) for name in _FILES],
)
def test_a_wrong_checksum_is_refused_before_the_file_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, index: int, junk: bool
) -> None:
    """Download ``index`` of ``name`` fails its published md5; the files before it pass theirs.

    With genuine-looking bytes the refusal cannot come from their content; with junk ("a
    captive portal's page") the error is the checksum, not a parse error, so the check comes
    before the file is read.
    """
    served = _mirror_files(name, tmp_path / "mirror")
    files = _FILES[name]
    if junk:
        served[files[index]] = b"a captive portal's page"
    checked = _checksums(name)
    _set_checksums(
        monkeypatch,
        name,
        [_md5(served[f]) if k < index else checked[k] for k, f in enumerate(files)],
    )
    fetched = _serve(monkeypatch, name, served)
    root = tmp_path / "root"
    with pytest.raises(DataError) as info:
        rd.load_dataset(name, data_dir=root)
    message = str(info.value)
    assert message.startswith(f"checksum mismatch for {files[index]} from "), message
    assert f"expected md5 {_PUBLISHED[name][index]}, got {_md5(served[files[index]])}" in message
    assert "\n" not in message
    assert fetched == [_MIRRORS[name] + f for f in files[: index + 1]]
    # The refused file is gone (no temporary file either) and nothing was extracted: a later
    # offline run finds only the files that passed their check.
    kept = [_FOLDER[name] + f for f in files[:index]]
    assert _entries(root) == sorted([_FOLDER[name]] * bool(_FOLDER[name]) + kept)
    with pytest.raises(DataError, match="not found"):
        rd.load_dataset(name, data_dir=root, download=False)


@pytest.mark.parametrize("name", list(_FILES))
def test_a_download_with_the_right_checksum_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    served = _mirror_files(name, tmp_path / "mirror")
    _set_checksums(monkeypatch, name, [_md5(served[f]) for f in _FILES[name]])
    fetched = _serve(monkeypatch, name, served)
    root = tmp_path / "root"
    ds = rd.load_dataset(name, data_dir=root)
    assert fetched == [_MIRRORS[name] + f for f in _FILES[name]]
    mirror = tmp_path / "mirror"
    if name in cifar._CIFAR:
        # Extracted, and the archive kept, with nothing else (no temporary folder) left.
        folder = cifar._CIFAR[name].bin_dir
        assert sorted(p.name for p in root.iterdir()) == sorted([folder, *_FILES[name]])
        assert _files_under(root / folder) == _files_under(mirror / folder)
    else:
        assert _files_under(root) == sorted(_FOLDER[name] + f for f in _FILES[name])
    # What was served is what loads, and a second run reads it from disk without the network.
    expected = rd.load_dataset(name, data_dir=mirror, download=False)
    again = rd.load_dataset(name, data_dir=root, download=False)
    for got in (ds, again):
        assert np.array_equal(got.train_images.numpy(), expected.train_images.numpy())
        assert np.array_equal(got.test_labels.numpy(), expected.test_labels.numpy())
    assert len(fetched) == len(_FILES[name])


@pytest.mark.parametrize("name", list(_FILES))
def test_download_failure_explains_manual_route(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    def offline(url: str, dest: Path) -> None:
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(download, "_fetch", offline)
    first = _FILES[name][0]
    with pytest.raises(DataError) as info:
        rd.load_dataset(name, data_dir=tmp_path)
    assert str(info.value) == (
        f"could not download {_MIRRORS[name]}{first} (<urlopen error no route to host>); "
        f"download it by hand and save it as {tmp_path / _FOLDER[name] / first}, or point "
        "--data-dir (data_dir= in Python) or RESLAB_DATA at a folder that has it"
    )
    assert _entries(tmp_path) == ([_FOLDER[name]] if _FOLDER[name] else [])


# ---------------------------------------------------------------------------------------------
# Archives


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ((tar_member("cifar-10-batches-bin/../../escape.txt"), b"x"), "outside"),
        ((tar_member("/tmp/reslab-absolute.txt"), b"x"), "outside"),
        ((tar_member("..\\..\\escape.txt"), b"pwned"), "outside"),
        ((tar_member("cifar\\..\\..\\escape.txt"), b"pwned"), "outside"),
        ((tar_member("./../escape.txt"), b"pwned"), "outside"),
        ((tar_member("C:escape.txt"), b"pwned"), "outside"),
        ((tar_member("C:/escape.txt"), b"pwned"), "outside"),
        ((tar_member("//escape.txt"), b"pwned"), "outside"),
        ((tar_member("cifar-10-batches-bin/link", tarfile.SYMTYPE, "/etc/passwd"), None), "link"),
        ((tar_member("cifar-10-batches-bin/up", tarfile.SYMTYPE, ".."), None), "link"),
        ((tar_member("cifar-10-batches-bin/hard", tarfile.LNKTYPE, "x"), None), "link"),
        ((tar_member("cifar-10-batches-bin/dev", tarfile.CHRTYPE), None), "device"),
        ((tar_member("cifar-10-batches-bin/fifo", tarfile.FIFOTYPE), None), "FIFO"),
    ],
    ids=[
        "dot-dot",
        "absolute",
        "backslash",
        "backslash-nested",
        "dot-slash-dot-dot",
        "drive",
        "drive-slash",
        "unc",
        "symlink",
        "symlink-to-parent",
        "hardlink",
        "device",
        "fifo",
    ],
)
def test_hostile_archive_members_are_refused(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], message: str
) -> None:
    root = tmp_path / "deep" / "root"
    root.mkdir(parents=True)
    ok = (tar_member("cifar-10-batches-bin/test_batch.bin"), bytes(3073))
    tar_with(root / "cifar-10-binary.tar.gz", ok, member)
    with pytest.raises(DataError, match=message) as info:
        rd.load_dataset("cifar10", data_dir=root)
    assert str(info.value).startswith(f"refusing to extract {root / 'cifar-10-binary.tar.gz'}: ")
    assert [p for p in tmp_path.rglob("*escape*")] == []
    assert not Path("/tmp/reslab-absolute.txt").exists()
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-binary.tar.gz"]


def test_oversized_archive_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "_MAX_EXTRACT_BYTES", 5000)
    tar_with(
        tmp_path / "cifar-10-binary.tar.gz",
        (tar_member("cifar-10-batches-bin/test_batch.bin"), bytes(3073)),
        (tar_member("cifar-10-batches-bin/data_batch_1.bin"), bytes(3073)),
    )
    with pytest.raises(DataError, match="unpacks to more than"):
        rd.load_dataset("cifar10", data_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-binary.tar.gz"]


def test_corrupt_archive(tmp_path: Path) -> None:
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match=r"cifar-100-python\.tar\.gz is not a readable"):
        rd.load_dataset("cifar100", data_dir=tmp_path)
    (tmp_path / "cifar-100-python.tar.gz").unlink()
    tar_with(tmp_path / "cifar-100-python.tar.gz", (tar_member("other/file"), b"x"))
    with pytest.raises(DataError, match="has no cifar-100-python/ folder"):
        rd.load_dataset("cifar100", data_dir=tmp_path)
