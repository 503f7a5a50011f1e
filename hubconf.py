"""torch.hub entry points: ``torch.hub.load("<owner>/reslab", "resnet56", shortcut="B")``.

One entry point per registered model name (``reslab models`` lists them), each taking the same
keyword options as ``reslab.create_model`` (``num_classes``, ``width``, ``shortcut``,
``drop_path_rate``, ...), and ``weights=PATH`` to load a reslab weights file, whose header then
rebuilds the net (``reslab.load_model``). reslab publishes no pretrained weights: a net comes
freshly initialised unless given a file.
"""

from __future__ import annotations

import sys
from pathlib import Path as _Path
from typing import Any as _Any

dependencies = ["torch", "numpy", "safetensors"]

# torch.hub imports this file from the repository's root: reslab lives under src/. Every
# other name starts with "_": torch.hub.list lists the public callables as entry points.
_SRC = str(_Path(__file__).resolve().parent / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from reslab.models import create_model as _create_model  # noqa: E402
from reslab.models import list_models as _list_models  # noqa: E402


def _entry(name: str) -> _Any:
    def build(weights: str | None = None, **options: _Any) -> _Any:
        if weights is not None:
            from reslab.weights import load_model

            if options:
                raise TypeError(
                    f"{name}(weights=...) rebuilds the net from the file's header; give no "
                    f"other options (got {', '.join(sorted(options))})"
                )
            model = load_model(weights)
            held = model.reslab_config["name"]
            if held != name:
                raise ValueError(f"{weights} holds {held}, not {name}: load it as {held!r}")
            return model
        return _create_model(name, **options)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"reslab's {name}: ``create_model({name!r}, **options)``; see reslab.models."
    return build


for _name in _list_models():
    globals()[_name] = _entry(_name)
