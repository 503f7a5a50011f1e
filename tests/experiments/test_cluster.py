"""``--cluster ray``: a study's runs as tasks of a REAL local Ray cluster, started here.

The cluster is ``ray start --head --block`` in its own process group, stopped after the module.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reslab.cli import main

ray = pytest.importorskip("ray")

# Four tiny runs: two depths, plain and residual; a few steps each.
STUDY = ["--depths", "8,14", "--seeds", "0", "--width", "0.25", "--steps", "6", "--device", "cpu"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _head(env: dict[str, str] | None = None) -> Iterator[str]:
    """A local two-CPU Ray head node, ``ray start --head`` as a user starts one; its address."""
    port = _free_port()
    ray_bin = Path(sys.executable).with_name("ray")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are bounded
    head = subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            "--num-cpus",
            "2",
            "--num-gpus",
            "0",
            "--port",
            str(port),
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--temp-dir",
            temp,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    address = f"127.0.0.1:{port}"
    try:
        _wait_for(address, head)
        yield address
    finally:
        # SIGTERM to the group never ended `ray start --block` (its children die, it waits on:
        # still there after 60 s here), so it was killed after a 10 s wait every time. Its
        # group holds every process of this head (its own session); its temp dir goes too.
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A head without token authentication (no token on this machine: Ray leaves it off)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    with _head({**env, "RAY_AUTH_MODE": "disabled"}) as address:
        yield address


def _wait_for(address: str, head: subprocess.Popen[bytes], timeout: float = 120) -> None:
    host, port = address.split(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert head.poll() is None, "ray start --head exited"
        with socket.socket() as s:
            if s.connect_ex((host, int(port))) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"no Ray head at {address} after {timeout} s")


def _runs(folder: Path) -> dict[str, dict[str, Any]]:
    results = json.loads((folder / "results.json").read_text())
    # Everything but the clocks must agree.
    return {r["name"]: {k: v for k, v in r.items() if k != "wall_time"} for r in results["runs"]}


def _files(folder: Path) -> set[str]:
    skip = {"train.log", ".lock"}
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.name not in skip}


def test_a_study_on_ray_equals_the_local_study(cluster: str, tmp_path: Path) -> None:
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert main(["degradation", *STUDY, "--out", str(local)]) == 0
    assert (
        main(
            [
                "degradation",
                *STUDY,
                "--cluster",
                "ray",
                "--ray-address",
                cluster,
                "--out",
                str(remote),
            ]
        )
        == 0
    )
    assert not ray.is_initialized()  # the study closed the connection it opened
    assert _runs(remote) == _runs(local)  # same seeds, same threads: the same runs
    for name in _runs(local):
        a = (local / "runs" / name / "result.json").read_text()
        b = (remote / "runs" / name / "result.json").read_text()
        assert json.loads(a)["rank_checksums"] == json.loads(b)["rank_checksums"]  # same weights
    assert _files(remote) == _files(local)
    summary = json.loads((remote / "results.json").read_text())["summary"]
    assert summary == json.loads((local / "results.json").read_text())["summary"]


def test_a_killed_driver_then_a_rerun_redoes_no_finished_run(cluster: str, tmp_path: Path) -> None:
    out = tmp_path / "study"
    # Four runs on the head's two CPUs: the driver is killed once the first pair has finished,
    # with the second pair still to train.
    args = ["degradation", "--depths", "8,14", "--seeds", "0", "--width", "0.25"]
    args += ["--steps", "40", "--device", "cpu", "--cluster", "ray", "--ray-address", cluster]
    args += ["--out", str(out)]
    driver = subprocess.Popen(
        [sys.executable, "-m", "reslab", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    runs = out / "runs"
    deadline = time.monotonic() + 240
    finished: dict[str, bytes] = {}
    while time.monotonic() < deadline and driver.poll() is None:
        finished = {p.parent.name: p.read_bytes() for p in runs.glob("*/result.json")}
        if finished:
            break
        time.sleep(0.2)
    assert driver.poll() is None, driver.stderr.read() if driver.stderr else ""
    assert 0 < len(finished) < 4, "the study must be killed mid-way"
    driver.kill()  # kill -9 of the driver mid-study
    driver.wait()
    assert not (out / "results.json").exists()
    # The rerun trains only what is missing: the runs finished before the kill are read back.
    assert main(args) == 0
    for name, before in finished.items():
        assert (runs / name / "result.json").read_bytes() == before, f"{name} was trained again"
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 4
    assert all(r["status"] == "finished" for r in results["runs"])


def test_cluster_flag_is_checked(cli_error: Any) -> None:
    assert "--cluster must be one of local, ray" in cli_error(["degradation", "--cluster", "slurm"])


def test_an_unreachable_ray_address_is_one_line(cli_error: Any, tmp_path: Path) -> None:
    out = tmp_path / "x"
    address = f"127.0.0.1:{_free_port()}"
    flags = ["--cluster", "ray", "--ray-address", address, "--out", str(out)]
    assert f"cannot connect to Ray at {address}" in cli_error(["degradation", *STUDY, *flags])
    assert not out.exists()  # refused before the study folder is made
    assert "HOST:PORT" in cli_error(
        ["degradation", *STUDY, "--cluster", "ray", "--ray-address", "x:99999"]
    )


@pytest.mark.slow
def test_a_head_started_apart_with_token_authentication(tmp_path: Path) -> None:
    # Ray 2.60: `ray start --head` turns token authentication on when it finds a token, and a
    # driver connecting by address sent none: twenty lines of InvalidAuthToken, then an error
    # that blamed the address. The README's two shells, with the token in RAY_AUTH_TOKEN.
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    out = tmp_path / "study"
    args = [sys.executable, "-m", "reslab", "degradation", "--depths", "8,14", "--seeds", "0"]
    args += ["--width", "0.25", "--steps", "2", "--device", "cpu", "--cluster", "ray"]
    with _head({**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}) as address:
        args += ["--ray-address", address, "--out", str(out)]
        driver = subprocess.run(
            args, env={**env, "RAY_AUTH_TOKEN": token}, capture_output=True, text=True
        )
    assert driver.returncode == 0, driver.stderr[-2000:]
    assert "InvalidAuthToken" not in driver.stderr
    results = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in results["runs"]] == ["finished"] * 4


def _no_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token


_REFUSED = "gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC "
_REFUSED += "error: InvalidAuthToken: Authentication token is missing or incorrect\n"


def test_a_failed_connection_names_its_cause(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from reslab.experiments.cluster import _failure

    _no_token(monkeypatch, tmp_path)
    lost = ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")
    line = _failure(lost, "10.0.0.1:6379", _REFUSED * 20)
    assert "token authentication failed (this driver has no token)" in line
    assert "`ray get-auth-token`" in line and "start one" not in line
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # then Ray refuses before connecting
    missing = type("AuthenticationError", (Exception,), {})("no authentication token was found")
    assert "(this driver has no token but RAY_AUTH_MODE=token)" in _failure(missing, "h:1", "")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)
    assert "(the token from RAY_AUTH_TOKEN was refused)" in _failure(lost, "h:1", _REFUSED)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert "(RAY_AUTH_MODE=disabled here sends no token)" in _failure(lost, "h:1", _REFUSED)
    monkeypatch.delenv("RAY_AUTH_MODE")
    mismatch = RuntimeError("Version mismatch: The cluster was started with:\n Ray: 2.59.0")
    line = _failure(mismatch, "h:1", "")
    assert "Version mismatch: The cluster was started with:;" in line
    assert "same Ray and Python versions" in line
    assert "start one with `ray start --head`" in _failure(lost, "h:1", "")
    assert all("\n" not in m for m in (line, _failure(lost, "h:1", _REFUSED)))


def test_a_token_file_is_found_as_ray_finds_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from reslab.experiments.cluster import _token_source

    _no_token(monkeypatch, tmp_path)
    assert _token_source() is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("0" * 64)
    assert _token_source() == "~/.ray/auth_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "elsewhere"))
    assert _token_source() == "~/.ray/auth_token"  # a path that does not exist is passed over
    monkeypatch.setenv("RAY_AUTH_TOKEN", "1" * 64)
    assert _token_source() == "RAY_AUTH_TOKEN"


def test_rays_lines_on_stderr_are_kept_aside(tmp_path: Path) -> None:
    from reslab.experiments.cluster import _stderr_to

    with tempfile.TemporaryFile("w+") as log:
        with _stderr_to(log):
            os.write(2, _REFUSED.encode())  # as Ray's C++ core writes: the descriptor itself
        log.seek(0)
        assert log.read() == _REFUSED
