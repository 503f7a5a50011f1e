"""A study's runs as Ray tasks (``reslab <study> --cluster ray``), from one machine to many.

Ray (https://docs.ray.io) schedules each run on a node with a free GPU, or a free CPU, and the
run trains exactly as it does in the local pool: :func:`reslab.experiments.runner._run_one`
with ``resume=True``, into the study's own run folder. The study folder must therefore be on a
file system every node sees (NFS, Lustre, a shared disk); the run folder's lock and its
committed checkpoints make a task that Ray retries after a lost node resume, not restart.

What stays as in a local study: finished runs are skipped (``_run_one`` returns a finished
run's record without training), an interrupted study picks up where it stopped (a killed
driver's tasks die with it — Ray ends a job's tasks when its driver exits — and the rerun
resumes their checkpoints), a diverged run is a recorded result. A run that fails for another
reason does not stop the rest: the study waits for them, then reports every failed run in one
error, and a rerun trains only what is missing.

Ray is optional (``pip install 'reslab[ray]'``); nothing imports it unless ``--cluster ray``.

A cluster started apart (``ray start --head``) may require a token: Ray (2.52 and later) turns
its token authentication on when the head finds one (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN``
or ``RAY_AUTH_TOKEN_PATH``, or ``RAY_AUTH_MODE=token``), and a driver connecting by address
sends none unless ``RAY_AUTH_MODE=token`` is set: Ray only looks for a token by itself for
``address="auto"`` (ray/_private/worker.py, ``init``). :func:`connect` looks for one as Ray does
for ``auto`` whenever ``RAY_AUTH_MODE`` is unset, so the head's token in this machine's
``~/.ray/auth_token`` (or ``RAY_AUTH_TOKEN``) is all a driver needs; ``RAY_AUTH_MODE`` set by the
user is respected. When the connection still fails, the one-line error says why: the token,
a version mismatch, or nothing answering at the address.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

from reslab.errors import ConfigError, ReslabError

__all__ = ["CLUSTERS", "check_cluster", "connect", "run_on_ray"]

#: Where a study's runs run: the local worker pool, or the tasks of a Ray cluster.
CLUSTERS = ("local", "ray")

# A task whose worker process or node dies is retried; its run resumes from its checkpoint.
_SYSTEM_RETRIES = 3


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--cluster ray needs Ray: pip install 'reslab[ray]' (or pip install ray)"
        ) from None
    return ray


def check_cluster(cluster: str, address: str | None) -> None:
    """Before a study writes anything: Ray is installed and its address answers."""
    if cluster != "ray":
        return
    _import_ray()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None and address != "auto":
        _check_reachable(address)


def connect(address: str | None) -> tuple[Any, bool]:
    """Ray, connected to ``address`` (else ``RAY_ADDRESS``, else a new local instance).

    Returns the module and whether this call started the connection (then the caller shuts it
    down); a connection the user opened in Python (``ray.init`` before ``run_study``) is used
    as it is.
    """
    ray = _import_ray()
    if ray.is_initialized():
        return ray, False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        return ray, _init(ray, None, None)
    if address != "auto":
        _check_reachable(address)
    _use_token_if_any()
    # Ray's core logs each refused attempt on stderr (twenty lines for a missing token):
    # kept aside, and read to say in one line why the connection failed.
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
        return ray, _init(ray, address, log)


def _init(ray: Any, address: str | None, log: IO[str] | None) -> bool:
    """``ray.init``, its failure as one :class:`ReslabError` naming the likely cause."""
    try:
        with _stderr_to(log):
            ray.init(
                address=address,
                log_to_driver=False,  # each run's lines go to its own train.log, as locally
                include_dashboard=False if address is None else None,
                configure_logging=False,
            )
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        noise = ""
        if log is not None:
            log.seek(0)
            noise = log.read(1 << 20)
        raise ReslabError(_failure(exc, address, noise)) from None
    return True


def _use_token_if_any() -> None:
    """Send the token Ray would find for ``address="auto"``, unless RAY_AUTH_MODE is set."""
    try:
        from ray._private.authentication import authentication_token_setup as auth
    except ImportError:  # a Ray from before token authentication (2.52): nothing to send
        return
    # Ray's own rule (``RAY_AUTH_MODE`` wins; else a token found turns it on); its notice that
    # the *cluster* has token authentication on is about the head, not said to a driver.
    quiet = logging.getLogger(auth.__name__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        auth.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        quiet.setLevel(level)


@contextlib.contextmanager
def _stderr_to(log: IO[str] | None) -> Iterator[None]:
    """File descriptor 2 (Ray's C++ core writes there) into ``log`` meanwhile; None: as is."""
    if log is None:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(log.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _token_source() -> str | None:
    """Where this driver's Ray token comes from (as Ray looks), or None: there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    for path in (os.environ.get("RAY_AUTH_TOKEN_PATH"), "~/.ray/auth_token"):
        if path and os.path.isfile(os.path.expanduser(path)):
            return path
    return None


def _failure(exc: BaseException, address: str | None, noise: str) -> str:
    """Why ``ray.init`` failed, in one line that says what to do."""
    where = address or "a local Ray instance"
    text = str(exc).strip()
    first = text.splitlines()[0][:300] if text else type(exc).__name__
    # Ray's AuthenticationError: RAY_AUTH_MODE=token here and no token found to send.
    refused = "InvalidAuthToken" in noise + text or "Unauthenticated" in noise
    if refused or type(exc).__name__ == "AuthenticationError":
        source = _token_source()
        mode = os.environ.get("RAY_AUTH_MODE", "")
        if mode == "disabled":
            sent = "RAY_AUTH_MODE=disabled here sends no token"
        elif source:
            sent = f"the token from {source} was refused"
        else:
            sent = "this driver has no token" + (" but RAY_AUTH_MODE=token" if mode else "")
        return (
            f"cannot connect to Ray at {where}: token authentication failed ({sent}); copy the "
            "head's token (`ray get-auth-token` on the head) into ~/.ray/auth_token here, or "
            "set RAY_AUTH_TOKEN to it"
        )
    if "version mismatch" in text.lower():
        return (
            f"cannot connect to Ray at {where}: {first}; run the same Ray and Python versions "
            "on the driver and the cluster"
        )
    return (
        f"cannot connect to Ray at {where}: {first}; start one with `ray start --head` or "
        "check --ray-address / RAY_ADDRESS"
    )


def run_on_ray(
    ray: Any,
    fn: Callable[[Any], Any],
    items: Sequence[Any],
    names: Sequence[str],
    *,
    gpus: bool,
    done: Callable[[int, Any], None],
) -> None:
    """``fn(item)`` for every item as one task of the connected ``ray`` (one GPU a task if
    ``gpus``, and one CPU); ``done(index, result)`` as each finishes, in finishing order.

    Raises one :class:`ReslabError` naming (``names[i]``) every item whose task failed, once
    the others are done.
    """
    remote = ray.remote(fn).options(
        num_gpus=1 if gpus else 0,
        num_cpus=1,
        max_retries=_SYSTEM_RETRIES,
        retry_exceptions=False,  # a run's own error would fail the same way again
    )
    pending = {remote.remote(item): i for i, item in enumerate(items)}
    failed: list[str] = []
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                failed.append(f"{names[index]}: {_cause(exc)}")
                continue
            done(index, result)
    except BaseException:
        for ref in pending:  # the driver stops: so do the runs it started
            ray.cancel(ref, force=True)
        raise
    if failed:
        raise ReslabError(
            f"{len(failed)} of {len(items)} runs failed on Ray ({'; '.join(failed)[:600]}); "
            "the others are saved, and a rerun of the study trains only what is missing"
        )


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Refuse in one line an address nobody answers at: ``ray.init`` would retry for minutes."""
    host, sep, port = address.split("://")[-1].rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
        raise ConfigError(f"--ray-address must be HOST:PORT (or auto), got {address[:100]!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError, OverflowError) as exc:
        raise ReslabError(
            f"cannot connect to Ray at {address}: {getattr(exc, 'strerror', None) or exc}; start "
            "one with `ray start --head` or check --ray-address / RAY_ADDRESS"
        ) from None


def _cause(exc: BaseException) -> str:
    """The run's own error behind Ray's wrapper, in one line."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"[:200]
