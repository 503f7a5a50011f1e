"""N nets of one architecture as one grouped net: the module side of packed training.

:func:`pack_nets` turns N models with the same parameter shapes into ONE module whose layers
hold the members side by side along the channel dimension: member ``i`` owns channels
``[i*C, (i+1)*C)`` of every activation. A convolution becomes a grouped convolution
(``groups = N * groups``), BN one BN over ``N * C`` channels (each channel keeps its own batch
statistics and running averages, so each member's are its own), the classifier one batched
matrix product per member, and option A's zero-padding shortcut pads inside each member's
block. Every other op of a ResNet (ReLU, the residual sum, pooling, the average over the
image) is channel-local, so the packed forward computes each member's forward on its own
slice, and the gradient of the sum of the members' losses is each member's own gradient.

Every packed tensor (parameters, buffers, momentum) is the concatenation of the members'
tensors along dim 0 (:func:`pack_tensor`), so elementwise SGD with momentum, Nesterov and
weight decay over the packed parameters is each member's own update.

A plain member packs with residual members of the same shapes (option A shortcuts have no
parameters, and a plain twin draws the same initial weights): the packed net is the residual
one, and each shortcut's output is multiplied by a per-member 0/1 mask. ``out + 0·shortcut(x)``
is ``out`` exactly, forward and backward.

Measured on this project's 2-core CPU (docs/PERFORMANCE.md, "Packed twins"), grouped
convolutions beat ``torch.func.vmap`` over ``functional_call`` (whose conv batching rule
builds the same grouped convolution behind extra layout copies).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from reslab.blocks.shortcuts import Add, GatedAdd, PadShortcut, ScaledAdd
from reslab.models.resnet import ResNet

__all__ = [
    "PackedLinear",
    "PackedPad",
    "check_packed",
    "pack_nets",
    "pack_tensor",
    "packable_reason",
    "unpack",
]

# Modules whose forward is channel-local, or that pack_nets replaces by a packed twin.
_LEAVES = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.ReLU, nn.Identity, nn.MaxPool2d, PadShortcut)
_JOINS = (Add, ScaledAdd, GatedAdd)  # how a shortcut meets F(x): elementwise (or a conv)


class PackedLinear(nn.Module):
    """N ``nn.Linear(in, out)`` side by side: ``[B, N*in] -> [B, N*out]``, one bmm."""

    def __init__(self, n: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.n, self.in_features, self.out_features = n, in_features, out_features
        self.weight = nn.Parameter(torch.empty(n * out_features, in_features))
        self.bias = nn.Parameter(torch.empty(n * out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        xs = x.reshape(b, self.n, self.in_features).transpose(0, 1)  # N, B, in
        w = self.weight.view(self.n, self.out_features, self.in_features).transpose(1, 2)
        if self.bias is None:
            out = torch.bmm(xs, w)
        else:
            out = torch.baddbmm(self.bias.view(self.n, 1, self.out_features), xs, w)
        return out.transpose(0, 1).reshape(b, self.n * self.out_features)


class PackedPad(nn.Module):
    """Option A's shortcut (:class:`PadShortcut`) inside each of N members' channel blocks."""

    def __init__(self, n: int, pad: PadShortcut) -> None:
        super().__init__()
        self.n, self.in_planes, self.out_planes, self.stride = (
            n,
            pad.in_planes,
            pad.out_planes,
            pad.stride,
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_planes - self.in_planes
        if not extra:
            return x
        b, _, h, w = x.shape
        # Allocated so that the 4-D result is channels_last when x is (the trainer's layout).
        if x.is_contiguous(memory_format=torch.channels_last):
            out = x.new_zeros(b, h, w, self.n, self.out_planes).permute(0, 3, 4, 1, 2)
        else:
            out = x.new_zeros(b, self.n, self.out_planes, h, w)
        lo = extra // 2
        out[:, :, lo : lo + self.in_planes] = x.reshape(b, self.n, self.in_planes, h, w)
        return out.reshape(b, self.n * self.out_planes, h, w)


def pack_tensor(tensors: Sequence[Tensor]) -> Tensor:
    """The members' tensors as one packed tensor (concatenated along dim 0)."""
    if tensors[0].dim() == 0:  # num_batches_tracked: one counter, equal in every member
        return tensors[0].clone()
    return torch.cat([t.detach().contiguous() for t in tensors], 0)


def unpack(packed: Tensor, n: int, i: int) -> Tensor:
    """Member ``i``'s part of a packed tensor (a view)."""
    return packed if packed.dim() == 0 else packed.chunk(n, 0)[i]


def packable_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot be packed (a module that mixes channels or draws random numbers)."""
    if not isinstance(model, ResNet):
        return f"{type(model).__name__} is not a reslab ResNet"
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue  # containers: blocks and stages only call their children channel-locally
        if not isinstance(module, _LEAVES + _JOINS):
            return f"{name} is a {type(module).__name__}"
    return None


def _packed_leaf(module: nn.Module, n: int) -> nn.Module | None:
    if isinstance(module, nn.Conv2d):
        return nn.Conv2d(
            n * module.in_channels,
            n * module.out_channels,
            module.kernel_size,  # type: ignore[arg-type]
            module.stride,  # type: ignore[arg-type]
            module.padding,  # type: ignore[arg-type]
            module.dilation,  # type: ignore[arg-type]
            groups=n * module.groups,
            bias=module.bias is not None,
        )
    if isinstance(module, nn.BatchNorm2d):
        return nn.BatchNorm2d(
            n * module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
    if isinstance(module, nn.Linear):
        return PackedLinear(n, module.in_features, module.out_features, module.bias is not None)
    if isinstance(module, PadShortcut):
        return PackedPad(n, module)
    return None


def pack_nets(models: Sequence[nn.Module], channels_last: bool) -> nn.Module:
    """One grouped net computing every member of ``models`` on its own channel slice.

    The members must share parameter and buffer names and shapes (:func:`packable_reason`
    says which nets can be packed). Input: the members' batches concatenated along the channel
    dimension; output: ``[B, N * num_classes]``, member ``i``'s logits at
    ``[:, i*K:(i+1)*K]``. The packed net holds copies of the members' current tensors.
    """
    n = len(models)
    # The residual member's structure; plain members get 0 on every shortcut (module doc).
    residual = [not getattr(m, "plain", False) for m in models]
    base = models[residual.index(True)] if any(residual) else models[0]
    net = copy.deepcopy(base)
    for name, module in list(net.named_modules()):
        new = _packed_leaf(module, n)
        if new is not None:
            parent, _, leaf = name.rpartition(".")
            setattr(net.get_submodule(parent), leaf, new)
    sources = [dict(m.state_dict(keep_vars=True)) for m in models]
    device = next(base.parameters()).device
    with torch.no_grad():
        for key, tensor in net.state_dict(keep_vars=True).items():
            tensor.data = pack_tensor([s[key] for s in sources]).to(device)
    if any(residual) and not all(residual):
        _mask_shortcuts(net, residual, device)
    if channels_last:
        net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return net


def _mask_shortcuts(net: nn.Module, residual: Sequence[bool], device: torch.device) -> None:
    """Multiply each shortcut's output by 1 for residual members and 0 for plain ones."""
    assert isinstance(net, ResNet)
    members = torch.tensor(residual, dtype=torch.float32, device=device)
    masks: dict[tuple[int, torch.dtype], Tensor] = {}

    def mask(_module: nn.Module, _inputs: object, out: Tensor) -> Tensor:
        key = (int(out.shape[1]), out.dtype)
        if key not in masks:  # [1, N*C, 1, 1]: C ones (or zeros) per member
            per = members.to(out.dtype).repeat_interleave(key[0] // len(residual))
            masks[key] = per.view(1, -1, 1, 1)
        return out * masks[key]

    for block in net.blocks():
        shortcut = block.downsample
        assert shortcut is not None and next(shortcut.parameters(), None) is None
        shortcut.register_forward_hook(mask)


@torch.no_grad()
def check_packed(net: nn.Module, models: Sequence[nn.Module], channels_last: bool) -> float:
    """The largest gap between the packed net's eval-mode logits and each member's, relative
    to the logits' size: a guard against a packing that does not compute the members."""
    n = len(models)
    first = next(models[0].parameters())
    conv1 = models[0].conv1
    assert isinstance(conv1, nn.Conv2d)
    in_channels = conv1.in_channels
    gen = torch.Generator().manual_seed(0)  # the global RNG is the members' and stays untouched
    x = torch.randn(2, int(in_channels), 8, 8, generator=gen).to(first.device)
    xs = torch.cat([x] * n, 1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        xs = xs.contiguous(memory_format=torch.channels_last)
    modes = [m.training for m in (net, *models)]
    for m in (net, *models):
        m.eval()
    try:
        packed = net(xs)
        k = packed.shape[1] // n
        worst = 0.0
        for i, m in enumerate(models):
            alone = m(x)
            gap = (packed[:, i * k : (i + 1) * k] - alone).abs().max()
            worst = max(worst, float(gap / alone.abs().max().clamp_min(1e-6)))
        return worst
    finally:
        for m, mode in zip((net, *models), modes, strict=True):
            m.train(mode)
