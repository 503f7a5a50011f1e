"""Fast inference for the many forward passes of a lesion measurement: each BN folded into its
convolution, on a copy, and the precision those passes run in.

In eval mode a batch norm is a fixed affine map per channel, ``y = γ (z − μ) / √(σ² + ε) + β``;
after a convolution ``z = W ∗ x + b`` it folds into that convolution: ``W' = W γ / √(σ² + ε)``,
``b' = (b − μ) γ / √(σ² + ε) + β`` (the folding of Jacob et al. 2018, arXiv:1712.05877, §3.2;
torch's ``fuse_conv_bn_weights``). The folded net skips one pass over every activation a BN
reads. It computes the same function, but rounds differently: its logits differ from the
unfolded net's by float rounding alone, and a prediction can change only where the top two
logits are that close (a near-tie; ``tests/measure/test_inference.py`` bounds both).

Which BNs fold: those whose input is the output of a plain ``nn.Conv2d`` that nothing else
reads, found in the net's traced graph (``torch.fx``), each module called once. A BN that reads
anything else keeps its place: a pre-activation block's first BN (it reads the block's input,
which the shortcut reads too), a BN after the addition, a stem without BN. A net that cannot be
traced is copied unfolded. The BN's module becomes an ``nn.Identity`` under the same name, so
every block keeps its structure: lesion sites, deletions and swaps
(:mod:`reslab.measure.lesion_sites`) and the runs from the middle (:mod:`reslab.measure.prefix`)
work on the copy as on the original, which is never changed.
"""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ["PRECISIONS", "autocast", "fold_batchnorm", "foldable_pairs"]

#: The precisions lesion passes run in: fp32, or bf16 autocast (the trainer's bf16).
PRECISIONS = ("fp32", "bf16")

# What torch.fx raises on a forward it cannot trace (data-dependent control flow, a call it
# cannot proxy): the net is then measured unfolded, which is slower but exact.
_UNTRACEABLE = (torch.fx.proxy.TraceError, TypeError, ValueError, RuntimeError, AttributeError)


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(convolution, BN) module names where the BN reads only that convolution's output.

    Both must be called once in the forward pass, the convolution be a plain ``nn.Conv2d``
    (not a subclass, whose forward may not use ``weight`` as is) and the BN an
    ``nn.BatchNorm2d`` in eval mode with running statistics.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except _UNTRACEABLE:
        return []
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        users = list(node.users)
        if node.op != "call_module" or len(users) != 1 or users[0].op != "call_module":
            continue
        conv, bn = modules.get(str(node.target)), modules.get(str(users[0].target))
        if (
            type(conv) is nn.Conv2d
            and type(bn) is nn.BatchNorm2d
            and not bn.training
            and bn.running_mean is not None
            and calls[node.target] == calls[users[0].target] == 1
        ):
            pairs.append((str(node.target), str(users[0].target)))
    return pairs


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with each BN of :func:`foldable_pairs` folded into its convolution.

    The fold is computed in float64 and stored in the convolution's dtype; the BN becomes an
    ``nn.Identity`` of the same name. ``model`` itself is not changed.
    """
    folded = copy.deepcopy(model)
    with torch.no_grad():
        for conv_name, bn_name in foldable_pairs(folded):
            _fold(folded, conv_name, bn_name)
    return folded


def _fold(folded: nn.Module, conv_name: str, bn_name: str) -> None:
    conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    assert bn.running_mean is not None and bn.running_var is not None
    dtype = conv.weight.dtype
    weight, bias = fuse_conv_bn_weights(
        conv.weight.double(),
        None if conv.bias is None else conv.bias.double(),
        bn.running_mean.double(),
        bn.running_var.double(),
        bn.eps,
        None if bn.weight is None else bn.weight.double(),
        None if bn.bias is None else bn.bias.double(),
    )
    conv.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
    parent, _, name = bn_name.rpartition(".")
    folded.get_submodule(parent).register_module(name, nn.Identity())


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` for ``"bf16"`` (as the trainer's bf16), nothing for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
