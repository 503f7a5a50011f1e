"""Tests for reslab.data.loader: the CIFAR augmentation against a reference, normalisation, and
DeviceLoader's sharding, epochs, bit-identical resume and one host-to-device copy per epoch."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import reslab.data as rd
from conftest import random_images
from reslab.data import loader as loader_mod
from reslab.errors import DataError


def _reference_augment(image: np.ndarray, dy: int, dx: int, flip: bool) -> np.ndarray:
    padded = np.pad(image, ((0, 0), (4, 4), (4, 4)))
    h, w = image.shape[1:]
    crop = padded[:, 4 + dy : 4 + dy + h, 4 + dx : 4 + dx + w]
    return crop[:, :, ::-1] if flip else crop


def test_cifar_augmentation_matches_reference_and_covers_range() -> None:
    images = torch.from_numpy(random_images(2000, 7, (3, 12, 10)))
    gen = torch.Generator().manual_seed(0)
    out, shifts, flips = rd.augment_batch(images, "cifar", gen, return_params=True)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert shifts.abs().max() <= 4
    assert set(shifts[:, 0].tolist()) == set(range(-4, 5)) == set(shifts[:, 1].tolist())
    assert 0.4 < flips.double().mean() < 0.6
    for n in range(300):
        dy, dx = shifts[n].tolist()
        expected = _reference_augment(images[n].numpy(), dy, dx, bool(flips[n]))
        assert np.array_equal(out[n].numpy(), expected), n
    again = rd.augment_batch(images, "cifar", torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_marker_pixel_moves_by_the_shift() -> None:
    images = torch.zeros(500, 1, 16, 16, dtype=torch.uint8)
    images[:, 0, 7, 9] = 255
    out, shifts, flips = rd.augment_batch(
        images, "cifar", torch.Generator().manual_seed(1), return_params=True
    )
    for n in range(500):
        rows, cols = torch.nonzero(out[n, 0], as_tuple=True)
        dy, dx = shifts[n].tolist()
        col = 9 - dx
        assert (rows.tolist(), cols.tolist()) == ([7 - dy], [15 - col if flips[n] else col])


def test_flip_and_none() -> None:
    images = torch.from_numpy(random_images(2000, 3, (2, 5, 6)))
    out, shifts, flips = rd.augment_batch(
        images, "flip", torch.Generator().manual_seed(2), return_params=True
    )
    assert 0.4 < flips.double().mean() < 0.6 and not shifts.any()
    assert torch.equal(out[flips], images[flips].flip(3))
    assert torch.equal(out[~flips], images[~flips])
    assert rd.augment_batch(images, "none", torch.Generator()) is images
    with pytest.raises(DataError, match="unknown augmentation"):
        rd.augment_batch(images, "mixup", torch.Generator())


def _loader(n: int = 50, **kwargs: object) -> rd.DeviceLoader:
    images = torch.from_numpy(random_images(n, 11, (3, 12, 12)))
    labels = torch.arange(n)
    options: dict[str, Any] = {"batch_size": 8, "mean": (0.5,) * 3, "std": (0.25,) * 3, **kwargs}
    return rd.DeviceLoader(images, labels, **options)


def test_loader_keeps_labels_with_images() -> None:
    n = 64
    labels = torch.arange(n) % 10
    # Every pixel of image k holds 10 * label + 5; padding is 0, so the max is the code.
    images = (labels * 10 + 5).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 32, 32).clone()
    loader = rd.DeviceLoader(
        images, labels, batch_size=16, mean=(0, 0, 0), std=(1, 1, 1), augment="cifar", seed=5
    )
    seen = 0
    for x, y in loader:
        codes = (x * 255).round().to(torch.int64).amax(dim=(1, 2, 3))
        assert torch.equal(codes, y * 10 + 5)
        assert torch.equal((x[:, :, 16, 16] * 255).round().to(torch.int64)[:, 0], y * 10 + 5)
        seen += len(y)
    assert seen == 64


def test_loader_normalises_and_uses_channels_last() -> None:
    ds = rd.load_dataset("synthetic", synthetic_size=(300, 10), seed=1)
    loader = rd.DeviceLoader(
        ds.train_images, ds.train_labels, batch_size=64, mean=ds.mean, std=ds.std, drop_last=False
    )
    batches = list(loader)
    assert [len(y) for _, y in batches] == [64, 64, 64, 64, 44]
    x = torch.cat([b for b, _ in batches])
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)
    assert x.dtype == torch.float32
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    bf16 = rd.DeviceLoader(
        ds.train_images, ds.train_labels, batch_size=64, mean=ds.mean, std=ds.std,
        dtype=torch.bfloat16, channels_last=False,
    )  # fmt: skip
    xb, _ = next(iter(bf16))
    assert xb.dtype == torch.bfloat16 and xb.is_contiguous()


def test_loader_ranks_shard_one_global_batch() -> None:
    n = 101
    single = [y for _, y in _loader(n, batch_size=16, seed=3, augment="cifar")]
    ranks = [[y for _, y in _loader(n, batch_size=8, seed=3, rank=r, world_size=2)] for r in (0, 1)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 101 // 16
    for step, whole in enumerate(single):
        a, b = ranks[0][step], ranks[1][step]
        assert not set(a.tolist()) & set(b.tolist())
        assert set(a.tolist()) | set(b.tolist()) == set(whole.tolist())
    # Without drop_last each rank gets the same number of batches and together they cover all.
    padded = [[y for _, y in _loader(n, drop_last=False, rank=r, world_size=3)] for r in range(3)]
    assert len({len(p) for p in padded}) == 1
    assert set(torch.cat([torch.cat(p) for p in padded]).tolist()) == set(range(n))
    tiny = [[y for _, y in _loader(2, drop_last=False, rank=r, world_size=5)] for r in range(5)]
    assert [len(t) for t in tiny] == [1] * 5 and [len(t[0]) for t in tiny] == [1] * 5


def test_loader_epochs_differ_and_repeat() -> None:
    loader = _loader()
    epoch0 = torch.cat([y for _, y in loader])
    epoch1 = torch.cat([y for _, y in loader])  # iterating on moves to the next epoch
    assert loader.epoch == 2 and not torch.equal(epoch0, epoch1)
    assert len(epoch0) == 48 and len(set(epoch0.tolist())) == 48
    loader.set_epoch(0)
    assert torch.equal(torch.cat([y for _, y in loader]), epoch0)
    unshuffled = _loader(shuffle=False)
    assert torch.equal(torch.cat([y for _, y in unshuffled]), torch.arange(48))


def test_loader_resumes_mid_epoch_bit_identical() -> None:
    options: dict[str, Any] = {"augment": "cifar", "seed": 9}
    reference: list[tuple[torch.Tensor, torch.Tensor]] = []
    straight = _loader(**options)
    for epoch in range(2):
        straight.set_epoch(epoch)
        reference.extend(straight)
    assert len(reference) == 12

    first = _loader(**options)
    got = []
    for x, y in first:
        got.append((x, y))
        if len(got) == 4:
            break
    state = json.loads(json.dumps(first.state_dict()))
    assert (state["epoch"], state["batch"]) == (0, 4)

    resumed = _loader(**options)
    resumed.load_state_dict(state)
    for epoch in range(state["epoch"], 2):
        resumed.set_epoch(epoch)  # a training loop's usual call keeps the resume position
        got.extend(resumed)
    assert len(got) == 12
    for (x, y), (rx, ry) in zip(got, reference, strict=True):
        assert torch.equal(x, rx) and torch.equal(y, ry)

    # A state taken after the last batch of an epoch resumes at the next epoch.
    end = _loader(**options)
    for _ in zip(range(6), end, strict=False):
        pass
    late = _loader(**options)
    late.load_state_dict(end.state_dict())
    assert torch.equal(next(iter(late))[0], reference[6][0])


class _HostToDeviceCopies(TorchDispatchMode):
    """Records every op that reads a non-scalar CPU tensor and writes a ``meta`` one."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        leaves = pytree.tree_leaves((args, kwargs))
        ins = [t for t in leaves if isinstance(t, torch.Tensor)]
        outs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cpu" and t.dim() > 0 for t in ins) and any(
            t.device.type == "meta" for t in outs
        ):
            self.ops.append(str(func))
        return out


@pytest.mark.parametrize("augment", ["cifar", "flip", "none"])
def test_loader_copies_from_host_once_per_epoch_not_per_batch(augment: str) -> None:
    # The meta device stands in for CUDA: every host-to-device copy is seen, and any read of a
    # device value back to the host (.item(), bool(tensor), nonzero) would raise.
    loader = _loader(200, device="meta", augment=augment, drop_last=False)
    assert len(loader) == 25
    with _HostToDeviceCopies() as spy:
        batches = list(loader)
    assert len(batches) == 25 and batches[0][0].device.type == "meta"
    assert len(spy.ops) == 1, spy.ops
    # Mid-epoch resume: still one copy for the rest of the epoch, then one for the next.
    resumed = _loader(200, device="meta", augment=augment, drop_last=False)
    resumed.load_state_dict({**loader.state_dict(), "epoch": 0, "batch": 10})
    with _HostToDeviceCopies() as spy:
        assert len(list(resumed)) == 15 and len(list(resumed)) == 25
    assert len(spy.ops) == 2, spy.ops


def test_eval_batches_and_normalize_copy_from_host_once() -> None:
    images = torch.from_numpy(random_images(200, 4, (3, 6, 6)))
    with _HostToDeviceCopies() as spy:
        batches = list(
            rd.eval_batches(images, torch.arange(200), 8, (0.1,) * 3, (0.7,) * 3, "meta")
        )
    assert len(batches) == 25 and len(spy.ops) <= 4, spy.ops  # images, labels, mean, std
    on_device = images.to("meta")
    with _HostToDeviceCopies() as spy:
        for _ in range(5):
            rd.normalize_batch(on_device, (0.2,) * 3, (0.3,) * 3)
    assert len(spy.ops) <= 2, spy.ops  # mean and std, made once


def test_loader_augmentation_is_augment_batch_with_per_batch_seed() -> None:
    # Drawing a whole epoch up front keeps each batch's values those of augment_batch with a
    # CPU generator seeded from (seed, epoch, batch index, rank), as before the change.
    n, seed, rank = 90, 4, 1
    images = torch.from_numpy(random_images(n, 11, (3, 12, 12)))
    loader = _loader(n, augment="cifar", seed=seed, rank=rank, world_size=2, drop_last=False)
    loader.set_epoch(3)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [8] * 5 + [5]
    for i, (x, idx) in enumerate(batches):
        gen = torch.Generator().manual_seed(loader_mod._seed_from("aug", seed, 3, i, rank))
        expected = rd.normalize_batch(
            rd.augment_batch(images[idx], "cifar", gen), (0.5,) * 3, (0.25,) * 3
        )
        assert torch.equal(x, expected), i


def test_loader_rejects_mismatched_state_and_tiny_data() -> None:
    state = _loader(seed=1).state_dict()
    with pytest.raises(DataError, match=r"seed=1 \(now 2\)"):
        _loader(seed=2).load_state_dict(state)
    with pytest.raises(DataError, match="incomplete"):
        _loader().load_state_dict({"epoch": 0})
    with pytest.raises(DataError, match="no full batch"):
        _loader(n=7)
    with pytest.raises(DataError, match="rank"):
        _loader(rank=2, world_size=2)


def test_eval_batches_keep_order_and_last_partial_batch() -> None:
    ds = rd.load_dataset("digits")
    batches = list(
        rd.eval_batches(ds.test_images, ds.test_labels, 128, ds.mean, ds.std, channels_last=False)
    )
    assert [len(y) for _, y in batches] == [128, 128, 104]
    assert torch.equal(torch.cat([y for _, y in batches]), ds.test_labels)
    expected = rd.normalize_batch(ds.test_images, ds.mean, ds.std, channels_last=False)
    assert torch.equal(torch.cat([x for x, _ in batches]), expected)
