"""Mixup and cutmix: draws that depend on (seed, epoch, batch, rank) alone, applied in place."""

from __future__ import annotations

import pytest
import torch

from reslab.data.mix import MixDraw, MixSettings, apply_mix, draw_mix

BOTH = MixSettings(mixup=0.2, cutmix=1.0, prob=0.8, switch_prob=0.5)


def _draws(settings: MixSettings, n: int = 400, **kw: int) -> list[MixDraw]:
    return [draw_mix(settings, 32, 32, seed=kw.get("seed", 0), epoch=kw.get("epoch", 0), batch=i)
            for i in range(n)]  # fmt: skip


def test_draws_are_a_function_of_seed_epoch_batch_and_rank() -> None:
    one = draw_mix(BOTH, 32, 32, seed=3, epoch=2, batch=7, rank=1)
    assert one == draw_mix(BOTH, 32, 32, seed=3, epoch=2, batch=7, rank=1)
    others = [
        draw_mix(BOTH, 32, 32, seed=4, epoch=2, batch=7, rank=1),
        draw_mix(BOTH, 32, 32, seed=3, epoch=3, batch=7, rank=1),
        draw_mix(BOTH, 32, 32, seed=3, epoch=2, batch=8, rank=1),
        draw_mix(BOTH, 32, 32, seed=3, epoch=2, batch=7, rank=0),
    ]
    assert all(o != one for o in others)
    # Off: no draw at all, every batch unmixed.
    assert {d.kind for d in _draws(MixSettings(), 20)} == {"none"}
    assert {d.kind for d in _draws(MixSettings(mixup=0.2, prob=0.0), 20)} == {"none"}


def test_prob_and_switch_prob_pick_the_kind_per_batch() -> None:
    draws = _draws(BOTH)
    kinds = [d.kind for d in draws]
    mixed = [k for k in kinds if k != "none"]
    assert len(mixed) / len(kinds) == pytest.approx(0.8, abs=0.06)
    assert mixed.count("cutmix") / len(mixed) == pytest.approx(0.5, abs=0.08)
    assert {d.kind for d in _draws(MixSettings(mixup=0.2), 50)} == {"mixup"}
    assert {d.kind for d in _draws(MixSettings(cutmix=1.0), 50)} == {"cutmix"}
    # mixup's λ ~ Beta(0.2, 0.2): mostly near 0 or 1 (its mean is 1/2).
    lams = [d.lam for d in _draws(MixSettings(mixup=0.2))]
    assert sum(lams) / len(lams) == pytest.approx(0.5, abs=0.06)
    assert sum(min(v, 1 - v) < 0.1 for v in lams) / len(lams) > 0.5


def test_cutmix_lambda_is_the_share_left_unpasted() -> None:
    for d in _draws(MixSettings(cutmix=1.0), 100):
        top, bottom, left, right = d.box
        assert 0 <= top <= bottom <= 32 and 0 <= left <= right <= 32
        assert d.lam == pytest.approx(1 - (bottom - top) * (right - left) / 32**2)


def test_mixup_mixes_images_and_labels_with_the_mirrored_partner() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 2, 3])
    keep = x.clone()
    out = apply_mix(x, y, MixDraw("mixup", 0.3), num_classes=5)
    torch.testing.assert_close(out.images, 0.3 * keep + 0.7 * keep.flip(0))
    assert out.images.is_contiguous(memory_format=torch.channels_last)
    assert out.targets[0].tolist() == pytest.approx([0.3, 0, 0, 0.7, 0])
    assert torch.allclose(out.targets.sum(1), torch.ones(4))
    assert out.dominant.tolist() == [3, 2, 1, 0]  # λ < 0.5: the partner's label dominates


def test_cutmix_pastes_the_partners_box_and_no_mix_is_one_hot() -> None:
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 2, 6, 6).clone()
    y = torch.tensor([0, 1, 2, 3])
    out = apply_mix(x, y, MixDraw("cutmix", 1 - 4 / 36, (1, 3, 2, 4)), num_classes=4)
    img = out.images[0, 0]
    assert torch.all(img[1:3, 2:4] == 3) and (img == 0).sum() == 32  # partner of 0 is 3
    assert out.targets[0].tolist() == pytest.approx([32 / 36, 0, 0, 4 / 36])
    assert out.dominant.tolist() == [0, 1, 2, 3]
    plain = apply_mix(torch.ones(2, 1, 2, 2), torch.tensor([1, 0]), MixDraw("none"), 3)
    assert plain.targets.tolist() == [[0, 1, 0], [1, 0, 0]] and torch.all(plain.images == 1)
