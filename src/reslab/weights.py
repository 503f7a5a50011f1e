"""Loading and saving weights without ever running code from a file.

* safetensors files are read as they are: a header and raw tensors, nothing to execute.
* PyTorch checkpoints go **only** through ``torch.load(weights_only=True)``, whose unpickler
  admits tensors and plain containers and refuses everything else.
* The de-facto layout of popular CIFAR ResNet checkpoints (a ``{"state_dict": ...}`` dict, keys
  perhaps prefixed ``module.`` by DataParallel, the classifier named ``linear``) is mapped onto
  reslab's names, which are torchvision's.
* :func:`save_weights` stores the model's registry config in the safetensors header, so the
  file alone rebuilds its model (:func:`load_model`).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from reslab.errors import CheckpointError, UnsafePickleError
from reslab.fileio import atomic_write_bytes

CONFIG_KEY = "reslab.model"
# Prefixes added by wrappers: DataParallel/DDP, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Containers that training scripts wrap a state_dict in.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net")


def is_safetensors(path: Path) -> bool:
    """By extension, or by the header: 8-byte little-endian length, then a JSON object."""
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a safetensors file or a PyTorch checkpoint, unwrapped to ``name -> tensor``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if is_safetensors(path):
        try:
            return dict(st_load(path.read_bytes()))
        except (SafetensorError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path} is not a readable safetensors file (truncated or corrupt: {exc})"
            ) from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafePickleError(
            f"refused {path}: it is corrupt, or asks to run code or build objects other than "
            "tensors when unpickled; only load checkpoints you trust, converted to safetensors"
        ) from exc
    except Exception as exc:
        # A malformed file makes torch.load raise almost anything (RuntimeError, EOFError,
        # KeyError, IndexError, struct.error... found by the fuzzers in tests/test_fuzz.py).
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    return _unwrap(obj, path)


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping) and not _all_tensors(obj):
        for key in _NESTED_KEYS:
            if isinstance(obj.get(key), Mapping):
                return _unwrap(obj[key], path)
    if isinstance(obj, Mapping) and _all_tensors(obj):
        return {str(k): v for k, v in obj.items()}
    raise CheckpointError(
        f"{path} holds no state_dict (expected a dict of tensors, or one under "
        f"{', '.join(repr(k) for k in _NESTED_KEYS)})"
    )


def _all_tensors(obj: Mapping[Any, Any]) -> bool:
    return bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def convert_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strip wrapper prefixes and rename the popular CIFAR layout onto reslab's names."""
    out = {}
    for key, value in state_dict.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        # Popular CIFAR checkpoints name the classifier `linear` and option-B projections
        # `shortcut.0/1`; reslab keeps torchvision's `fc` and `downsample.0/1`.
        if key.startswith("linear."):
            key = "fc." + key[len("linear.") :]
        out[key.replace(".shortcut.", ".downsample.")] = value
    return out


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True) -> nn.Module:
    """Load a safetensors file or PyTorch checkpoint into ``model``; returns the model.

    Every missing, unexpected or wrongly shaped key is listed in the error.
    """
    path = Path(path)
    state = convert_state_dict(read_state_dict(path))
    expected = model.state_dict()
    # Checkpoints from before PyTorch 0.4.1 have no BN step counters; BatchNorm's own
    # state_dict versioning fills them in, so they are not missing.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = sorted(k for k in state if k not in expected)
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if wrong or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f"missing keys: {_some(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_some(unexpected)}")
        if wrong:
            parts.append(f"wrong shapes: {_some(wrong)}")
        raise CheckpointError(
            f"{path} does not fit {type(model).__name__}"
            f"{_name_of(model)}; is it another architecture? " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=strict)
    return model


def _some(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def _name_of(model: nn.Module) -> str:
    config = getattr(model, "reslab_config", None)
    return f" ({config['name']})" if isinstance(config, dict) and "name" in config else ""


def save_weights(
    model: nn.Module, path: str | Path, *, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``model``'s state_dict as safetensors, atomically, with its config in the header."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = dict(metadata or {})
    config = getattr(model, "reslab_config", None)
    if config is not None:
        header[CONFIG_KEY] = json.dumps(config)
    return atomic_write_bytes(path, st_save(tensors, metadata=header))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata in a safetensors header."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc


def read_model_config(path: str | Path) -> dict[str, Any] | None:
    """The model config :func:`save_weights` put in a safetensors header, or None if absent."""
    raw = read_metadata(path).get(CONFIG_KEY)
    if raw is None:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError:
        config = None
    if not (isinstance(config, dict) and isinstance(config.get("name"), str)):
        raise CheckpointError(
            f"{path} has a corrupt {CONFIG_KEY} entry in its header ({raw[:40]!r}..., expected "
            "a JSON object with the model name); the file is damaged or not written by reslab"
        )
    return config


def load_model(path: str | Path) -> nn.Module:
    """Rebuild the model a :func:`save_weights` file describes and load its weights."""
    from reslab.models import create_model

    kwargs = read_model_config(path)
    if kwargs is None:
        raise CheckpointError(
            f"{path} carries no reslab model config; build the model with create_model() and "
            "call load_weights(model, path)"
        )
    model = create_model(kwargs.pop("name"), **kwargs)
    return load_weights(model, path)
