"""Shared test settings: small, deterministic, and quiet."""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import io
import os
import pickle
import re
import shutil
import struct
import tarfile
import tempfile
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

# reslab before torch: its import asks OpenMP to wait passively (reslab.cpu), which it can do
# only before torch loads the runtime. A test training with two threads while another xdist
# worker kept the other core busy took 328 s instead of 7 s with torch's spinning default.
import reslab  # noqa: F401

# isort: split

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

from reslab.data.cifar import _CIFAR
from reslab.train import TrainConfig, resolve

# Two cores: keep each test process to one intra-op thread so pytest-xdist workers don't fight.
torch.set_num_threads(1)
os.environ.setdefault("RESLAB_QUIET", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- pytest-xdist: what may not run beside what ---------------------------------------------
# `make test` runs the suite in one worker process per usable CPU (`-n auto --dist loadscope`).
# Tests are independent and each has its own tmp_path; what they share is the machine.
# `loadscope` sends each test module to one worker whole: its module-scoped fixtures (a trained
# net, a finished study) are built once, not once per worker; and the modules that must not run
# beside themselves stay serial: test_cluster.py's local Ray heads (Ray's fixed default ports:
# the client server's 10001, the dashboard agent's 52365...) and test_examples.py's notebook
# kernels (jupyter_client picks a kernel's ports by binding port 0 and letting go before the
# kernel binds them: jupyter/nbconvert#1066, nteract/papermill#511 under xdist).
# tests/test_parallel.py holds both kinds to one module each.
RAY_MODULES = ("tests/experiments/test_cluster.py",)
NOTEBOOKS = ("tests/test_examples.py",)

# Tests that measure the whole machine: no other test runs while they do. A niced process's
# time must count as free (cpu.busy_cores): with another worker's training on the hog's core the
# core is busy, truly, and the test could not see the difference it proves. (The same test with
# an un-niced hog, and every other test of the load, pass beside anything.)
ALONE = ("tests/test_cpu.py::test_busy_cores_sees_another_process[19]",)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per CPU this process may use (affinity and cgroup quota), each
    with one intra-op thread; PYTEST_XDIST_AUTO_NUM_WORKERS overrides, as in pytest-xdist."""
    from reslab.cpu import available_cores

    return int(os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS") or len(available_cores()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):  # only an xdist worker's collection is scheduled
        return
    # The alone tests last in their module (loadscope keeps a module together): the other
    # worker's current test, which they wait for, is then likely one of the suite's last.
    items.sort(key=lambda item: item.nodeid in ALONE)


_LOCKS = pytest.StashKey[str]()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """In the xdist controller: every worker gets the run's folder of machine locks."""
    config = node.config
    if _LOCKS not in config.stash:
        config.stash[_LOCKS] = tempfile.mkdtemp(prefix="reslab-pytest-")
    node.workerinput["reslab_locks"] = config.stash[_LOCKS]


def pytest_unconfigure(config: pytest.Config) -> None:
    if _LOCKS in config.stash:
        shutil.rmtree(config.stash[_LOCKS], ignore_errors=True)


@contextlib.contextmanager
def _machine(folder: Path, alone: bool) -> Iterator[None]:
    """A readers-writer lock across the workers: every test holds ``machine`` shared, an alone
    test exclusive. Whoever asks passes ``turnstile`` first, which an alone test holds until it
    is done, so a worker that ends one test and starts the next cannot starve it (flock itself
    favours no one)."""
    with open(folder / "turnstile", "a") as turnstile, open(folder / "machine", "a") as machine:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        if not alone:
            fcntl.flock(machine, fcntl.LOCK_SH)
            fcntl.flock(turnstile, fcntl.LOCK_UN)
            yield
            return
        fcntl.flock(machine, fcntl.LOCK_EX)
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    folder = getattr(item.config, "workerinput", {}).get("reslab_locks")
    if folder is None:  # not under xdist: one test at a time anyway
        return (yield)
    with _machine(Path(folder), item.nodeid in ALONE):
        return (yield)


# --- hypothesis: one profile for every fuzz test ----------------------------------------------
# RESLAB_FUZZ_EXAMPLES=500 for a longer hunt; 40 keeps the default run quick. Function-scoped
# fixtures (tmp_path) are shared by a test's examples on purpose: each example cleans up.
settings.register_profile(
    "reslab",
    max_examples=int(os.environ.get("RESLAB_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
settings.load_profile("reslab")


# --- the CLI as a user meets it ---------------------------------------------------------------

ONE_LINE = re.compile(r"^reslab( [a-z-]+)?: error: \S")


@pytest.fixture
def cli_error(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], str]:
    """``cli_error(argv)`` runs ``reslab`` in-process and returns its one error line.

    It asserts what every user error must look like: exit code 2, no traceback, exactly one
    line on stderr, ``reslab: error: ...`` (or argparse's ``reslab <command>: error: ...``).
    """

    def run(argv: list[str]) -> str:
        from reslab.cli import main

        code: int | str | None
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse errors
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2, err
        assert "Traceback" not in err, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
        assert ONE_LINE.match(lines[0]), lines[0]
        return lines[0]

    return run


# --- the trainer's tests: a small real run ------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> Callable[..., TrainConfig]:
    """resnet20 at quarter width on digits: a real net that trains in about a second.

    ``small(name="run", **fields)`` resolves a config whose run folder is ``tmp_path / name``.
    """

    def make(name: str = "run", **kw: Any) -> TrainConfig:
        values: dict[str, Any] = {
            "model": "resnet20",
            "width": 0.25,
            "dataset": "digits",
            "epochs": 2,
            "batch_size": 64,
            "threads": 1,
            "quiet": True,
            "out": str(tmp_path / name),
            **kw,
        }
        return resolve(values)

    return make


# ---------------------------------------------------------------------------------------------
# Dataset files for tests/data: small CIFAR, IDX, tar and PNG files written on the fly, which
# reslab.data must read exactly as it reads the real ones. (Added with the data package.)


def random_images(n: int, seed: int, shape: tuple[int, ...] = (3, 32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def random_labels(n: int, seed: int, num_classes: int) -> np.ndarray:
    return np.random.default_rng(seed + 1000).integers(0, num_classes, n).astype(np.int64)


def _marked(images: np.ndarray) -> np.ndarray:
    """Image 0 gets flat R/G/B planes 11/22/33 and two marker pixels, to pin the plane order."""
    images = images.copy()
    images[0, 0], images[0, 1], images[0, 2] = 11, 22, 33
    images[0, 0, 0, 1] = 200  # R, row 0, column 1
    images[0, 2, 31, 30] = 201  # B, row 31, column 30
    return images


def _write_bin(path: Path, images: np.ndarray, labels: np.ndarray, label_bytes: int) -> None:
    prefix = [((labels + 7) % 20)[:, None]] if label_bytes == 2 else []  # coarse label
    cols = [*prefix, labels[:, None], images.reshape(len(images), -1)]
    path.write_bytes(np.concatenate(cols, axis=1).astype(np.uint8).tobytes())


def _write_py(path: Path, images: np.ndarray, labels: np.ndarray, key: bytes, proto: int) -> None:
    batch = {b"data": images.reshape(len(images), -1), key: labels.tolist(), b"batch_label": b"x"}
    path.write_bytes(pickle.dumps(batch, protocol=proto))


def write_cifar(
    root: Path, name: str, fmt: str, n: int = 20, proto: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A small CIFAR tree under ``root``; returns train images/labels and test images/labels."""
    spec = _CIFAR[name]
    folder = root / (spec.bin_dir if fmt == "bin" else spec.py_dir)
    folder.mkdir(parents=True)
    train_files = spec.bin_train if fmt == "bin" else spec.py_train
    tr_i, tr_l = [], []
    for k in range(len(train_files)):
        images = random_images(n, k)
        labels = random_labels(n, k, spec.num_classes)
        if k == 0:
            images = _marked(images)
        tr_i.append(images)
        tr_l.append(labels)
    te_i, te_l = random_images(n, 99), random_labels(n, 99, spec.num_classes)
    key = spec.py_label_key.encode()
    for fname, images, labels in [
        *zip(train_files, tr_i, tr_l, strict=True),
        (spec.py_test, te_i, te_l),
    ]:
        if fmt == "bin":
            fname = spec.bin_test if fname == spec.py_test else fname
            _write_bin(folder / fname, images, labels, spec.label_bytes)
        else:
            _write_py(folder / fname, images, labels, key, proto)
    return np.concatenate(tr_i), np.concatenate(tr_l), te_i, te_l


def tar_folder(archive: Path, folder: Path) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def tar_with(archive: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> None:
    """A .tar.gz of the given members, each with its payload (None for links, devices...)."""
    with tarfile.open(archive, "w:gz") as tar:
        for info, payload in members:
            if payload is not None:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                tar.addfile(info)


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    blob = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    blob += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(blob) if path.suffix == ".gz" else blob)


def write_mnist(folder: Path, n_train: int = 12, n_test: int = 5, gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = random_images(n, seed, (28, 28)), random_labels(n, seed, 10)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images, 0x803)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels, 0x801)


def write_png(
    path: Path, size: tuple[int, int], color: tuple[int, int, int], mode: str = "RGB"
) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, color)
    (img.convert(mode) if mode != "RGB" else img).save(path)


# ---------------------------------------------------------------------------------------------
# Studies and reports, for tests/report, tests/experiments and tests/cli: synthetic results.json
# contents shaped like a real study's, and a PNG reader. (Added with the experiments registry.)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; fails if ``data`` is not a PNG."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG signature"
    assert data[12:16] == b"IHDR", "first chunk is not IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def fake_run(
    family: str, depth: int, seed: int, shortcut: str | None, epochs: int
) -> dict[str, Any]:
    """A run record whose errors fall with a learning-rate drop; deep plain nets train worse."""
    import numpy as np

    rng = np.random.default_rng(depth * 10 + seed + (100 if family == "plain" else 0))
    floor = 2.0 + (0.08 * (depth - 20) if family == "plain" else -0.02 * (depth - 20))
    t = np.arange(1, epochs + 1)
    drop = np.where(t > epochs * 2 // 3, 0.5, 1.0)
    train = floor + 40.0 * np.exp(-t / 3.0) * drop + rng.normal(0, 0.2, epochs)
    test = train + 4.0 + rng.normal(0, 0.3, epochs)
    tag = "plain" if family == "plain" else "resnet"
    return {
        "name": f"{tag}{depth}{shortcut or ''}-s{seed}",
        "model": f"{tag}{depth}",
        "family": family,
        "depth": depth,
        "shortcut": shortcut,
        "seed": seed,
        "params": 270_000 if depth == 20 else 850_000,
        "final_clean_train_error": float(train[-1]),
        "final_test_error": float(test[-1]),
        "wall_time": 12.5,
        "curves": {
            "epoch": t.tolist(),
            "step": (t * 50).tolist(),
            "clean_train_error": train.tolist(),
            "train_error": (train + 1.0).tolist(),
            "test_error": test.tolist(),
            "train_loss": (train / 20).tolist(),
            "lr": (0.1 * drop).tolist(),
        },
    }


def fake_probes(depths: tuple[int, ...], seeds: tuple[int, ...] = (0,)) -> dict[str, Any]:
    """Probe entries for plain and residual nets at ``depths``; ``seed`` keys if several seeds."""
    import numpy as np

    gradient_flow, magnitude, responses = [], [], []
    for family in ("plain", "residual"):
        for depth in depths:
            for seed in seeds:
                label = f"{'plain' if family == 'plain' else 'resnet'}-{depth}"
                blocks = (depth - 2) // 2
                idx = np.arange(blocks)
                common: dict[str, Any] = {"label": label, "family": family, "depth": depth}
                if len(seeds) > 1:
                    common["seed"] = seed
                scale = 1.0 + 0.1 * seed
                for when in ("init", "trained"):
                    decay = 0.9 if family == "plain" and when == "trained" else 0.99
                    gradient_flow.append(
                        {
                            **common,
                            "when": when,
                            "block": [f"block{i}" for i in idx],
                            "input_grad_norm": (scale * 1e-2 * decay ** (blocks - idx)).tolist(),
                            "layer": [f"conv{i}" for i in range(depth - 1)],
                            "weight_grad_norm": [0.01] * (depth - 1),
                        }
                    )
                residual = family == "residual"
                ratio = scale * ((0.2 + 0.1 * np.sin(idx)) if residual else (1.0 + 0 * idx))
                magnitude.append(
                    {
                        **common,
                        "block": [f"block{i}" for i in idx],
                        "ratio": ratio.tolist(),
                        "f_norm": (ratio * 10).tolist(),
                        "shortcut_norm": [10.0] * blocks if residual else None,
                    }
                )
                std = scale * (0.6 if residual else 1.5) * (1 + 0.3 * np.cos(np.arange(depth - 2)))
                responses.append(
                    {
                        **common,
                        "layer": [f"conv{i}" for i in range(depth - 2)],
                        "std": std.tolist(),
                        "std_sorted": sorted(std.tolist(), reverse=True),
                    }
                )
    return {
        "gradient_flow": gradient_flow,
        "residual_magnitude": magnitude,
        "layer_responses": responses,
    }


def random_bn(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with random BN statistics and affine parameters (in place): a freshly built net's
    BNs are identities, under which folding, prefixes and lesions would prove nothing."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def synthetic_results(
    depths: tuple[int, ...] = (20, 56), seeds: int = 2, epochs: int = 12
) -> dict[str, Any]:
    """A degradation study's results: plain and residual nets × depths × seeds, and probes."""
    from reslab.experiments.degradation import degradation_verdict
    from reslab.report.stats import summarize_runs

    runs = [
        fake_run(family, depth, seed, None if family == "plain" else "A", epochs)
        for family in ("plain", "residual")
        for depth in depths
        for seed in range(seeds)
    ]
    summary = summarize_runs(runs)
    return {
        "schema": 1,
        "experiment": "degradation",
        "title": "Degradation: plain vs residual nets (synthetic)",
        "reslab_version": "0.1.0",
        "torch_version": "2.13.0",
        "python_version": "3.12.0",
        "created": "2025-01-31T12:00:00+00:00",
        "machine": "test machine, 2 CPUs",
        "config": {"depths": list(depths), "seeds": seeds, "epochs": epochs, "lr": 0.1},
        "verdict": degradation_verdict(summary),
        "runs": runs,
        "summary": summary,
        "probes": fake_probes(depths),
    }
