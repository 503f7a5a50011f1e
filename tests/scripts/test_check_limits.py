"""scripts/check_limits.py, on small trees written in tmp_path."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "check_limits.py"
_LOOP = ("src/reslab/train/loop.py", "_run_epochs")


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_limits", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while being defined
    spec.loader.exec_module(module)
    return module


check_limits = _load()


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _lines(n: int) -> str:
    return "".join(f"x{i} = {i}\n" for i in range(n))


def _function(name: str, n_lines: int, indent: str = "") -> str:
    """A function of exactly ``n_lines`` lines, ``def`` line included."""
    body = "".join(f"{indent}    y{i} = {i}\n" for i in range(n_lines - 1))
    return f"{indent}def {name}():\n{body}"


def _run(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = check_limits.main(["--root", str(root)])
    return code, capsys.readouterr().out.splitlines()


def test_a_600_line_file_passes_and_601_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path, "src/pkg/ok.py", _lines(600))
    code, out = _run(tmp_path, capsys)
    assert code == 0 and len(out) == 1
    assert out[0].startswith("size limits ok: 1 files, 0 functions; largest file src/pkg/ok.py")
    _write(tmp_path, "tests/big.py", _lines(601))
    assert _run(tmp_path, capsys) == (1, ["tests/big.py: 601 lines (limit 600)"])


def test_long_functions_fail_nested_and_methods_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    decorated = "@property\n" * 5 + _function("short", 80)  # decorators do not count
    nested = "def outer():\n" + _function("inner", 81, indent="    ")
    method = "class C:\n" + _function("method", 81, indent="    ")
    _write(tmp_path, "src/a.py", decorated + nested)
    _write(tmp_path, "benchmarks/b.py", method)
    _write(tmp_path, "scripts/c.py", _function("fine", 80))
    code, out = _run(tmp_path, capsys)
    assert code == 1
    assert out == [
        "benchmarks/b.py:2: function method is 81 lines (limit 80)",
        "src/a.py:86: function outer is 82 lines (limit 80)",
        "src/a.py:87: function inner is 81 lines (limit 80)",
    ]


def test_the_exception_applies_only_to_its_own_path_and_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(check_limits, "EXCEPTIONS", {_LOOP: 150})
    _write(tmp_path, "src/reslab/train/loop.py", _function("_run_epochs", 150))
    assert _run(tmp_path, capsys)[0] == 0
    _write(tmp_path, "src/reslab/train/other.py", _function("_run_epochs", 81))
    loop = _function("_run_epochs", 150) + _function("fit", 81)
    _write(tmp_path, "src/reslab/train/loop.py", loop)
    code, out = _run(tmp_path, capsys)
    assert code == 1
    assert out == [
        "src/reslab/train/loop.py:151: function fit is 81 lines (limit 80)",
        "src/reslab/train/other.py:1: function _run_epochs is 81 lines (limit 80)",
    ]
    _write(tmp_path, "src/reslab/train/loop.py", _function("_run_epochs", 151))
    _write(tmp_path, "src/reslab/train/other.py", "")
    assert _run(tmp_path, capsys) == (
        1,
        ["src/reslab/train/loop.py:1: function _run_epochs is 151 lines (limit 150)"],
    )


def test_a_stale_exception_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(check_limits, "EXCEPTIONS", {_LOOP: 150})
    stale = [
        "src/reslab/train/loop.py: no function _run_epochs over 80 lines; remove its stale "
        "exception (150 lines) from scripts/check_limits.py"
    ]
    _write(tmp_path, "src/m.py", _function("f", 3))
    assert _run(tmp_path, capsys) == (1, stale)  # the function is gone
    _write(tmp_path, "src/reslab/train/loop.py", _function("_run_epochs", 80))
    assert _run(tmp_path, capsys) == (1, stale)  # it is back under the limit
    _write(tmp_path, "src/reslab/train/loop.py", _function("_run_epochs", 81))
    assert _run(tmp_path, capsys)[0] == 0


def test_other_folders_are_not_walked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, "docs/example.py", _lines(700))
    _write(tmp_path, ".venv/lib/site.py", _lines(700))
    _write(tmp_path, "src/m.py", _function("f", 3))
    code, out = _run(tmp_path, capsys)
    assert code == 0
    assert out == [
        "size limits ok: 1 files, 1 functions; largest file src/m.py (3 lines), "
        "longest function src/m.py:f (3 lines)"
    ]


def test_runs_as_a_script_with_exit_code_1(tmp_path: Path) -> None:
    _write(tmp_path, "scripts/long.py", _function("main", 90))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout == "scripts/long.py:1: function main is 90 lines (limit 80)\n"
