"""Every net scripts, exports and runs in ONNX, matching eager (reslab.export, reslab export).

TorchScript compiles every block and option (cheap). ``torch.export`` with a dynamic batch
and ONNX take seconds per net, so the quick suite exports one representative each: the
option-A CIFAR net (strided slicing and zero-padding: the shortcut exporters find hardest) to
ONNX and through ``reslab export`` to ``.pt2``, and a pre-activation net (option B) to
``.pt2``; every other family's exports are marked slow.
"""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from reslab.export import ExportError, export_model, run_onnx, sample_input
from reslab.models import create_model
from reslab.weights import save_weights

# torch 2.13 marks TorchScript deprecated, for torch.export; it still scripts every net.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(
    not HAS_ONNX, reason="onnx, onnxscript or onnxruntime missing: pip install 'reslab[onnx]'"
)

# Every block, shortcut and option that changes the modules, at CIFAR depth 8 (one block per
# stage) and a quarter width: TorchScript compiles each module class it meets.
SCRIPTED: list[tuple[str, dict[str, Any]]] = [
    ("resnet8", {}),
    ("plain8", {}),
    ("resnet8", {"shortcut": "B"}),
    ("resnet8", {"shortcut": "C"}),
    ("preact_resnet8", {}),
    ("preact_plain8", {}),
    ("resnet8", {"activation": "bn_after_add"}),
    ("resnet8", {"activation": "relu_before_add"}),
    ("resnet8", {"activation": "relu_preact"}),
    ("resnet8", {"shortcut_mode": "scale"}),
    ("resnet8", {"shortcut_mode": "exclusive_gate"}),
    ("resnet8", {"shortcut_mode": "dropout"}),
    ("resnet8", {"init": "fixup", "norm": "none"}),
    ("resnet8", {"init": "skipinit"}),
    ("resnet8", {"norm": "none", "nonlinearity": "tanh"}),
    ("plain8", {"init": "dirac"}),
    ("resnet8", {"drop_path_rate": 0.2, "drop_rate": 0.2}),
    ("resnet8", {"num_classes": 0}),
]
# One net per family: CIFAR, pre-activation, ImageNet basic and bottleneck, WRN, ResNeXt.
FAMILIES: list[tuple[str, dict[str, Any]]] = [
    ("resnet8", {"width": 0.25}),
    ("preact_resnet8", {"width": 0.25}),
    ("resnet18", {"width": 0.0625}),
    ("plain50", {"width": 0.0625}),
    ("wrn10_1", {"width": 0.5}),
    ("resnext11_2x4d", {"width": 0.125}),
]


def _small(name: str, options: dict[str, Any]) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = create_model(name, **{"width": 0.25, **options}).eval()
    c, h, _ = model.pretrained_cfg["input_size"]
    side = 32 if h == 32 else 64  # ImageNet nets: 64×64 is enough to check the numbers
    return model, torch.randn(3, c, side, side)


@pytest.mark.parametrize(("name", "options"), SCRIPTED)
def test_every_block_and_option_scripts(name: str, options: dict[str, Any]) -> None:
    model, x = _small(name, options)
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


@pytest.mark.parametrize(
    ("name", "options"),
    [FAMILIES[1], *(pytest.param(*f, marks=pytest.mark.slow) for f in FAMILIES[2:])],
)
def test_every_family_exports_with_torch_export_and_a_dynamic_batch(
    name: str, options: dict[str, Any], tmp_path: Path
) -> None:
    model, x = _small(name, options)
    path = tmp_path / "net.pt2"
    done = export_model(model, path, sample=x[:2])
    program = torch.export.load(path)
    with torch.no_grad():
        for batch in (x, x[:1]):  # other batch sizes than the sample's two
            assert torch.allclose(program.module()(batch), model(batch), atol=1e-5)
    assert done.max_abs_diff <= done.tolerance


def test_tracing_matches_eager() -> None:
    model, x = _small("resnet8", {"shortcut": "A"})
    traced = torch.jit.trace(model, x)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x), atol=1e-5)


def _onnx_case(name: str, options: dict[str, Any], tmp_path: Path) -> None:
    model, x = _small(name, options)
    path = export_model(model, tmp_path / "net.onnx", sample=x[:2]).path
    with torch.no_grad():
        expected = model(x).numpy()
    got = run_onnx(path.read_bytes(), x.numpy())  # three images: the batch is dynamic
    assert abs(got - expected).max() <= 1e-4 * max(1.0, abs(expected).max())


@needs_onnx
@pytest.mark.parametrize(("name", "options"), [FAMILIES[0]])
def test_onnx_matches_eager_in_onnxruntime(
    name: str, options: dict[str, Any], tmp_path: Path
) -> None:
    _onnx_case(name, options, tmp_path)


@needs_onnx
@pytest.mark.slow
@pytest.mark.parametrize(("name", "options"), FAMILIES[1:])
def test_onnx_matches_eager_for_every_other_family(
    name: str, options: dict[str, Any], tmp_path: Path
) -> None:
    _onnx_case(name, options, tmp_path)


def test_an_export_that_does_not_match_is_refused_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reslab import export

    model, x = _small("resnet8", {})

    def off_by_one(m: nn.Module, sample: torch.Tensor) -> tuple[bytes, torch.Tensor]:
        with torch.no_grad():
            return b"program", m(sample) + 1  # an exporter whose numbers drifted

    monkeypatch.setattr(export, "_to_pt2", off_by_one)
    with pytest.raises(ExportError, match=r"differs from the eager net by 1 .*nothing written"):
        export_model(model, tmp_path / "net.pt2", sample=x)
    assert not (tmp_path / "net.pt2").exists()


def test_onnx_without_its_runtime_is_one_line_saying_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    model, x = _small("resnet8", {})
    with pytest.raises(
        ExportError, match=r"onnxruntime is missing\): pip install 'reslab\[onnx\]'"
    ):
        export_model(model, tmp_path / "net.onnx", sample=x)
    assert not (tmp_path / "net.onnx").exists()


# --- reslab export ----------------------------------------------------------------------------


def _weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_weights(create_model("resnet8", width=0.25), tmp_path / "w.safetensors")


def test_reslab_export_writes_a_checked_program(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from reslab.cli import main

    weights = _weights(tmp_path)
    assert main(["export", str(weights), "--out", str(tmp_path / "net.pt2")]) == 0
    assert "wrote" in capsys.readouterr().out
    model = create_model("resnet8", width=0.25)
    from reslab.weights import load_weights

    load_weights(model, weights)
    x = sample_input(model.eval(), 2, seed=5)
    with torch.no_grad():
        assert torch.allclose(torch.export.load(tmp_path / "net.pt2").module()(x), model(x))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{w}", "--out", "{d}/net.tflite"], "cannot tell the format of 'net.tflite'"),
        (["{d}/missing.safetensors", "--out", "{d}/n.pt2"], "missing.safetensors does not exist"),
        (["{d}", "--out", "{d}/n.pt2"], "is a folder, not a file"),
        (["{d}/junk.safetensors", "--out", "{d}/n.pt2"], "not a readable safetensors file"),
        (["{w}", "--out", "{d}"], "is a directory"),
        (["{w}", "--out", "{d}/n.onnx", "--format", "tf"], "invalid choice: 'tf'"),
    ],
)
def test_reslab_export_refuses_bad_input_in_one_line(
    argv: list[str], message: str, tmp_path: Path, cli_error: Any
) -> None:
    weights = _weights(tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    args = [a.format(w=weights, d=tmp_path) for a in argv]
    line = cli_error(["export", *args])
    assert message in line
