"""Security rules proven on the whole source tree, each scanner tested on snippets so it can fail.

* No code path deserialises with a full unpickler: every ``torch.load`` passes the literal
  ``weights_only=True``; ``pickle.load``/``loads``/``Unpickler`` (and ``dill``, ``marshal``...)
  are used only through a subclass of ``pickle.Unpickler`` that overrides ``find_class``; no
  ``numpy.load(allow_pickle=True)``, ``eval``/``exec``, ``shell=True`` or ``extractall``.
* Only ``reslab.data.download`` reaches the network: no other module imports ``urllib``,
  ``http``, ``socket``, ``requests``... or touches its ``_fetch``. That every download through
  it is checked against its md5 before use is proven by behaviour, for every dataset that
  downloads, in tests/data/test_download.py, with the hostile-archive cases.
* Pickles carrying code: ``reslab eval --weights evil.pth`` and a CIFAR python batch naming
  ``posix.system`` are refused with the payload never run (tests/cli/test_bad_input.py, with a
  sentinel file); tests/data/test_unpickle.py and tests/test_weights.py prove it for the
  library calls.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

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


# --- network access: one module --------------------------------------------------------------

# Modules that open connections. http is here although download.py imports http.client only for
# its exception types: any other module importing it would deserve a look.
_NETWORK_MODULES = {
    "aiohttp",
    "ftplib",
    "http",
    "httpx",
    "requests",
    "smtplib",
    "socket",
    "ssl",
    "telnetlib",
    "urllib",
    "urllib3",
    "xmlrpc",
}
_DOWNLOAD_MODULE = "data/download.py"
_CLUSTER_MODULE = "experiments/cluster.py"


def network_uses(source: str) -> list[str]:
    """``line: what`` for each import of a network module, and each use of ``_fetch``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [alias.name for alias in node.names]
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in (
            "__import__",
            "importlib.import_module",
        ):
            names = [a.value for a in node.args[:1] if isinstance(a, ast.Constant)]
        elif isinstance(node, ast.Name | ast.Attribute | ast.FunctionDef):
            names = [getattr(node, "id", None) or getattr(node, "attr", None) or node.name]
        for name in names:
            if str(name).split(".")[0] in _NETWORK_MODULES or name == "_fetch":
                found.append(f"{node.lineno}: {name}")
    return found


def test_only_the_download_module_reaches_the_network() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) >= 15  # the whole package, not an empty glob
    found = {}
    for path in files:
        uses = network_uses(path.read_text(encoding="utf-8"))
        if uses:
            found[path.relative_to(SRC).as_posix()] = uses
    # The one other network user connects to the Ray cluster the user names (--cluster ray);
    # it opens a plain socket to check the address answers, and downloads nothing.
    assert {u.split(": ")[1] for u in found.pop(_CLUSTER_MODULE, [])} <= {"socket"}
    # The scan does see the one module that downloads (urllib, and _fetch defined and called).
    assert set(found) == {_DOWNLOAD_MODULE}, found
    assert any("urllib" in use for use in found[_DOWNLOAD_MODULE])
    assert sum("_fetch" in use for use in found[_DOWNLOAD_MODULE]) == 2


@pytest.mark.parametrize(
    "snippet",
    [
        "import urllib.request\n",
        "from urllib.request import urlopen\n",
        "from urllib import request\n",
        "import http.client as h\n",
        "import socket\n",
        "import requests\n",
        "def f():\n    import httpx\n",
        "importlib.import_module('urllib.request')\n",
        "__import__('socket')\n",
        "from reslab.data.download import _fetch\n",
        "from reslab.data import download\ndownload._fetch(url, dest)\n",
    ],
)
def test_network_scan_catches_each_use(snippet: str) -> None:
    assert network_uses(snippet), f"the network scan missed: {snippet!r}"


def test_network_scan_accepts_the_rest() -> None:
    snippet = (
        "import urlparse_like\nfrom reslab.data import load_dataset\n"
        "load_dataset('cifar10', download=True)\nhttp_status = 200\nsocket_count = 1\n"
    )
    assert network_uses(snippet) == []
