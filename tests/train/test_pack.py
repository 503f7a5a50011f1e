"""Packed twins: a pack computes every member's own training run, in an ordinary run folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from reslab.models import create_model
from reslab.train import NonFiniteLoss, TrainConfig, fit
from reslab.train.pack import fit_pack, pack_blocker, pack_groups
from reslab.train.packed import check_packed, pack_nets

TIMING = {"images_per_s", "epoch_time", "wall_time"}


def _members(small: Callable[..., TrainConfig], prefix: str, **kw: Any) -> list[TrainConfig]:
    """Two seeds of a residual net and the plain twin of the first: one pack."""
    common = {"width": 0.5, "steps": 5, "batch_size": 32, "deterministic": True, **kw}
    return [
        small(f"{prefix}/resnet8-s0", model="resnet8", seed=0, **common),
        small(f"{prefix}/resnet8-s1", model="resnet8", seed=1, **common),
        small(f"{prefix}/plain8-s0", model="plain8", seed=0, **common),
    ]


def _tensors(run: Path) -> dict[str, torch.Tensor]:
    ckpt = run / "checkpoints"
    return {
        **load_file(ckpt / "last.safetensors"),
        **{f"optim/{k}": v for k, v in load_file(ckpt / "last.optim.safetensors").items()},
    }


def _rows(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


def test_a_pack_trains_each_member_as_fit_alone(small: Callable[..., TrainConfig]) -> None:
    packed = _members(small, "packed", snapshot_steps=[0, 3], checkpoint_every_steps=2)
    alone = _members(small, "alone", snapshot_steps=[0, 3], checkpoint_every_steps=2)
    assert pack_groups(packed) == [[0, 1, 2]]
    histories = fit_pack(packed)
    for config, ref, history in zip(packed, alone, histories, strict=True):
        fit(ref)
        a, b = _tensors(config.run_dir()), _tensors(ref.run_dir())
        assert a.keys() == b.keys()
        # Every weight, BN statistic, step counter and momentum buffer of every member.
        assert any(k.startswith("optim/") for k in a) and any("running_var" in k for k in a)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
        snap = "checkpoints/snapshot-000000003.safetensors"
        for key, value in load_file(config.run_dir() / snap).items():
            torch.testing.assert_close(value, load_file(ref.run_dir() / snap)[key], msg=key)
        rows, ref_rows = _rows(config.run_dir()), _rows(ref.run_dir())
        assert [r["step"] for r in rows] == [r["step"] for r in ref_rows] == [5]
        for row, ref_row in zip(rows, ref_rows, strict=True):
            assert row == pytest.approx(ref_row, rel=1e-4, abs=1e-5)
        assert history is not None and history.final["status"] == "finished"
        # fit sees an ordinary finished run in the member's folder.
        assert fit(config, resume=True).final == history.final


def test_plain_twins_draw_the_residual_nets_weights() -> None:
    torch.manual_seed(3)
    residual = create_model("resnet8", width=0.5, num_classes=10, in_channels=1)
    torch.manual_seed(3)
    plain = create_model("plain8", width=0.5, num_classes=10, in_channels=1)
    a, b = residual.state_dict(), plain.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    net = pack_nets([residual, plain], channels_last=True)
    assert check_packed(net, [residual, plain], channels_last=True) < 1e-5
    x = torch.randn(4, 1, 8, 8)
    net.eval(), residual.eval(), plain.eval()
    with torch.no_grad():  # same weights: only the masked shortcut tells the halves apart
        out = net(torch.cat([x, x], 1))
        assert torch.allclose(out[:, :10], residual(x), atol=1e-5)
        assert torch.allclose(out[:, 10:], plain(x), atol=1e-5)
        assert not torch.allclose(residual(x), plain(x), atol=1e-3)


def test_a_diverged_member_is_recorded_as_alone(small: Callable[..., TrainConfig]) -> None:
    members = _members(small, "nan", lr=1e30)
    assert fit_pack(members) == [None, None, None]
    ref = _members(small, "nan-alone", lr=1e30)[2]
    with pytest.raises(NonFiniteLoss) as alone:
        fit(ref)
    result = json.loads((members[2].run_dir() / "result.json").read_text())
    assert result["status"] == "diverged"
    assert result["message"] == str(alone.value).replace("nan-alone", "nan")


def test_features_that_couple_members_do_not_pack(small: Callable[..., TrainConfig]) -> None:
    assert pack_blocker(small(grad_clip=1.0)) is not None
    assert pack_blocker(small(warmup_until_error=80.0)) is not None
    assert pack_blocker(small(ema=0.99)) is not None
    assert pack_blocker(small(mixup=0.2)) is not None and pack_blocker(small(accum_steps=2))
    assert pack_blocker(small()) is None
    projected = [small("b", model="resnet8", shortcut="B"), small("p", model="plain8")]
    assert pack_groups(projected) == [[0], [1]]  # B's projections: shapes differ


def test_an_interrupted_pack_resumes_to_the_same_run(
    small: Callable[..., TrainConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    from reslab.train import pack as pack_module

    whole = _members(small, "whole", checkpoint_every_steps=2)
    fit_pack(whole)
    cut = _members(small, "cut", checkpoint_every_steps=2)
    step = pack_module._Pack.step
    calls = []

    def crash_at_step_4(self: Any, *args: Any) -> None:
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        step(self, *args)

    monkeypatch.setattr(pack_module._Pack, "step", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        fit_pack(cut)
    monkeypatch.setattr(pack_module._Pack, "step", step)
    assert json.loads((cut[0].run_dir() / "checkpoints/last.json").read_text())["step"] == 2
    fit_pack(cut)  # all members at step 2: resumes the pack
    for a, b in zip(whole, cut, strict=True):
        ta, tb = _tensors(a.run_dir()), _tensors(b.run_dir())
        assert ta.keys() == tb.keys()
        for key in ta:  # deterministic on CPU: bit-identical, as a resumed fit is
            assert torch.equal(ta[key], tb[key]), key
        assert _rows(a.run_dir()) == _rows(b.run_dir())


def test_members_saved_with_different_thread_counts_train_alone(
    small: Callable[..., TrainConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One process has one thread count: a member whose folder saved another trains alone,
    with its own count, as its resume would."""
    from reslab.train import pack
    from reslab.train.run_folder import RunFolder

    members = _members(small, "threads", threads=None)
    assert pack_groups(members) == [[0, 1, 2]]
    saved = members[1]
    saved.run_dir().mkdir(parents=True)
    RunFolder(saved.run_dir()).write_config(TrainConfig(**{**saved.to_dict(), "threads": 1}), [])

    def no_pack(*args: Any) -> None:
        raise AssertionError("members with different thread counts were packed")

    monkeypatch.setattr(pack, "_train", no_pack)
    histories = fit_pack(members)
    assert all(h is not None for h in histories)
    assert json.loads((saved.run_dir() / "config.json").read_text())["threads"] == 1
