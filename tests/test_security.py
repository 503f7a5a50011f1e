"""Security rules proven on the source itself, and the archive rules on hostile members.

* No code path deserialises with a full unpickler: every ``torch.load`` passes the literal
  ``weights_only=True``; ``pickle.load``/``loads``/``Unpickler`` (and ``dill``, ``marshal``...)
  are used only through a subclass of ``pickle.Unpickler`` that overrides ``find_class``; no
  ``numpy.load(allow_pickle=True)``, ``eval``/``exec``, ``shell=True`` or ``extractall``.
  The scanner is itself tested on snippets that break each rule, so it can fail.
* Downloads are checked before use: ``_fetch`` (the only network access) is called only by
  ``_download``, which compares the md5 before renaming the file into place; every published
  checksum is a 32-digit md5. tests/test_data.py proves the behaviour
  (``test_download_checksum_mismatch_is_refused_before_extraction``,
  ``test_mnist_download_checks_md5``).
* Archives: tests/test_data.py's ``test_unsafe_archive_members_are_refused`` covers ``..``,
  absolute paths, symbolic and hard links and devices; the spellings added here are backslash
  and drive-letter paths, ``./..``, FIFOs and a link to a folder.
* Pickles carrying code: ``reslab eval --weights evil.pth`` and a CIFAR python batch naming
  ``posix.system`` are refused with the payload never run (tests/test_bad_input.py, with a
  sentinel file); tests/test_data.py and tests/test_weights.py prove it for the library calls.
"""

from __future__ import annotations

import ast
import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from reslab.data import cifar, download, idx
from reslab.errors import DataError

SRC = Path(__file__).resolve().parents[1] / "src" / "reslab"

# Deserialisers that run code from the data unless restricted.
_UNSAFE_CALLS = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "_pickle.load",
    "_pickle.loads",
    "_pickle.Unpickler",
    "cPickle.load",
    "cPickle.loads",
    "dill.load",
    "dill.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "joblib.load",
    "marshal.load",
    "marshal.loads",
    "shelve.open",
    "pandas.read_pickle",
    "yaml.load",
    "yaml.unsafe_load",
}
_TORCH_LOADS = {"torch.load", "torch.serialization.load"}
_UNPICKLER_BASES = {"pickle.Unpickler", "_pickle.Unpickler"}


@dataclass(frozen=True)
class Violation:
    file: str
    line: int
    rule: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.rule}"


class _Scanner(ast.NodeVisitor):
    """Resolves imported names (``import pickle as p``, ``from torch import load``) to dotted
    names and checks each call against the rules."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.names: dict[str, str] = {}  # local name -> dotted name
        self.violations: list[Violation] = []
        self.restricted: set[str] = set()  # Unpickler subclasses that override find_class
        self.seen: list[str] = []  # dotted names of the guarded calls found (for sanity checks)

    def flag(self, node: ast.AST, rule: str) -> None:
        self.violations.append(Violation(self.file, getattr(node, "lineno", 0), rule))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            local = alias.asname or alias.name.split(".")[0]
            self.names[local] = alias.name if alias.asname else local

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            self.names[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def dotted(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.names.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        bases = {self.dotted(b) for b in node.bases}
        if bases & _UNPICKLER_BASES:
            methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
            if "find_class" in methods:
                self.restricted.add(node.name)
                self.seen.append(f"restricted:{node.name}")
            else:
                self.flag(node, f"class {node.name} subclasses Unpickler without find_class")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = self.dotted(node.func) or ""
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if name in _TORCH_LOADS:
            self.seen.append(name)
            flag = keywords.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                self.flag(node, f"{name} without weights_only=True")
        elif name in _UNSAFE_CALLS:
            self.flag(node, f"{name}: unrestricted deserialisation")
        elif name in ("numpy.load", "np.load"):
            allow = keywords.get("allow_pickle")
            if not (allow is None or (isinstance(allow, ast.Constant) and allow.value is False)):
                self.flag(node, "numpy.load with allow_pickle")
        elif name in ("eval", "exec"):
            self.flag(node, f"builtin {name}")
        if isinstance(node.func, ast.Attribute) and node.func.attr in ("extractall", "extract"):
            self.flag(node, f".{node.func.attr}(): extract archives member by member")
        shell = keywords.get("shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            self.flag(node, "shell=True")
        # Restricted unpickler use: Sub(...).load() is allowed only for a find_class subclass.
        if (
            isinstance(node.func, ast.Attribute)
            and node.func.attr in ("load", "loads")
            and isinstance(node.func.value, ast.Call)
        ):
            ctor = self.dotted(node.func.value.func) or ""
            if ctor in self.restricted:
                self.seen.append(f"{ctor}.load")
        self.generic_visit(node)


def scan(source: str, file: str = "<snippet>") -> tuple[list[Violation], list[str]]:
    """(violations, guarded calls seen) of one module's source."""
    scanner = _Scanner(file)
    tree = ast.parse(source)
    # Classes first, so a restricted subclass defined below its use still counts.
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            scanner.visit(node)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = {scanner.dotted(b) for b in node.bases}
            methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
            if bases & _UNPICKLER_BASES and "find_class" in methods:
                scanner.restricted.add(node.name)
    scanner.visit(tree)
    return scanner.violations, scanner.seen


def test_source_has_no_unsafe_deserialisation() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) >= 15  # the whole package, not an empty glob
    violations: list[Violation] = []
    seen: list[str] = []
    for path in files:
        found, calls = scan(path.read_text(encoding="utf-8"), str(path.relative_to(SRC)))
        violations += found
        seen += calls
    assert not violations, "\n".join(map(str, violations))
    # The scan does see what it guards: the weights loader and the restricted unpickler.
    assert "torch.load" in seen
    assert "restricted:_RestrictedUnpickler" in seen and "_RestrictedUnpickler.load" in seen


@pytest.mark.parametrize(
    ("snippet", "rule"),
    [
        ("import torch\ntorch.load(p)\n", "torch.load without weights_only=True"),
        ("import torch\ntorch.load(p, weights_only=False)\n", "without weights_only=True"),
        ("import torch\ntorch.load(p, weights_only=flag)\n", "without weights_only=True"),
        ("from torch import load\nload(p)\n", "torch.load without"),
        ("import torch as t\nt.serialization.load(p)\n", "torch.serialization.load"),
        ("import pickle\npickle.load(f)\n", "pickle.load: unrestricted"),
        ("import pickle as pk\npk.loads(b)\n", "pickle.loads: unrestricted"),
        ("from pickle import loads\nloads(b)\n", "pickle.loads: unrestricted"),
        ("import pickle\npickle.Unpickler(f).load()\n", "pickle.Unpickler: unrestricted"),
        ("import _pickle\n_pickle.loads(b)\n", "_pickle.loads"),
        ("import marshal\nmarshal.loads(b)\n", "marshal.loads"),
        (
            "import pickle\nclass U(pickle.Unpickler):\n    pass\nU(f).load()\n",
            "subclasses Unpickler without find_class",
        ),
        ("import numpy as np\nnp.load(p, allow_pickle=True)\n", "allow_pickle"),
        ("import tarfile\ntarfile.open(p).extractall(d)\n", ".extractall()"),
        ("eval(text)\n", "builtin eval"),
        ("import subprocess\nsubprocess.run(cmd, shell=True)\n", "shell=True"),
    ],
)
def test_scanner_catches_each_violation(snippet: str, rule: str) -> None:
    violations, _ = scan(snippet)
    assert violations, f"the scanner missed: {snippet!r}"
    assert any(rule in v.rule for v in violations), violations


def test_scanner_accepts_the_safe_forms() -> None:
    snippet = (
        "import pickle\nimport torch\nimport numpy as np\n"
        "torch.load(p, map_location='cpu', weights_only=True)\n"
        "class R(pickle.Unpickler):\n"
        "    def find_class(self, module, name):\n"
        "        raise pickle.UnpicklingError(name)\n"
        "R(f).load()\n"
        "np.load(p)\n"
        "np.load(p, allow_pickle=False)\n"
        "model.eval()\n"
        "raise pickle.UnpicklingError('x')\n"
    )
    violations, seen = scan(snippet)
    assert violations == []
    assert sorted(seen) == ["R.load", "restricted:R", "torch.load"]


# --- downloads: the md5 is checked before the file is used ---------------------------------


def _functions(tree: ast.AST) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}


def _calls(node: ast.AST, name: str) -> list[ast.Call]:
    found = []
    for call in ast.walk(node):
        if not isinstance(call, ast.Call):
            continue
        func = call.func
        called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if called == name:
            found.append(call)
    return found


def test_downloads_go_through_the_md5_check() -> None:
    data_files = sorted((SRC / "data").glob("*.py"))
    tree = ast.parse("\n".join(p.read_text(encoding="utf-8") for p in data_files))
    functions = _functions(tree)
    # _fetch is the only network access, and only _download calls it.
    for name in ("urlopen", "_fetch"):
        callers = {f for f, node in functions.items() if _calls(node, name)}
        assert callers == {"_fetch" if name == "urlopen" else "_download"}, (name, callers)
    for path in SRC.rglob("*.py"):
        if path.parent.name != "data":
            text = path.read_text(encoding="utf-8")
            assert "urlopen" not in text and "_fetch(" not in text, path
    # In _download, the md5 comparison comes before the file is renamed into place.
    download = functions["_download"]
    md5_line = min(c.lineno for c in _calls(download, "_md5"))
    replace_line = min(c.lineno for c in _calls(download, "replace"))
    fetch_line = min(c.lineno for c in _calls(download, "_fetch"))
    assert fetch_line < md5_line < replace_line
    # Every download passes a published checksum.
    for call in _calls(tree, "_download"):
        assert len(call.args) == 4, ast.unparse(call)
    sums = [s.py_md5 for s in cifar._CIFAR.values()] + [s.bin_md5 for s in cifar._CIFAR.values()]
    sums += [m for s in idx._IDX.values() for m in s.md5]
    assert len(sums) == 12 and all(re.fullmatch(r"[0-9a-f]{32}", m) for m in sums)


# --- archives: hostile member names ----------------------------------------------------------


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_member("..\\..\\escape.txt"), "outside"),
        (_member("cifar\\..\\..\\escape.txt"), "outside"),
        (_member("./../escape.txt"), "outside"),
        (_member("C:escape.txt"), "outside"),
        (_member("C:/escape.txt"), "outside"),
        (_member("//escape.txt"), "outside"),
        (_member("cifar/fifo", tarfile.FIFOTYPE), "FIFO"),
        (_member("cifar/up", tarfile.SYMTYPE, ".."), "link"),
    ],
    ids=["backslash", "backslash-nested", "dot-dot", "drive", "drive-slash", "unc", "fifo", "dir"],
)
def test_hostile_archive_members_are_refused(
    tmp_path: Path, member: tarfile.TarInfo, message: str
) -> None:
    root = tmp_path / "a" / "b"
    root.mkdir(parents=True)
    archive = root / "x.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        ok = _member("cifar/ok.bin")
        ok.size = 3
        tar.addfile(ok, io.BytesIO(b"abc"))
        if member.isreg():
            member.size = 5
            tar.addfile(member, io.BytesIO(b"pwned"))
        else:
            tar.addfile(member)
    dest = root / "dest"
    dest.mkdir()
    with pytest.raises(DataError, match=message) as info:
        download._safe_extract(archive, dest)
    assert "refusing to extract" in str(info.value)
    escaped = [p for p in tmp_path.rglob("*escape*")]
    assert escaped == [], escaped
