"""Packed twins: one SGD step of N nets as one grouped net vs N separate steps.

    python benchmarks/bench_pack.py                          # 4 × resnet56, digits-shaped
    python benchmarks/bench_pack.py --model resnet20 --size 32 --channels 3 --vmap
    python benchmarks/bench_pack.py --device cuda --size 32 --channels 3 --batch 128

Times the step of :mod:`reslab.train.pack` (reslab.train.packed.pack_nets: grouped
convolutions, one BN over every member's channels, one SGD over the packed tensors) against
N steps of N ordinary models, in the trainer's layout (channels_last, fp32, 1 CPU thread by
default) and, with ``--vmap``, against ``torch.func.vmap`` over ``functional_call`` (PyTorch's
model-ensembling recipe). Rounds alternate between the variants so that a shared machine's
load falls on each alike; the CPU time of the process is printed next to the wall time (on
one thread it is what the step cost, whatever else the machine runs).
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.models import create_model
from reslab.train.packed import pack_nets


def _sgd(params: object) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=True)  # type: ignore[arg-type]


def variants(args: argparse.Namespace, device: torch.device) -> dict[str, Callable[[], None]]:
    fmt = torch.channels_last
    n, b, k = args.n, args.batch, 10
    models: list[nn.Module] = []
    for seed in range(n):
        torch.manual_seed(seed)
        net = create_model(args.model, num_classes=k, in_channels=args.channels)
        models.append(net.to(device).to(memory_format=fmt))  # type: ignore[call-overload]
    xs = torch.randn(n, b, args.channels, args.size, args.size, device=device)
    ys = torch.randint(0, k, (n, b), device=device)
    alone = [(m, _sgd(m.parameters()), xs[i].contiguous(memory_format=fmt), ys[i])
             for i, m in enumerate(models)]  # fmt: skip

    def separate() -> None:
        for model, opt, x, y in alone:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    packed_net = pack_nets(models, channels_last=True)
    packed_opt = _sgd(packed_net.parameters())
    xp = xs.transpose(0, 1).reshape(b, n * args.channels, args.size, args.size)
    xp = xp.contiguous(memory_format=fmt)

    def packed() -> None:
        logits = packed_net(xp).view(b, n, k).transpose(0, 1).reshape(-1, k)
        loss = F.cross_entropy(logits, ys.reshape(-1), reduction="none").view(n, b).mean(1)
        packed_opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        packed_opt.step()

    runs = {"separate": separate, "packed": packed}
    if args.vmap:
        from torch.func import functional_call, stack_module_state

        plain = [copy.deepcopy(m).to(memory_format=torch.contiguous_format) for m in models]  # type: ignore[call-overload]
        params, buffers = stack_module_state(plain)
        base = copy.deepcopy(plain[0]).to("meta")
        vopt = _sgd(list(params.values()))

        def call(p: dict[str, Tensor], bufs: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(base, (p, bufs), (x,))

        vcall = torch.vmap(call)

        def vmapped() -> None:
            logits = vcall(params, buffers, xs).reshape(-1, k)
            loss = F.cross_entropy(logits, ys.reshape(-1), reduction="none").view(n, b).mean(1)
            vopt.zero_grad(set_to_none=True)
            loss.sum().backward()
            vopt.step()

        runs["vmap"] = vmapped
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--n", type=int, default=4, help="members of the pack")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=8, help="image side (digits: 8)")
    p.add_argument("--channels", type=int, default=1, help="image channels (digits: 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=5, help="steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--vmap", action="store_true", help="also time torch.func.vmap")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the trainer does on CPU
    device = torch.device(args.device)
    runs = variants(args, device)
    best: dict[str, tuple[float, float]] = {}
    for _ in range(args.rounds):
        for name, step in runs.items():
            step()  # warm-up: oneDNN primitives, allocator
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            w = (time.perf_counter() - wall) / args.steps * 1e3
            c = (time.process_time() - cpu) / args.steps * 1e3
            best[name] = min(best.get(name, (w, c)), (w, c))
    print(
        f"{args.n} × {args.model}, batch {args.batch}, {args.channels}×{args.size}², {device}, "
        f"{args.threads} thread(s), best of {args.rounds} rounds of {args.steps}"
    )
    base_w, base_c = best["separate"]
    for name, (w, c) in best.items():
        print(
            f"  {name:<9} {w:8.1f} ms wall  {c:8.1f} ms CPU per step of all {args.n}  "
            f"({base_w / w:.2f}× wall, {base_c / c:.2f}× CPU vs separate)"
        )


if __name__ == "__main__":
    main()
