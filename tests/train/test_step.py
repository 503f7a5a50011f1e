"""One SGD step's state: momentum buffers restored in their parameter's layout."""

from __future__ import annotations

import torch


def test_restored_momentum_keeps_the_parameters_layout() -> None:
    from reslab.train import restore_momentum

    conv = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9)
    saved = {"optim.0": torch.randn(8, 3, 3, 3), "optim.1": torch.randn(8)}
    restore_momentum(opt, saved)
    buf = opt.state[conv.weight]["momentum_buffer"]
    assert buf.stride() == conv.weight.stride() != saved["optim.0"].stride()
    assert torch.equal(buf, saved["optim.0"])
    assert torch.equal(opt.state[conv.bias]["momentum_buffer"], saved["optim.1"])


# --- EMA warm-up, gradient accumulation, soft targets (issue 10) --------------------------------


def test_ema_warmup_follows_timms_model_ema_v3() -> None:
    from reslab.train.step import EMA

    net = torch.nn.Linear(3, 2)
    warm, flat = EMA(net, 0.999, warmup=True), EMA(net, 0.999, warmup=False)
    # timm ModelEmaV3(use_warmup=True): 1 - (1 + t)^(-2/3) with t = update number - 1, capped.
    for step in (1, 2, 10, 1000, 10**6):
        assert warm.decay_at(step) == min(0.999, 1 - (1 + (step - 1)) ** (-2 / 3))
        assert flat.decay_at(step) == 0.999
    assert warm.decay_at(1) == 0.0 and warm.decay_at(31_623) == 0.999  # timm: 0.999 at ~31.6k


def test_ema_warmup_forgets_the_random_start_on_a_short_run() -> None:
    """Today's constant-decay EMA of a 50-step run is still mostly its initialisation."""
    from reslab.train.step import EMA

    torch.manual_seed(0)
    net = torch.nn.Linear(8, 8)
    start = net.weight.detach().clone()
    warm, flat = EMA(net, 0.99, warmup=True), EMA(net, 0.99, warmup=False)
    for step in range(1, 51):
        with torch.no_grad():
            net.weight.add_(torch.randn_like(net.weight) * 0.01 + 0.02)  # drifts away
        warm.update(net, step)
        flat.update(net, step)
    now = net.weight.detach()
    gone = (now - start).norm()

    def share_of_start(ema: EMA) -> float:  # 1: the EMA is the start; 0: it is the net now
        return float((now - ema.module.weight).norm() / gone)

    assert share_of_start(flat) > 0.6  # 0.99^50 = 0.6 of the start left
    assert share_of_start(warm) < 0.35
    # The first warm update copies the weights exactly; buffers are copied as before.
    bn = torch.nn.BatchNorm1d(4)
    ema = EMA(bn, 0.999, warmup=True)
    with torch.no_grad():
        bn.weight.add_(1.0)
        bn.running_mean.add_(2.0)
    ema.update(bn, 1)
    assert torch.equal(ema.module.weight, bn.weight)
    assert torch.equal(ema.module.running_mean, bn.running_mean)


def _step(accum: int, soft: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import contextlib

    from reslab.train.step import train_step

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(12, 5)
    )  # no BN: K changes nothing
    opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    x = torch.randn(8, 3, 2, 2)
    y = torch.arange(8) % 5
    target = torch.softmax(torch.randn(8, 5), 1) if soft else y
    loss, logits = train_step(
        net, opt, x, target, contextlib.nullcontext(), 0.1, 1.0, accum_steps=accum
    )
    return loss.detach(), logits.detach(), net[1].weight.detach()


def test_accumulated_micro_batches_make_the_same_step_as_the_whole_batch() -> None:
    """Loss scaled by 1/K, one update: without BN the K micro-batches are the whole batch."""
    for soft in (False, True):
        loss1, logits1, w1 = _step(1, soft)
        for k in (2, 4, 8):
            loss_k, logits_k, w_k = _step(k, soft)
            torch.testing.assert_close(loss_k, loss1)
            torch.testing.assert_close(logits_k, logits1)
            torch.testing.assert_close(w_k, w1)


def test_soft_targets_with_label_smoothing_match_timms_mixup_target() -> None:
    """F.cross_entropy(soft, label_smoothing=ε) = timm's SoftTargetCrossEntropy of
    mixup_target: both labels smoothed (off ε/C, on 1-ε+ε/C), then mixed by λ."""
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    lam, eps, c = 0.7, 0.1, 4
    onehot = torch.nn.functional.one_hot(y, c).float()
    smooth = onehot * (1 - eps) + eps / c
    timm_target = smooth * lam + smooth.flip(0) * (1 - lam)
    timm_loss = (-timm_target * torch.log_softmax(logits, 1)).sum(1).mean()
    ours = torch.nn.functional.cross_entropy(
        logits, onehot * lam + onehot.flip(0) * (1 - lam), label_smoothing=eps
    )
    torch.testing.assert_close(ours, timm_loss)
