"""Augmentation, normalisation and :class:`DeviceLoader`: batches built on the device.

:class:`DeviceLoader` keeps a whole uint8 split on the device (50,000 CIFAR images are 150 MB)
and builds each batch by indexing, augmenting with batched tensor ops (no per-sample Python) and
normalising there, which removes the host-side input pipeline that otherwise bounds small-image
training. Its order and augmentation are functions of ``(seed, epoch, batch index, rank)``, so a
run resumed mid-epoch sees bit-identical batches and ranks shard one global permutation.

The ``"cifar"`` augmentation is He et al. 2015, "Deep Residual Learning for Image Recognition"
(arXiv:1512.03385), Sec. 4.2: pad 4 pixels, random 32×32 crop, random horizontal flip.
:func:`eval_batches` gives in-order batches without augmentation for evaluation.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal, overload

import torch
import torch.nn.functional as F

from reslab.errors import DataError

AUGMENTS = ("cifar", "flip", "none")

# He et al. 2015, "Deep Residual Learning for Image Recognition" (arXiv:1512.03385), Sec. 4.2:
# "4 pixels are padded on each side, and a 32×32 crop is randomly sampled from the padded image
# or its horizontal flip".
_CROP_PAD = 4


def _check_augment(images: torch.Tensor, kind: str) -> None:
    if kind not in AUGMENTS:
        raise DataError(f"unknown augmentation {kind!r}; choose one of {', '.join(AUGMENTS)}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"augment_batch needs uint8 N×C×H×W images, got {images.dtype}")


def _draw_augment(
    b: int, kind: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``b`` shifts (``b×2`` int64) and flips (``b`` bool) on ``generator``'s device.

    The draw order (crop offsets, then flips) fixes the values a seed gives; :class:`DeviceLoader`
    relies on it to draw a whole epoch's parameters up front, batch by batch.
    """
    dev = generator.device
    shifts = torch.zeros(b, 2, dtype=torch.int64, device=dev)
    flips = torch.zeros(b, dtype=torch.bool, device=dev)
    if kind == "none" or b == 0:
        return shifts, flips
    if kind == "cifar":
        offsets = torch.randint(0, 2 * _CROP_PAD + 1, (b, 2), generator=generator, device=dev)
        shifts = offsets - _CROP_PAD
    flips = torch.rand(b, generator=generator, device=dev) < 0.5
    return shifts, flips


def _apply_augment(
    images: torch.Tensor, kind: str, shifts: torch.Tensor, flips: torch.Tensor
) -> torch.Tensor:
    """Apply drawn ``shifts``/``flips`` (already on the images' device) with batched ops only.

    Nothing here reads a value back to the host, so on CUDA it queues kernels without a sync.
    """
    b, c, h, w = images.shape
    if kind == "none" or b == 0:
        return images
    if kind == "flip":
        return torch.where(flips.view(b, 1, 1, 1), images.flip(3), images)
    # Zero-pad once, then two gathers with per-sample row and column indices (broadcast views,
    # so no B×C×H×W index is built); the flip is folded into the column index:
    # out[n, ch, i, j] = padded[n, ch, dy + P + i, dx + P + (W-1-j if flip else j)].
    padded = F.pad(images, (_CROP_PAD,) * 4)
    wp = w + 2 * _CROP_PAD
    device = images.device
    cols = torch.arange(w, device=device)
    cols = torch.where(flips[:, None], w - 1 - cols, cols) + (shifts[:, 1:] + _CROP_PAD)
    rows = torch.arange(h, device=device) + (shifts[:, :1] + _CROP_PAD)
    picked = padded.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, wp))
    return picked.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))


@overload
def augment_batch(
    images: torch.Tensor,
    kind: str,
    generator: torch.Generator,
    *,
    return_params: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def augment_batch(
    images: torch.Tensor,
    kind: str,
    generator: torch.Generator,
    *,
    return_params: Literal[True],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


def augment_batch(
    images: torch.Tensor,
    kind: str,
    generator: torch.Generator,
    *,
    return_params: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augment a uint8 ``N×C×H×W`` batch with batched tensor ops on its own device.

    ``"cifar"``: zero-pad 4 pixels, take a random crop of the original size (shift ``dy, dx``
    uniform in [-4, 4]), then flip horizontally with probability 1/2 (He et al. 2015, Sec. 4.2).
    ``"flip"``: the flip only; ``"none"``: unchanged. The padding is black (pixel 0) as in the
    common torchvision ``RandomCrop(32, padding=4)`` recipe, not the mean-subtracted zero of the
    original paper. With ``return_params`` also returns ``shifts`` (``N×2`` int64 ``dy, dx``,
    where unflipped ``out[i, j] = image[i + dy, j + dx]``) and ``flips`` (``N`` bool).
    """
    _check_augment(images, kind)
    shifts, flips = _draw_augment(int(images.shape[0]), kind, generator)
    # Random numbers come from ``generator`` on its own device and only these B-sized tensors
    # move, so the draws are the same whatever device holds the images. (DeviceLoader instead
    # draws a whole epoch at once and copies it to the device once.)
    shifts = shifts.to(images.device)
    flips = flips.to(images.device)
    out = _apply_augment(images, kind, shifts, flips)
    if return_params:
        return out, shifts, flips
    return out


def _normalize(
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    dtype: torch.dtype,
    channels_last: bool,
) -> torch.Tensor:
    if channels_last and images.dim() == 4:
        # Reorder the 1-byte pixels rather than the 4-byte floats; the elementwise ops below
        # keep the channels-last layout.
        images = images.contiguous(memory_format=torch.channels_last)
    x = images.to(torch.float32).div_(255.0).sub_(mean).div_(std)
    return x.to(dtype)


def _stats_tensor(values: Sequence[float], channels: int, device: torch.device) -> torch.Tensor:
    if len(values) != channels:
        raise DataError(f"mean/std need {channels} values (one per channel), got {len(values)}")
    return _stats_cached(tuple(float(v) for v in values), device)


@functools.lru_cache(maxsize=32)
def _stats_cached(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    # Made once per (values, device): building it copies from the host, which on CUDA is a
    # blocking copy, so normalize_batch called per batch must not rebuild it. Read-only by use.
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to ``device`` without making the host wait for the device.

    On CUDA the tensor is pinned first, so the copy is truly asynchronous (a pageable
    ``.to(device)`` is a cudaMemcpy that waits for the stream); the caching host allocator keeps
    the pinned buffer alive until the copy has run. The loader calls this once per epoch.
    """
    if device.type == "cuda":
        if torch.cuda.is_available():
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)
    return tensor.to(device)


def normalize_batch(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
) -> torch.Tensor:
    """uint8 ``N×C×H×W`` to ``dtype`` ``(x/255 - mean) / std`` on the images' device."""
    c = int(images.shape[1])
    mean_t = _stats_tensor(mean, c, images.device)
    std_t = _stats_tensor(std, c, images.device)
    return _normalize(images, mean_t, std_t, dtype, channels_last)


def _seed_from(*parts: object) -> int:
    """A 63-bit seed from the parts, stable across processes and Python versions."""
    text = ",".join(str(p) for p in parts).encode()
    digest = hashlib.blake2b(text, digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class DeviceLoader:
    """Shuffled, sharded, augmented, normalised batches from a split kept on the device.

    The whole uint8 split moves to ``device`` once. Each epoch draws one permutation from
    ``(seed, epoch)``; every rank draws the same one and takes ``perm[rank::world_size]`` (after
    trimming to a multiple of ``world_size * batch_size`` with ``drop_last``; without it, padding
    by wrapping around as ``DistributedSampler`` does), so at each step the ranks' batches
    together are exactly the batch one process with ``world_size * batch_size`` would see.

    Augmentation for batch ``i`` uses a generator seeded from ``(seed, epoch, i, rank)``, so the
    only state is ``(epoch, next batch)``. At the start of an epoch the loader draws every
    batch's crop shifts and flips on the CPU, packs them with the epoch's sample indices and
    copies them to the device in one asynchronous copy; each batch then only slices those, so
    on CUDA the loop queues kernels and never waits for the GPU. :meth:`state_dict` /
    :meth:`load_state_dict` resume mid-epoch with bit-identical batches. Iterating to the end
    of an epoch moves to the next; :meth:`set_epoch` jumps to another epoch (and keeps the
    position if it is the current one, so ``set_epoch(e)`` at the top of a resumed epoch loop
    does not lose the resume point).
    Yields ``(x, y)``: ``x`` of ``dtype`` (channels-last if asked), ``y`` int64, both on device.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device = "cpu",
        augment: str = "none",
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"DeviceLoader needs uint8 N×C×H×W images, got {images.dtype}")
        if labels.shape != images.shape[:1]:
            raise ValueError("labels must have one entry per image")
        if augment not in AUGMENTS:
            raise DataError(f"unknown augmentation {augment!r}; choose one of {AUGMENTS}")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise DataError(
                f"invalid loader setup batch_size={batch_size}, rank={rank}, "
                f"world_size={world_size}; need batch_size >= 1 and 0 <= rank < world_size"
            )
        n = int(images.shape[0])
        if n == 0 or (drop_last and n < batch_size * world_size):
            raise DataError(
                f"{n} images make no full batch of {batch_size} × {world_size} rank(s); "
                "lower batch_size or pass drop_last=False"
            )
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, dtype=torch.int64)
        self.batch_size = batch_size
        self.augment = augment
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.channels_last = channels_last
        self.dtype = dtype
        channels = int(images.shape[1])
        self._mean = _stats_tensor(mean, channels, self.device)
        self._std = _stats_tensor(std, channels, self.device)
        self.epoch = 0
        self._batch = 0

    @property
    def num_samples(self) -> int:
        return int(self.images.shape[0])

    def __len__(self) -> int:
        global_batch = self.batch_size * self.world_size
        if self.drop_last:
            return self.num_samples // global_batch
        per_rank = -(-self.num_samples // self.world_size)
        return -(-per_rank // self.batch_size)

    def _shard(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for ``epoch`` (CPU, int64)."""
        n = self.num_samples
        if self.shuffle:
            gen = torch.Generator().manual_seed(_seed_from("perm", self.seed, epoch))
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        if self.drop_last:
            order = order[: len(self) * self.batch_size * self.world_size]
        else:
            # Wrap around (repeating if there are fewer samples than ranks) so every rank gets
            # the same number of batches and no rank waits on a collective that never comes.
            pad = -n % self.world_size
            order = torch.cat([order, order.repeat(-(-pad // n))[:pad]])
        return order[self.rank :: self.world_size]

    def _epoch_plan(self, epoch: int) -> torch.Tensor:
        """``4×n`` int64 on the device: rows sample index, ``dy``, ``dx``, flip; one copy.

        Batch ``i``'s shifts and flips are drawn as ``augment_batch`` would with a CPU
        generator seeded from ``("aug", seed, epoch, i, rank)``, so the values do not depend on
        the device or on where in the epoch a run resumed.
        """
        shard = self._shard(epoch)
        plan = torch.zeros(4, len(shard), dtype=torch.int64)
        plan[0] = shard
        if self.augment != "none":
            for i, start in enumerate(range(0, len(shard), self.batch_size)):
                stop = min(start + self.batch_size, len(shard))
                gen = torch.Generator().manual_seed(
                    _seed_from("aug", self.seed, epoch, i, self.rank)
                )
                shifts, flips = _draw_augment(stop - start, self.augment, gen)
                plan[1:3, start:stop] = shifts.t()
                plan[3, start:stop] = flips
        return _to_device(plan, self.device)

    def set_epoch(self, epoch: int) -> None:
        """Go to the start of ``epoch``; if already in it, keep the current position."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._batch = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n_batches = len(self)
        if self._batch >= n_batches:
            self.epoch += 1
            self._batch = 0
        epoch = self.epoch
        plan = self._epoch_plan(epoch)
        # Device-side views made once per epoch; the loop below only slices them.
        order = plan[0]
        shifts = plan[1:3].t()
        flips = plan[3].bool()
        for i in range(self._batch, n_batches):
            batch = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = order[batch]
            x = self.images[idx]
            y = self.labels[idx]
            x = _apply_augment(x, self.augment, shifts[batch], flips[batch])
            x = _normalize(x, self._mean, self._std, self.dtype, self.channels_last)
            # Count the batch as consumed before handing it out, so a checkpoint taken while
            # the caller holds batch i resumes at batch i + 1.
            self._batch = i + 1
            yield x, y
        self.epoch = epoch + 1
        self._batch = 0

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position: epoch, next batch, and the settings it depends on."""
        return {
            "epoch": self.epoch,
            "batch": self._batch,
            "seed": self.seed,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "augment": self.augment,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the saved position; the loader must be set up as the saved one was."""
        mine = self.state_dict()
        try:
            epoch, batch = int(state["epoch"]), int(state["batch"])
            mismatched = [k for k in mine if k not in ("epoch", "batch") and state[k] != mine[k]]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"loader state is incomplete or malformed ({exc!r})") from exc
        if mismatched:
            detail = ", ".join(f"{k}={state[k]!r} (now {mine[k]!r})" for k in mismatched)
            raise DataError(f"cannot resume the data loader: it was saved with {detail}")
        if epoch < 0 or not 0 <= batch <= len(self):
            raise DataError(f"loader state epoch={epoch}, batch={batch} is out of range")
        self.epoch, self._batch = epoch, batch


def eval_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: str | torch.device = "cpu",
    channels_last: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """In-order normalised batches without augmentation, keeping the last partial batch."""
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    dev = torch.device(device)
    channels = int(images.shape[1])
    mean_t = _stats_tensor(mean, channels, dev)
    std_t = _stats_tensor(std, channels, dev)
    # One copy of the whole split (a no-op when it is already there), not one per batch: a
    # pageable per-batch copy would make the host wait for the GPU at every step.
    images = images.to(dev)
    labels = labels.to(dev, dtype=torch.int64)
    for start in range(0, int(images.shape[0]), batch_size):
        x = images[start : start + batch_size]
        y = labels[start : start + batch_size]
        yield _normalize(x, mean_t, std_t, dtype, channels_last), y
