"""Probes that look inside a network: why residual nets train where plain ones do not.

Each probe is a plain function of ``(model, batch)`` that returns a small dataclass of plain
Python lists and floats (``to_dict()`` gives JSON-ready data). Probes keep no global state,
always remove their hooks, restore the model's train/eval mode, and leave every parameter's
``.grad`` and every buffer (BN running statistics) exactly as they found them.

* :func:`gradient_flow`: ‖∂L/∂x_l‖ at the input ``x_l`` of every block, and ‖∂L/∂W‖ for every
  convolution and linear weight. He et al. 2016 (arXiv:1603.05027) §3: with identity
  shortcuts ``x_L = x_l + Σ_{i=l}^{L-1} F(x_i)``, so
  ``∂L/∂x_l = ∂L/∂x_L (1 + ∂/∂x_l Σ F(x_i))``: the term ``∂L/∂x_L`` reaches every block
  unattenuated and the gradient does not vanish toward the input. A plain net multiplies
  the Jacobians of all blocks instead, so its gradient can shrink or explode with depth.
* :func:`residual_magnitude`: ‖F(x_l)‖ / ‖x_l‖ per block, how much each residual function
  changes the signal it is added to; small ratios mean each block is a gentle perturbation
  of the identity (He et al. 2015, arXiv:1512.03385, §3.1 and §4.2).
* :func:`layer_responses`: the standard deviation of every 3×3 layer's response, after its BN
  and before the ReLU or the addition, in layer order and sorted: He et al. 2015 §4.2, Fig. 7,
  which finds ResNets' responses smaller than their plain twins'.
* :func:`block_inputs`: the tensor reaching each block, from one forward pass.

Blocks are the modules for which :func:`reslab.blocks.is_block` holds, in
``model.named_modules()`` order, which is input-to-output order for :class:`reslab.models.ResNet`.
Each must run exactly once per forward pass. The stem convolution belongs to no block, so the
probes leave it out (its weight still appears in :func:`gradient_flow`'s weight norms).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.blocks import ConvBlock as _Block
from reslab.blocks import PreActConvBlock as _PreActBlock
from reslab.errors import ModelError

LossFn = Callable[[Tensor, Tensor], Tensor]


# --- results -----------------------------------------------------------------------------------


class _Result:
    """``to_dict()`` for the result dataclasses below."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict of plain lists, floats and strings (JSON-ready)."""
        return dataclasses.asdict(cast(Any, self))


@dataclass(frozen=True)
class GradientFlow(_Result):
    """Gradient norms from one forward/backward pass; see :func:`gradient_flow`.

    ``block_names[l]`` (e.g. ``"layer2.0"``), ``stages[l]`` (0-based index of the stage, the
    container the block sits in) and ``input_grad_norms[l] = ‖∂L/∂x_l‖₂`` describe block ``l``,
    input to output; ``input_grad_norms[0]`` is the gradient at the stem output.
    ``output_grad_norm`` is ‖∂L/∂x_L‖₂ at the output of the last block. ``input_norms[l]`` and
    ``output_norm`` are ‖x_l‖₂ and ‖x_L‖₂ in the same pass: BN makes the loss invariant to the
    scale of a convolution's input, so ‖∂L/∂x_l‖ shrinks as ‖x_l‖ grows, and the product
    ‖x_l‖·‖∂L/∂x_l‖ is the scale-free measure. ``weight_names`` and
    ``weight_grad_norms`` list every convolution and linear weight that requires grad, in module
    order, with ‖∂L/∂W‖₂ (Frobenius norm; 0.0 for a weight the loss does not depend on).
    """

    loss: float
    block_names: list[str]
    stages: list[int]
    input_grad_norms: list[float]
    output_grad_norm: float
    input_norms: list[float]
    output_norm: float
    weight_names: list[str]
    weight_grad_norms: list[float]

    @property
    def activation_grad_norms(self) -> list[float]:
        """‖∂L/∂x_l‖ for l = 0..L: the block inputs, then the last block's output."""
        return [*self.input_grad_norms, self.output_grad_norm]


@dataclass(frozen=True)
class ResidualMagnitude(_Result):
    """How large each block's residual function is next to its input.

    Per block, input to output: ``input_norms = ‖x_l‖``, ``branch_norms = ‖F(x_l)‖``,
    ``shortcut_norms = ‖shortcut(x_l)‖`` (``None`` for a plain block, which has none),
    ``ratios = ‖F(x_l)‖ / ‖x_l‖``, all Frobenius norms over the whole batch, and
    ``per_sample_ratios``: the mean over samples of ``‖F(x_l)_i‖ / ‖x_{l,i}‖``.
    """

    block_names: list[str]
    stages: list[int]
    input_norms: list[float]
    branch_norms: list[float]
    shortcut_norms: list[float | None]
    ratios: list[float]
    per_sample_ratios: list[float]


@dataclass(frozen=True)
class LayerResponses(_Result):
    """Std of every 3×3 layer's response (He et al. 2015 Fig. 7), in layer order.

    ``layer_names[k]`` is the module whose output is measured: the BN after the 3×3
    convolution in post-activation blocks (``"layer1.0.bn1"``), the convolution itself in
    pre-activation blocks, whose branch has no BN after it. ``conv_names[k]`` is the 3×3
    convolution and ``block_indices[k]`` its block. ``stds`` is the standard deviation over all
    elements of the response (population std, every sample, channel and position);
    ``sorted_stds`` the same values in descending order (Fig. 7 bottom).
    """

    layer_names: list[str]
    conv_names: list[str]
    block_indices: list[int]
    stds: list[float]
    sorted_stds: list[float]


# --- helpers -----------------------------------------------------------------------------------


def _named_blocks(model: nn.Module) -> list[tuple[str, _Block]]:
    blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, _Block)]
    if not blocks:
        raise ModelError(
            f"{type(model).__name__} has no residual or plain blocks to probe: "
            "the probes need a network built from reslab.blocks (e.g. create_model('resnet20'))"
        )
    return blocks


def _stage_indices(names: list[str]) -> list[int]:
    """0-based stage of each block: blocks in the same container share a stage."""
    parents: dict[str, int] = {}
    return [parents.setdefault(n.rpartition(".")[0], len(parents)) for n in names]


def _norm(t: Tensor) -> float:
    return float(torch.linalg.vector_norm(t.detach(), dtype=torch.float64))


@contextmanager
def _mode(model: nn.Module, training: bool | None) -> Iterator[None]:
    """Switch to train (True) / eval (False) mode, or keep the mode (None); restore it after."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        if training is not None:
            model.train(training)
        yield
    finally:
        for m, was_training in modes:
            m.training = was_training


@contextmanager
def _record_block_inputs(
    model: nn.Module, *, make_leaf: bool = False
) -> Iterator[list[list[Tensor]]]:
    """Forward pre-hooks that append each block's input to ``records[l]``.

    With ``make_leaf=True`` an input that does not require grad (frozen layers before it) is
    replaced by a detached copy that does, so ∂L/∂x_l is defined for every block; the values,
    and every gradient that was defined anyway, are unchanged.
    """
    blocks = _named_blocks(model)
    records: list[list[Tensor]] = [[] for _ in blocks]

    def make_hook(idx: int) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...] | None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            x = args[0]
            if make_leaf and not x.requires_grad:
                x = x.detach().requires_grad_(True)
                records[idx].append(x)
                return (x, *args[1:])
            records[idx].append(x)
            return None

        return hook

    handles = [b.register_forward_pre_hook(make_hook(i)) for i, (_, b) in enumerate(blocks)]
    try:
        yield records
    finally:
        for h in handles:
            h.remove()


def _once(records: list[list[Tensor]], names: list[str]) -> list[Tensor]:
    """The single input of each block; raise if a block ran zero or several times."""
    for name, rec in zip(names, records, strict=True):
        if len(rec) != 1:
            raise ModelError(
                f"block {name!r} ran {len(rec)} times in one forward pass; the probes need "
                "each block to run exactly once"
            )
    return [rec[0] for rec in records]


def _shortcut_output(block: _Block, x: Tensor) -> Tensor | None:
    """``shortcut(x)`` as the block's forward computes it; ``None`` for a plain block."""
    shortcut = block.shortcut
    if shortcut is None:
        return None
    if isinstance(block, _PreActBlock):
        return shortcut(block._shortcut_input(x, block.relu(block.bn1(x))))
    return shortcut(x)


# --- probes ------------------------------------------------------------------------------------


def block_inputs(model: nn.Module, x: Tensor) -> list[Tensor]:
    """The tensor entering each block, input to output, from one forward pass.

    Runs in eval mode (BN uses its running statistics) without autograd; the mode is restored
    afterwards. The tensors are detached.
    """
    names = [n for n, _ in _named_blocks(model)]
    with _mode(model, False), torch.no_grad(), _record_block_inputs(model) as records:
        model(x)
    return [t.detach() for t in _once(records, names)]


def gradient_flow(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    loss_fn: LossFn = F.cross_entropy,
) -> GradientFlow:
    """Norms of ∂L/∂x_l at every block input and of ∂L/∂W for every conv/linear weight.

    One forward and one backward pass on ``(x, y)`` with ``L = loss_fn(model(x), y)`` (mean
    cross-entropy by default), **in the model's current mode**: call it on a model in train
    mode to see the gradients training sees, BN normalising with batch statistics. The BN
    running statistics that a train-mode forward updates are restored afterwards, and the
    gradients are taken with :func:`torch.autograd.grad`, so no ``.grad`` is touched.

    He et al. 2016 §3: with identity shortcuts ∂L/∂x_L reaches every block input unattenuated,
    so the gradient cannot vanish toward the input; in a plain net it is a product of block
    Jacobians and shrinks or explodes with depth. With BN it also scales as 1/‖x_l‖ (see
    ``GradientFlow.input_norms``): at initialisation, batch 8, it grows toward the input about
    20-30× over resnet56's blocks and some thousands of times over plain56's.
    """
    named = _named_blocks(model)
    names = [n for n, _ in named]
    weights = [
        (f"{mod_name}.weight" if mod_name else "weight", m.weight)
        for mod_name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear) and m.weight.requires_grad
    ]
    last_output: list[Tensor] = []

    def output_hook(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
        last_output.append(out)

    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    handle = named[-1][1].register_forward_hook(output_hook)
    try:
        with torch.enable_grad(), _record_block_inputs(model, make_leaf=True) as records:
            loss = loss_fn(model(x), y)
        if loss.numel() != 1:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        inputs = _once(records, names)
        if len(last_output) != 1:
            raise ModelError(f"block {names[-1]!r} ran {len(last_output)} times, not once")
        grads = torch.autograd.grad(
            loss,
            [*inputs, last_output[0], *(w for _, w in weights)],
            allow_unused=True,
        )
    finally:
        handle.remove()
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)

    norms = [0.0 if g is None else _norm(g) for g in grads]
    n = len(inputs)
    return GradientFlow(
        loss=float(loss.detach()),
        block_names=names,
        stages=_stage_indices(names),
        input_grad_norms=norms[:n],
        output_grad_norm=norms[n],
        input_norms=[_norm(t) for t in inputs],
        output_norm=_norm(last_output[0]),
        weight_names=[name for name, _ in weights],
        weight_grad_norms=norms[n + 1 :],
    )


def residual_magnitude(model: nn.Module, x: Tensor) -> ResidualMagnitude:
    """‖F(x_l)‖ / ‖x_l‖ for every block, in eval mode.

    Each block's input ``x_l`` is captured in one forward pass (:func:`block_inputs`), then
    ``F(x_l) = block.branch(x_l)`` and the shortcut are recomputed from it; pre-activation
    blocks feed a projection shortcut the pre-activated input, as their forward does.
    """
    named = _named_blocks(model)
    names = [n for n, _ in named]
    inputs = block_inputs(model, x)
    input_norms: list[float] = []
    branch_norms: list[float] = []
    shortcut_norms: list[float | None] = []
    ratios: list[float] = []
    per_sample: list[float] = []
    with _mode(model, False), torch.no_grad():
        for (_, block), xl in zip(named, inputs, strict=True):
            fx = block.branch(xl)
            sx = _shortcut_output(block, xl)
            x_norm, f_norm = _norm(xl), _norm(fx)
            input_norms.append(x_norm)
            branch_norms.append(f_norm)
            shortcut_norms.append(None if sx is None else _norm(sx))
            ratios.append(f_norm / x_norm)
            x_i = torch.linalg.vector_norm(xl.flatten(1), dim=1, dtype=torch.float64)
            f_i = torch.linalg.vector_norm(fx.flatten(1), dim=1, dtype=torch.float64)
            per_sample.append(float((f_i / x_i).mean()))
    return ResidualMagnitude(
        block_names=names,
        stages=_stage_indices(names),
        input_norms=input_norms,
        branch_norms=branch_norms,
        shortcut_norms=shortcut_norms,
        ratios=ratios,
        per_sample_ratios=per_sample,
    )


def _response_layers(block: _Block) -> list[tuple[str, str, nn.Module]]:
    """(conv name, response module name, response module) for each 3×3 conv in the branch.

    Post-activation: the first BN registered after the convolution (``conv1 -> bn1``);
    pre-activation: the convolution itself. The shortcut (``downsample``) is never included.
    """
    children = [(n, m) for n, m in block.named_children() if n != "downsample"]
    preact = isinstance(block, _PreActBlock)
    layers: list[tuple[str, str, nn.Module]] = []
    for i, (name, m) in enumerate(children):
        if not (isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (3, 3)):
            continue
        if preact:
            layers.append((name, name, m))
            continue
        bn = next(((n, c) for n, c in children[i + 1 :] if isinstance(c, nn.BatchNorm2d)), None)
        if bn is None:
            raise ModelError(f"no BN follows 3×3 convolution {name!r} in {type(block).__name__}")
        layers.append((name, bn[0], bn[1]))
    return layers


def layer_responses(model: nn.Module, x: Tensor) -> LayerResponses:
    """Std of each 3×3 layer's response in eval mode: He et al. 2015 §4.2, Fig. 7.

    The response is the output of a 3×3 layer after its BN and before the ReLU or the addition
    (pre-activation blocks: the convolution's output). The std is taken inside the forward
    hook, before an in-place ReLU overwrites the tensor.
    """
    named = _named_blocks(model)
    layer_names: list[str] = []
    conv_names: list[str] = []
    block_indices: list[int] = []
    modules: list[nn.Module] = []
    for idx, (block_name, block) in enumerate(named):
        for conv, resp, m in _response_layers(block):
            conv_names.append(f"{block_name}.{conv}")
            layer_names.append(f"{block_name}.{resp}")
            block_indices.append(idx)
            modules.append(m)
    records: list[list[float]] = [[] for _ in modules]

    def make_hook(k: int) -> Callable[[nn.Module, tuple[Any, ...], Tensor], None]:
        def hook(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> None:
            records[k].append(float(out.detach().to(torch.float64).std(correction=0)))

        return hook

    handles = [m.register_forward_hook(make_hook(k)) for k, m in enumerate(modules)]
    try:
        with _mode(model, False), torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    for name, rec in zip(layer_names, records, strict=True):
        if len(rec) != 1:
            raise ModelError(f"layer {name!r} ran {len(rec)} times in one forward pass, not once")
    stds = [rec[0] for rec in records]
    return LayerResponses(
        layer_names=layer_names,
        conv_names=conv_names,
        block_indices=block_indices,
        stds=stds,
        sorted_stds=sorted(stds, reverse=True),
    )


__all__ = [
    "GradientFlow",
    "LayerResponses",
    "ResidualMagnitude",
    "block_inputs",
    "gradient_flow",
    "layer_responses",
    "residual_magnitude",
]
