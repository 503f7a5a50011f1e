"""Packed twins: N runs of one architecture and recipe trained as ONE grouped net.

:func:`fit_pack` trains a study's runs that differ only in their seed (and plain runs with
their residual twins of the same shapes) together, each computing the training run
:func:`reslab.train.fit` would compute alone: every member is built exactly as ``fit`` builds
it (its seed, then its data, model and optimizer, in ``fit``'s order, so it draws the same
initial weights), draws its batches from its own loader (same order and augmentation), and
gets its own updates (the packed net of :mod:`reslab.train.packed` keeps each member's
weights, BN statistics and momentum on its own channels). Per epoch the members' slices are
copied back into ordinary models and each member's epoch end, checkpoint and result are
:mod:`reslab.train.loop`'s own, in its own run folder, so a member folder is an ordinary run:
``fit(config, resume=True)`` resumes or reads it, and reports aggregate it unchanged.

A member whose loss becomes NaN/inf is recorded as diverged (as a study records a separate
run) and leaves the pack; the others' arithmetic never depended on it. :func:`pack_groups`
says which configs can train together, and :func:`pack_blocker` why one cannot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch import Tensor

from reslab import stop
from reslab.models import count_params, create_model
from reslab.train.config import TrainConfig
from reslab.train.console import Reporter
from reslab.train.distributed import Dist
from reslab.train.loop import build_run, fit, run_config
from reslab.train.packed import check_packed, pack_nets, pack_tensor, packable_reason, unpack
from reslab.train.run import (
    History,
    NonFiniteLoss,
    Run,
    check_finite,
    end_epoch,
    finish,
    resume_run,
    save_checkpoint,
    snapshot,
)
from reslab.train.run_folder import RunFolder, get_rng_state, set_rng_state
from reslab.train.runtime import (
    Runtime,
    autocast_context,
    pick_device,
    record_threads,
    setup,
)
from reslab.train.schedule import Schedule
from reslab.train.session import (
    claim_folder,
    model_kwargs,
    wrap_model,
)
from reslab.train.state import Running, TrainState
from reslab.train.step import build_optimizer

__all__ = ["fit_pack", "pack_blocker", "pack_groups"]

# Fields in which the members of one pack may differ; everything else is the shared recipe.
_MEMBER_FIELDS = frozenset({"seed", "out", "model", "plain", "shortcut"})


# --- which runs pack together ----------------------------------------------------------------


def pack_blocker(config: TrainConfig) -> str | None:
    """Why ``config`` cannot train in a pack (a feature that couples members), or None."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "torchrun"
    if config.grad_clip is not None:
        return "--grad-clip (a global gradient norm)"
    if config.warmup_until_error is not None:
        return "--warmup-until-error (a learning rate per member)"
    if config.ema is not None:
        return "--ema"
    if config.mixup or config.cutmix:
        return "--mixup/--cutmix"
    if config.accum_steps > 1:
        return "--accum-steps"
    if config.shortcut_mode == "dropout":
        return "--shortcut-mode dropout (draws from the global RNG)"
    if config.tensorboard or config.detect_anomaly:
        return "--tensorboard/--detect-anomaly"
    return None


def _signature(config: TrainConfig, num_classes: int, in_channels: int) -> tuple[Any, ...] | None:
    """The parameter names and shapes of the config's net (built on the meta device)."""
    with torch.device("meta"):
        model = create_model(config.model, **model_kwargs(config, num_classes, in_channels))
    if packable_reason(model) is not None:
        return None
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def pack_groups(configs: Sequence[TrainConfig]) -> list[list[int]]:
    """Indices of ``configs`` grouped into packs (a run that cannot pack is a group of one).

    Runs pack when their configs agree on everything but seed, out folder and model, and their
    nets have the same parameter names and shapes (plain twins of option-A ResNets do; plain
    and option-B/C nets do not).
    """
    groups: dict[tuple[Any, ...], list[int]] = {}
    alone: list[list[int]] = []
    for i, config in enumerate(configs):
        # Digits-sized heads: the classes and input channels only scale the stem and fc alike.
        signature = None if pack_blocker(config) else _signature(config, 10, 3)
        if signature is None:
            alone.append([i])
            continue
        recipe = tuple(
            (f.name, repr(getattr(config, f.name)))
            for f in dataclasses.fields(TrainConfig)
            if f.name not in _MEMBER_FIELDS
        )
        groups.setdefault((recipe, signature), []).append(i)
    return [*groups.values(), *alone]


# --- one member of a pack ----------------------------------------------------------------------


@dataclass
class _Member:
    """One run of a pack: the loop's own :class:`Run`, plus what the pack keeps for it."""

    run: Run
    rng: dict[str, Any]  # the global RNG state its own fit would have after building
    stream: TextIO | None  # where its console lines go (its train.log in a study)
    lock: Any


@contextlib.contextmanager
def _as_member(member: _Member) -> Iterator[None]:
    """Its console output and its RNG state while the loop's code runs for it."""
    set_rng_state(member.rng)
    with _redirect(member.stream):
        yield


def _build_member(
    config: TrainConfig,
    dist: Dist,
    device: torch.device,
    fast: Runtime,
    resume: bool,
    stream: TextIO | None,
) -> _Member:
    """What :func:`reslab.train.loop._fit` builds, in its order (so the RNG draws match)."""
    started = time.perf_counter()
    report = Reporter(config.quiet, enabled=True)
    data, raw, optimizer = build_run(config, dist, device, fast)
    rng = get_rng_state()
    folder = RunFolder(config.run_dir())
    lock = claim_folder(folder, dist, resume, config, None)
    schedule = Schedule(config, data.total_steps)
    state = TrainState(schedule, data.loader, Running(device), started=started)
    run = Run(config, dist, device, fast, report, folder, data, raw, raw, optimizer, None, state)
    member = _Member(run, rng, stream, lock)
    with _as_member(member):
        resume_run(run)
        if state.step == 0:
            snapshot(run)
    return member


# --- the pack --------------------------------------------------------------------------------


class _Pack:
    """The grouped net of the members still training, its optimizer, and the copies back."""

    def __init__(self, members: list[_Member], fast: Runtime) -> None:
        self.members = members
        self.fast = fast
        if not members:  # every member diverged
            return
        runs = [m.run for m in members]
        first = runs[0]
        self.net = pack_nets([r.raw for r in runs], fast.channels_last)
        gap = check_packed(self.net, [r.raw for r in runs], fast.channels_last)
        if not gap < 1e-3:  # a bug, not a user error: packing must compute the members
            raise RuntimeError(f"the packed net does not compute its members (gap {gap:.2g})")
        self.optimizer = build_optimizer(first.config, self.net, first.device)
        with torch.no_grad():
            for name, p in self.net.named_parameters():
                bufs = [b for b in (_momentum(r, name) for r in runs) if b is not None]
                if len(bufs) == len(runs):  # resumed: every member has taken steps
                    packed = pack_tensor(bufs)
                    self.optimizer.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(packed)
        self.model = wrap_model(self.net, first.dist, first.device, fast)
        self.classes = first.data.ds.num_classes

    @classmethod
    def empty(cls, fast: Runtime) -> _Pack:
        return cls([], fast)

    @property
    def lead(self) -> Run:
        """The first member: every member is at its step, epoch and learning rate."""
        return self.members[0].run

    def step(self, batches: Sequence[tuple[Tensor, Tensor]], lr: float, autocast: Any) -> None:
        """One SGD step of every member on its own batch; each member's sums are added."""
        n, first = len(self.members), self.members[0].run
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x = torch.cat([b[0] for b in batches], 1)
        if self.fast.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.stack([b[1] for b in batches])  # N, B
        if self.fast.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with autocast:
            logits = self.model(x).view(x.shape[0], n, self.classes).transpose(0, 1)  # N, B, K
            # Each member's mean loss; their sum's gradient is each member's own gradient.
            losses = F.cross_entropy(
                logits.reshape(-1, self.classes),
                y.reshape(-1),
                reduction="none",
                label_smoothing=first.config.label_smoothing,
            )
            losses = losses.view(n, -1).mean(1)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        self.optimizer.step()
        for i, member in enumerate(self.members):
            member.run.state.running.add(losses[i], logits[i], y[i])
            member.run.state.step += 1

    @torch.no_grad()
    def copy_back(self) -> None:
        """Each member's weights, BN statistics and momentum into its own model and optimizer."""
        n = len(self.members)
        if not n:
            return
        packed = dict(self.net.named_parameters())
        buffers = dict(self.net.named_buffers())
        for i, member in enumerate(self.members):
            run = member.run
            for name, p in run.raw.named_parameters():
                p.copy_(unpack(packed[name], n, i))
                buf = self.optimizer.state.get(packed[name], {}).get("momentum_buffer")
                if buf is not None:
                    run.optimizer.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(
                        unpack(buf, n, i)
                    )
            for name, b in run.raw.named_buffers():
                b.copy_(unpack(buffers[name], n, i))


def _momentum(run: Run, name: str) -> Tensor | None:
    p = dict(run.raw.named_parameters())[name]
    buf = run.optimizer.state.get(p, {}).get("momentum_buffer")
    return None if buf is None else buf.contiguous()


def fit_pack(
    configs: Sequence[TrainConfig],
    resume: bool = True,
    streams: Sequence[TextIO | None] | None = None,
) -> list[History]:
    """Train ``configs`` as one pack; a :class:`History` per config, in order.

    The configs must be one of :func:`pack_groups`' groups. Finished runs are read, not
    retrained. Runs resumed at different steps, or saved with different thread counts, cannot
    share steps: they train one by one with :func:`reslab.train.fit`. A diverged member
    raises :class:`NonFiniteLoss` only after the others have finished: its History is then
    None in the list and its folder has ``result.json`` status ``diverged`` (``fit_pack``
    writes it, as a study would).
    """
    streams = list(streams) if streams is not None else [None] * len(configs)
    # As fit checks them: a folder holding another run's config is refused before anything.
    configs = [run_config(c, resume, None, None)[0] for c in configs]
    histories: list[History | None] = [None] * len(configs)
    todo = []
    for i, config in enumerate(configs):
        folder = RunFolder(config.run_dir())
        if resume and folder.is_finished():
            histories[i] = History(folder.path, folder.read_records(), folder.read_result())
        else:
            todo.append(i)
    steps = {RunFolder(configs[i].run_dir()).committed_step() or 0 for i in todo} if resume else {0}
    # One process, one thread count: members whose folders saved different counts train alone.
    threads = {configs[i].threads for i in todo}
    if len(todo) == 1 or len(steps) > 1 or len(threads) > 1:
        for i in todo:
            with _redirect(streams[i]):
                histories[i] = _fit_alone(configs[i], resume)
    elif todo:
        trained = _train([configs[i] for i in todo], resume, [streams[i] for i in todo])
        for i, history in zip(todo, trained, strict=True):
            histories[i] = history
    return histories  # type: ignore[return-value]


@contextlib.contextmanager
def _redirect(stream: TextIO | None) -> Iterator[None]:
    if stream is None:
        yield
        return
    with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        yield


def _fit_alone(config: TrainConfig, resume: bool) -> History | None:
    try:
        return fit(config, resume=resume)
    except NonFiniteLoss as exc:
        RunFolder(config.run_dir()).write_diverged(str(exc))
        return None


def _train(
    configs: Sequence[TrainConfig], resume: bool, streams: Sequence[TextIO | None]
) -> list[History | None]:
    first = configs[0]
    dist = Dist()
    device = pick_device(first.device, 0)
    members: list[_Member] = []
    with setup(first, device) as fast:
        configs = [record_threads(c, device) for c in configs]
        try:
            started = time.perf_counter()
            for config, stream in zip(configs, streams, strict=True):
                members.append(_build_member(config, dist, device, fast, resume, stream))
            for member in members:  # each member's wall time is the pack's
                member.run.state.started = started
            return _run_pack(members, fast)
        finally:
            for member in members:
                member.run.report.close()
                member.lock.release()


def _announce(members: Sequence[_Member], fast: Runtime) -> None:
    """Each member's opening line, as :func:`reslab.train.fit` prints it."""
    for member in members:
        run = member.run
        config, data = run.config, run.data
        with _as_member(member):
            run.report.line(
                f"{config.model} ({count_params(run.raw):,} params) on {data.ds.name}: "
                f"{data.total_steps} steps ({data.num_epochs} epochs of {len(data.loader)}), "
                f"batch {config.batch_size}, packed with {len(members) - 1} other run(s), "
                f"{run.device}, {'bf16' if fast.amp_dtype else 'fp32'}, recipe "
                f"{config.recipe or '-'} -> {run.folder.path}"
            )


def _each(
    pack: _Pack, histories: dict[int, History | None], fn: Callable[[_Member], object]
) -> _Pack:
    """``fn`` for every member (as itself); members whose loss is NaN/inf leave the pack.

    A diverged member is recorded as a study records a diverged run; the pack is rebuilt from
    the others' current state (their arithmetic never depended on it).
    """
    kept = []
    for member in pack.members:
        with _as_member(member):
            try:
                fn(member)
                kept.append(member)
            except NonFiniteLoss as exc:
                member.run.folder.write_diverged(str(exc))
                histories[id(member)] = None
    if len(kept) == len(pack.members):
        return pack
    return _Pack(kept, pack.fast) if kept else _Pack.empty(pack.fast)


def _run_pack(members: list[_Member], fast: Runtime) -> list[History | None]:
    """The epochs of :func:`reslab.train.loop._run_epochs`, every member at once."""
    histories: dict[int, History | None] = {}
    pack = _Pack(members, fast)
    _announce(members, fast)
    lead = members[0].run  # every member is at the same step, epoch and lr
    data, config = lead.data, lead.config
    autocast = autocast_context(lead.device, fast.amp_dtype)
    lr = lead.state.schedule.lr(lead.state.step)
    step = lead.state.step
    for epoch in range(lead.data.loader.epoch, data.num_epochs):
        if step >= data.total_steps or not pack.members:
            break
        for member in pack.members:
            member.run.data.loader.set_epoch(epoch)
        pack.net.train()
        epoch_start, images = time.perf_counter(), 0
        batches = {id(m): iter(m.run.data.loader) for m in pack.members}
        while pack.members:
            batch = [next(batches[id(m)], None) for m in pack.members]
            if batch[0] is None:
                break
            lr = pack.lead.state.schedule.lr(step)
            pack.step(batch, lr, autocast)  # type: ignore[arg-type]
            images += batch[0][1].shape[0]
            step += 1
            if step in config.snapshot_steps:
                pack.copy_back()
                pack = _each(pack, histories, lambda m: snapshot(m.run))
            if step >= data.total_steps:
                break
            every = config.checkpoint_every_steps
            loader = pack.lead.data.loader
            if every and step % every == 0 and loader.state_dict()["batch"] < len(loader):
                pack.copy_back()
                pack = _each(pack, histories, _checkpoint)
            if stop.requested() and loader.state_dict()["batch"] < len(loader):
                pack.copy_back()  # Ctrl-C/SIGTERM: every member commits this step (reslab.stop)
                pack = _each(pack, histories, _checkpoint)
                stop.check()
        pack.copy_back()
        trained = time.perf_counter() - epoch_start

        def end(
            member: _Member,
            epoch: int = epoch,
            images: int = images,
            lr: float = lr,
            trained: float = trained,
        ) -> None:
            # Each member's epoch time is the pack's training time, not the evaluation of the
            # members before it.
            end_epoch(member.run, epoch, time.perf_counter() - trained, images, lr)

        pack = _each(pack, histories, end)
        stop.check()
    for member in pack.members:
        with _as_member(member):
            histories[id(member)] = finish(member.run)
    return [histories.get(id(m)) for m in members]


def _checkpoint(member: _Member) -> None:
    check_finite(member.run)
    save_checkpoint(member.run)
