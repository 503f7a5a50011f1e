"""Loading and saving weights without ever running code from a file.

* safetensors files are read as they are: a header and raw tensors, nothing to execute.
* PyTorch checkpoints go **only** through ``torch.load(weights_only=True)``, whose unpickler
  admits tensors and plain containers and refuses everything else.
* The de-facto layout of popular CIFAR ResNet checkpoints (a ``{"state_dict": ...}`` dict, keys
  perhaps prefixed ``module.`` by DataParallel, the classifier named ``linear``) is mapped onto
  reslab's names, which are torchvision's.
* :func:`save_weights` stores the model's registry config in the safetensors header, so the
  file alone rebuilds its model (:func:`load_model`), and the input normalisation the weights
  were trained with (:class:`Normalization`), so every reader feeds them the inputs they
  expect. Files without it (older ones, imported checkpoints) fall back to the dataset's.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from reslab import checks
from reslab.checks import shown
from reslab.errors import CheckpointError, ConfigError, UnsafePickleError
from reslab.fileio import atomic_write_bytes

if TYPE_CHECKING:
    from reslab.models.resnet import ResNetLayout

CONFIG_KEY = "reslab.model"
NORMALIZATION_KEY = "reslab.normalization"
# Prefixes added by wrappers: DataParallel/DDP, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Containers that training scripts wrap a state_dict in.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net")
# The dtypes a weight may be stored in (safetensors' names). Only BN's step counter,
# ``num_batches_tracked``, is an integer: an I32 conv weight would load as numbers ~1e9.
_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
_COUNTER = "num_batches_tracked"
# A net this small builds in well under a second (ResNet-110: 1.7 M parameters, 0.2 s).
_CHEAP_PARAMS, _CHEAP_DEPTH = 2_000_000, 110


def _open(path: str | Path) -> Any:
    """The weights file opened for reading: a regular file, never a FIFO or a device
    (:func:`reslab.checks.open_input`); every other kind is one line."""
    return checks.open_input(path, "weights file", error=CheckpointError)


def is_safetensors(path: Path) -> bool:
    """By extension, or by the header: 8-byte little-endian length, then a JSON object."""
    if path.suffix == ".safetensors":
        return True
    with _open(path) as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a safetensors file or a PyTorch checkpoint, unwrapped to ``name -> tensor``.

    The file is opened once, as a regular file (:func:`_open`), and what it will take in
    memory is checked before anything is read (:func:`_check_archive`).
    """
    path = Path(path)
    with _open(path) as f:
        size = os.fstat(f.fileno()).st_size
        if is_safetensors(path):
            checks.check_inflation(size, size, f"weights file {path}", error=CheckpointError)
            try:
                return dict(st_load(f.read()))
            except (SafetensorError, ValueError, RuntimeError) as exc:
                raise CheckpointError(
                    f"{path} is not a readable safetensors file (truncated or corrupt: {exc})"
                ) from exc
        _check_archive(f, path, size)
        obj = _torch_load(f, path)
    return _unwrap(obj, path)


def _check_archive(f: Any, path: Path, size: int) -> None:
    """Refuse a PyTorch zip checkpoint whose records, as its central directory declares
    them, would take more memory than :func:`reslab.checks.check_inflation` allows.

    torch writes its records stored (uncompressed), so they add up to about the file's size;
    a deflated record of zeros declares gigabytes from a few MB, which ``torch.load`` would
    inflate in full before refusing it. A file that is not a zip is left to ``torch.load``.
    """
    try:
        with zipfile.ZipFile(f) as archive:
            need = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        need = 0
    finally:
        f.seek(0)
    checks.check_inflation(need, size, f"weights file {path}", error=CheckpointError)


def _torch_load(f: Any, path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            # torch warns (two stderr lines) about pickle protocols other than 2 before it
            # refuses or loads the file; the outcome is reported in one line below.
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafePickleError(
            f"refused {path}: it is corrupt, or asks to run code or build objects other than "
            "tensors when unpickled; only load checkpoints you trust, converted to safetensors"
        ) from exc
    except Exception as exc:
        # A malformed file makes torch.load raise almost anything (RuntimeError, EOFError,
        # KeyError, IndexError, struct.error... found by the fuzzers in tests/test_fuzz.py).
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: "
            f"{shown(str(exc), 200)})"
        ) from exc


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
    wrong += [
        f"{k} is {str(state[k].dtype).removeprefix('torch.')}, not floating-point"
        for k, v in expected.items()
        if k in state and v.is_floating_point() and not state[k].is_floating_point()
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


# --- input normalisation: it travels with the weights ---------------------------------------


def normalization_problem(mean: Sequence[float], std: Sequence[float]) -> str | None:
    """What is wrong with a mean/std pair, or None: finite, std > 0, one value per channel."""
    if not mean or len(mean) != len(std):
        return f"mean and std need one value per channel each, got {len(mean)} and {len(std)}"
    if not all(math.isfinite(v) for v in (*mean, *std)):
        return "mean and std must be finite numbers"
    if not all(v > 0 for v in std):
        return "std must be positive in every channel"
    return None


@dataclass(frozen=True)
class Normalization:
    """The per-channel input normalisation ``(x/255 - mean) / std`` a net was trained with.

    ``name`` says where it came from: a dataset's name (its train-split statistics, what
    ``reslab train`` uses), ``"imagenet"`` (:data:`IMAGENET`) or ``"custom"``. Values are in
    [0, 1] pixel units.
    """

    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        # Every caller validates user input first (reslab.train.evaluate.parse_normalize) or
        # reads a header through read_normalization, which turns this into a CheckpointError.
        bad = normalization_problem(self.mean, self.std)
        if bad:
            raise ValueError(bad)

    @classmethod
    def of(cls, name: str, mean: Sequence[float], std: Sequence[float]) -> Normalization:
        return cls(str(name), tuple(float(v) for v in mean), tuple(float(v) for v in std))

    @property
    def channels(self) -> int:
        return len(self.mean)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "mean": list(self.mean), "std": list(self.std)}


# The torchvision ImageNet statistics most published checkpoints were trained with.
IMAGENET = Normalization("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def save_weights(
    model: nn.Module,
    path: str | Path,
    *,
    metadata: Mapping[str, str] | None = None,
    normalization: Normalization | None = None,
) -> Path:
    """Write ``model``'s state_dict as safetensors, atomically, with its config in the header.

    The input normalisation goes into the header too: ``normalization``, else the model's
    ``reslab_normalization`` attribute (the trainer sets it on the net it trains, so every
    checkpoint, snapshot, best and EMA file of a run carries it), else none.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = dict(metadata or {})
    config = getattr(model, "reslab_config", None)
    if config is not None:
        header[CONFIG_KEY] = json.dumps(config)
    norm = normalization or getattr(model, "reslab_normalization", None)
    if isinstance(norm, Normalization):
        header[NORMALIZATION_KEY] = json.dumps(norm.to_json())
    return atomic_write_bytes(path, st_save(tensors, metadata=header))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata in a safetensors header."""
    _open(path).close()  # a regular file: safe_open would block on a FIFO
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
    try:  # bounded: at most 1 MiB, nested at most 32 deep, integers of at most 4,300 digits
        config = checks.parse_config_text(raw, "json", f"{path}'s {CONFIG_KEY} header entry")
    except ConfigError:
        config = None
    if not (isinstance(config, dict) and isinstance(config.get("name"), str)):
        raise CheckpointError(
            f"{path} has a corrupt {CONFIG_KEY} entry in its header ({shown(raw, 40)}, expected "
            "a JSON object with the model name); the file is damaged or not written by reslab"
        )
    return config


def read_normalization(path: str | Path) -> Normalization | None:
    """The input normalisation :func:`save_weights` put in a safetensors header, or None.

    None for files without the entry: reslab files from before it was recorded, and imported
    checkpoints (``.pt``/``.th`` files have no header at all); their readers fall back to the
    dataset's statistics, as reslab always did.
    """
    path = Path(path)
    if not is_safetensors(path):
        return None
    raw = read_metadata(path).get(NORMALIZATION_KEY)
    if raw is None:
        return None
    try:  # bounded like the model entry: size, nesting, digits
        entry = checks.parse_config_text(raw, "json", f"{NORMALIZATION_KEY} entry")
        norm = Normalization.of(entry["name"], entry["mean"], entry["std"])
    except (ConfigError, TypeError, KeyError, ValueError) as exc:
        raise CheckpointError(
            f"{path} has a corrupt {NORMALIZATION_KEY} entry in its header ({shown(raw, 40)}: "
            f"{shown(str(exc), 120)}); the file is damaged or not written by reslab"
        ) from None
    return norm


def load_model(path: str | Path) -> nn.Module:
    """Rebuild the model a :func:`save_weights` file describes and load its weights.

    The header's input normalisation, if any, is kept on the model as
    ``model.reslab_normalization``, so saving it again keeps it, and is the mean and std of
    its ``pretrained_cfg``.
    """
    kwargs = read_model_config(path)
    if kwargs is None:
        raise CheckpointError(
            f"{path} carries no reslab model config; build the model with create_model() and "
            "call load_weights(model, path)"
        )
    norm = read_normalization(path)
    model = build_for_weights(path, kwargs.pop("name"), **kwargs)
    if norm is not None:
        model.reslab_normalization = norm  # type: ignore[assignment]
        cfg = getattr(model, "pretrained_cfg", None)
        if isinstance(cfg, dict):  # timm's per-model config: the input this net was trained on
            cfg.update(mean=norm.mean, std=norm.std)
    return model


def build_for_weights(path: str | Path, name: str, **options: Any) -> nn.Module:
    """``create_model(name, **options)`` with ``path``'s weights loaded, checked first.

    The file's tensors are compared with the net's layout **before** the net is built: every
    weight must be floating-point (:func:`check_fits`), and the file must hold at least as many
    numbers as half the net's parameters, so a header that names a far bigger net than its
    tensors fill is refused in milliseconds; the build is at most twice the file. Then
    :func:`load_weights` compares every shape and dtype.
    """
    from reslab.models import create_model, model_layout

    headless = ("features_only", "out_indices")  # create_model's, not the layout's
    layout = model_layout(name, **{k: v for k, v in options.items() if k not in headless})
    check_fits(path, layout, name)
    model = create_model(name, **options)
    load_weights(model, path)
    return model


def check_fits(path: str | Path, layout: ResNetLayout, name: str = "the model") -> None:
    """Refuse, without building anything, a file whose tensors cannot fill ``layout``."""
    from reslab.models.counting import layout_params

    specs = tensor_specs(path)
    for key, (_, dtype) in specs.items():
        if not key.endswith(_COUNTER) and dtype not in _FLOAT_DTYPES:
            raise CheckpointError(
                f"{path}: tensor {shown(key)} is stored as {dtype}, but a weight must be "
                f"floating-point ({', '.join(sorted(_FLOAT_DTYPES))}); the file is damaged or "
                "not a weights file"
            )
    numbers = sum(math.prod(shape) for shape, dtype in specs.values() if dtype in _FLOAT_DTYPES)
    params = layout_params(layout)
    # A small net is built and compared key by key (load_weights lists every key that
    # differs); a large or deep one only if the file holds enough numbers to fill half of it
    # (half: a headless net's file has no classifier), so the build is at most twice the file.
    cheap = params <= _CHEAP_PARAMS and layout.depth <= _CHEAP_DEPTH
    if 2 * numbers < params and not cheap:
        raise CheckpointError(
            f"{path} does not fit {shown(name)}: it holds {numbers:,} weights, the net has "
            f"{params:,} parameters; is it another architecture? (pass --model NAME)"
        )


def tensor_specs(path: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each tensor's shape and dtype (safetensors' names: F32, I64, ...), without its data
    where the format allows (a safetensors header); a PyTorch checkpoint is read whole."""
    path = Path(path)
    if is_safetensors(path):
        _open(path).close()  # a regular file: safe_open would block on a FIFO
        try:
            with safe_open(str(path), framework="pt") as f:
                return {
                    k: (tuple(f.get_slice(k).get_shape()), str(f.get_slice(k).get_dtype()))
                    for k in f.keys()  # noqa: SIM118 - safe_open is not a Mapping
                }
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"{path} is not a readable safetensors file ({shown(str(exc), 200)})"
            ) from exc
    names = {v: k for k, v in _TORCH_DTYPES.items()}
    return {
        k: (tuple(v.shape), names.get(v.dtype, str(v.dtype)))
        for k, v in convert_state_dict(read_state_dict(path)).items()
    }


_TORCH_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
                 "F64": torch.float64, "I64": torch.int64, "I32": torch.int32}  # fmt: skip
