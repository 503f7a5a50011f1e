"""Atomic writes replace only regular files: a device node, a directory or a FIFO named as an
output survives, and every output error is one line (issue 11, class 5)."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from reslab.cli import main
from reslab.errors import ReslabError
from reslab.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from reslab.models import create_model
from reslab.weights import save_weights

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")


def _node(path: Path, like: str) -> Path:
    """A character device node with the device number of ``like`` (e.g. /dev/null)."""
    os.mknod(path, 0o666 | stat.S_IFCHR, os.stat(like).st_rdev)
    return path


def _weights(folder: Path) -> Path:
    net = create_model("resnet8", in_channels=1, width=0.25)
    return save_weights(net, folder / "w.safetensors")


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("reslab: error: "), err
    return err


@root_only
def test_eval_json_to_a_device_node_leaves_the_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On main this exited 0 and replaced the node by a JSON file (as root: /dev/null too)."""
    weights = save_weights(
        create_model("resnet8", in_channels=1, width=0.25), tmp_path / "w.safetensors"
    )
    null = _node(tmp_path / "null", os.devnull)
    rdev = null.stat().st_rdev
    assert main(["eval", "--weights", str(weights), "--json", str(null)]) == 0
    assert stat.S_ISCHR(null.lstat().st_mode) and null.stat().st_rdev == rdev  # written through
    capsys.readouterr()
    # Any other device (here /dev/zero's number) is refused, before the evaluation.
    zero = _node(tmp_path / "zero", "/dev/zero")
    assert main(["eval", "--weights", str(weights), "--json", str(zero)]) == 2
    assert "is a character device" in _one_line(capsys)
    assert stat.S_ISCHR(zero.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null", "w.safetensors", "zero"]


def test_directories_as_outputs_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "out"
    (folder / "inside").mkdir(parents=True)
    assert main(["explain", "--figure", str(folder)]) == 2
    assert "is a directory" in _one_line(capsys)
    weights = save_weights(
        create_model("resnet8", in_channels=1, width=0.25), tmp_path / "w.safetensors"
    )
    assert main(["eval", "--weights", str(weights), "--json", str(folder)]) == 2
    assert "is a directory" in _one_line(capsys)
    link = tmp_path / "link"
    link.symlink_to(folder)  # a symlink is judged by what it points to
    with pytest.raises(ReslabError, match="is a directory"):
        atomic_write_text(link, "x")
    assert link.is_symlink() and (folder / "inside").is_dir()


def test_every_os_error_of_an_output_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    with pytest.raises(ReslabError, match="a folder on its path is a file"):
        atomic_write_bytes(blocker / "x.json", b"{}")  # ENOTDIR
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(ReslabError, match=r"cannot write .*loop"):
        atomic_write_bytes(loop, b"{}")  # ELOOP
    for code in (errno.EROFS, errno.EACCES, errno.ENOSPC):

        def refuse(*_: object, code: int = code) -> None:
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "replace", refuse)
        with pytest.raises(ReslabError) as exc:
            atomic_write_json(tmp_path / "out.json", {"a": 1})
        assert os.strerror(code) in str(exc.value) and "\n" not in str(exc.value)
        monkeypatch.undo()
    assert blocker.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == [
        "file",
        "loop",
    ]  # fmt: skip  (no temp file left behind)


def test_streams_are_written_through(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # First the classification: code that would rename over /dev/stdout must not get to try
    # (on main this replaced the machine's /dev/stdout symlink by a regular file).
    from reslab.fileio import output_kind

    assert output_kind(Path("/dev/stdout")) == "stream"
    was_link = Path("/dev/stdout").is_symlink()
    atomic_write_text("/dev/stdout", "to stdout\n")
    assert capfd.readouterr().out == "to stdout\n"
    assert Path("/dev/stdout").is_symlink() == was_link  # written to, never replaced
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ReslabError, match="no process is reading this pipe"):
        atomic_write_text(fifo, "nobody listens")  # refused at once, no hang
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    for _ in range(200):  # wait until the reader has the FIFO open
        try:
            atomic_write_text(fifo, "through the pipe")
            break
        except ReslabError:
            threading.Event().wait(0.01)
    reader.join(10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(fifo.lstat().st_mode)


def test_a_symlink_to_a_file_is_replaced_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text("theirs")
    link = tmp_path / "out.json"
    link.symlink_to(target)
    atomic_write_text(link, "ours")
    assert not link.is_symlink() and link.read_text() == "ours"
    assert target.read_text() == "theirs"
