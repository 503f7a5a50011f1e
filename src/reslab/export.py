"""Exporting a net, checked against eager PyTorch before anything is written.

Two formats, each compared numerically with the eager net on a sample batch first:

* ``pt2``: a ``torch.export`` ``ExportedProgram`` (``torch.export.load`` reads it back);
* ``onnx``: ``torch.onnx.export(dynamo=True)``, run in onnxruntime for the comparison (the
  ``onnx`` extra: ``pip install 'reslab[onnx]'``).

Both keep the batch dimension dynamic. The exported net takes inputs normalised as
``model.pretrained_cfg`` (or the weights file's header) says, as the eager net does; BN and
dropout are frozen in eval mode. ``torch.jit.script`` works on every net too (tests/test_export.py).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from reslab.errors import ReslabError
from reslab.fileio import atomic_write_bytes

FORMATS = ("onnx", "pt2")
# fp32 kernels differ between runtimes by a few ulps per layer; measured ≤ 6e-5 on ResNet-50
# in onnxruntime (issue 21). The check is relative to the logits' scale.
RTOL = 1e-4


class ExportError(ReslabError):
    """An export the user asked for cannot be made, or does not match the eager net."""


@dataclass(frozen=True)
class Exported:
    """What :func:`export_model` wrote: the file, its format, and how close it came."""

    path: Path
    format: str
    max_abs_diff: float
    tolerance: float


def export_format(path: Path, fmt: str | None = None) -> str:
    """``fmt``, or the one ``path``'s suffix names (``.onnx``, ``.pt2``)."""
    if fmt is None:
        fmt = path.suffix.lstrip(".").lower()
        if fmt not in FORMATS:
            raise ExportError(
                f"cannot tell the format of {path.name!r} from its suffix: name it .onnx or "
                ".pt2, or give the format (onnx or pt2)"
            )
    if fmt not in FORMATS:
        raise ExportError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    return fmt


def sample_input(model: nn.Module, batch: int = 2, seed: int = 0) -> Tensor:
    """A seeded standard-normal batch of the net's native input size (``pretrained_cfg``)."""
    size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 32, 32)))
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *size), generator=generator)


def export_model(
    model: nn.Module,
    path: str | Path,
    fmt: str | None = None,
    *,
    sample: Tensor | None = None,
    rtol: float = RTOL,
) -> Exported:
    """Export ``model`` (in eval mode) to ``path`` after checking it against eager on ``sample``.

    The check passes when the largest absolute difference of the outputs is at most ``rtol``
    times the largest eager output (at least 1): else :class:`ExportError`, and nothing is
    written.
    """
    path = Path(path)
    fmt = export_format(path, fmt)
    model = model.eval()
    x = sample_input(model) if sample is None else sample
    with torch.no_grad():
        expected = model(x)
    data, got = _to_onnx(model, x) if fmt == "onnx" else _to_pt2(model, x)
    diff = float((got - expected).abs().max())
    tolerance = rtol * max(1.0, float(expected.abs().max()))
    if not diff <= tolerance:  # NaN fails too
        raise ExportError(
            f"the {fmt} export differs from the eager net by {diff:.3g} (tolerance "
            f"{tolerance:.3g}) on a sample batch; nothing written"
        )
    atomic_write_bytes(path, data)
    return Exported(path, fmt, diff, tolerance)


def _dynamic_batch(x: Tensor) -> dict[str, Any]:
    # min 1: a batch of one is fine; the sample has two, which export does not specialise.
    return {"x": {0: torch.export.Dim("batch", min=1, max=2**16)}}


def _to_pt2(model: nn.Module, x: Tensor) -> tuple[bytes, Tensor]:
    try:
        program = torch.export.export(model, (x,), dynamic_shapes=_dynamic_batch(x))
    except Exception as exc:  # torch's many export errors: reported in one line
        raise ExportError(f"torch.export failed: {type(exc).__name__}: {exc}") from exc
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    with torch.no_grad():
        got = program.module()(x)
    return buffer.getvalue(), got


def _to_onnx(model: nn.Module, x: Tensor) -> tuple[bytes, Tensor]:
    try:
        import onnxruntime  # noqa: F401  (checked first: the export itself takes seconds)
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({exc.name} is missing): "
            "pip install 'reslab[onnx]'"
        ) from None
    import logging
    import warnings

    # The exporter logs a warning per torchvision op it cannot register; reslab uses none.
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (x,), dynamo=True, dynamic_shapes=_dynamic_batch(x), verbose=False
            )
    except Exception as exc:
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    finally:
        log.setLevel(level)
    assert program is not None  # dynamo=True always returns the program
    data = program.model_proto.SerializeToString()
    return data, torch.from_numpy(run_onnx(data, x.numpy()))


def run_onnx(data: bytes, x: Any) -> Any:
    """The ONNX model ``data`` run on ``x`` (a numpy array) in onnxruntime, on the CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


__all__ = ["FORMATS", "ExportError", "Exported", "export_format", "export_model", "run_onnx"]
