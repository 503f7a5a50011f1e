"""Property-based: config parsing, image folders, weights files and model headers raise
reslab's own errors (:class:`ReslabError`) and nothing else, whatever bytes they are given.

``RESLAB_FUZZ_EXAMPLES=500`` for a longer hunt (the hypothesis profile in tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import reslab.data as rd
from reslab.errors import ReslabError
from reslab.models import create_model
from reslab.train import FIELDS, TrainConfig, load_config_file, resolve
from reslab.weights import CONFIG_KEY, load_model, read_state_dict, save_weights


def _png(path: Path, size: int = 6) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (200, 30, 60)).save(path)


# --- property-based: parsers raise reslab's errors and nothing else -----------------------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
_VALUES = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=4), st.dictionaries(st.text(), _SCALARS))
_KEYS = st.one_of(st.sampled_from(FIELDS), st.text(max_size=12))


@given(st.dictionaries(_KEYS, _VALUES, max_size=6))
def test_fuzz_resolve_raises_only_reslab_errors(values: dict[str, Any]) -> None:
    try:
        config = resolve(values)
    except ReslabError:
        pass
    else:
        assert isinstance(config, TrainConfig)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


_TOML_SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.text(max_size=10),
)
_TOML_LINES = st.lists(
    st.tuples(
        st.one_of(
            st.sampled_from(FIELDS).map(lambda k: k.replace("_", "-")), st.sampled_from(FIELDS)
        ),
        st.one_of(_TOML_SCALARS, st.lists(_TOML_SCALARS, max_size=3)),
    ),
    max_size=6,
)


def _check_config_file(path: Path) -> None:
    try:
        values = load_config_file(path)
        resolve(values)
    except ReslabError:
        pass


_TOML_TEXT = _TOML_LINES.map(lambda lines: "".join(f"{k} = {_toml_value(v)}\n" for k, v in lines))


@given(
    st.one_of(
        st.binary(max_size=200), st.text(max_size=200).map(str.encode), _TOML_TEXT.map(str.encode)
    )
)
def test_fuzz_toml_config_files_raise_only_reslab_errors(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.toml"
        path.write_bytes(data)
        _check_config_file(path)


_JSON = st.recursive(
    _SCALARS.filter(lambda v: not (isinstance(v, float) and not math.isfinite(v))),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=5)),
    max_leaves=12,
)


@given(st.one_of(_JSON, st.dictionaries(st.sampled_from(FIELDS), _JSON, max_size=6)))
def test_fuzz_json_config_files_raise_only_reslab_errors(obj: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(obj))
        _check_config_file(path)


def _image_bytes(fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (7, 5), (10, 120, 250)).save(buf, format=fmt)
    return buf.getvalue()


_IMAGES = {fmt: _image_bytes(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP")}


@st.composite
def _mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(_IMAGES[draw(st.sampled_from(sorted(_IMAGES)))])
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@given(
    blob=st.one_of(st.binary(max_size=200), _mutated_images()),
    suffix=st.sampled_from([".png", ".jpg"]),
)
def test_fuzz_image_folder_files_raise_only_data_errors(
    blob: bytes, suffix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1 << 16)  # mutated headers ask for huge images
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "train" / "a").mkdir(parents=True)
        (root / "train" / "a" / f"x{suffix}").write_bytes(blob)
        _png(root / "test" / "a" / "y.png")
        try:
            ds = rd.load_dataset("imagefolder", data_dir=root, image_size=8)
        except ReslabError:
            pass
        else:
            assert ds.train_images.shape == (1, 3, 8, 8)


def _weights_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        net = create_model("resnet8", in_channels=1, width=0.25)
        return save_weights(net, Path(tmp) / "w.safetensors").read_bytes()


_WEIGHTS = _weights_bytes()


@st.composite
def _mutated_weights(draw: st.DrawFn) -> bytes:
    data = bytearray(_WEIGHTS)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, min(len(data) - 1, 2000)))  # mostly the header
        data[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@given(
    st.one_of(st.binary(max_size=300), _mutated_weights()), st.sampled_from([".safetensors", ".pt"])
)
def test_fuzz_weights_files_raise_only_checkpoint_errors(blob: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"w{suffix}"
        path.write_bytes(blob)
        try:
            state = read_state_dict(path)
        except ReslabError:
            pass
        else:
            assert all(isinstance(v, torch.Tensor) for v in state.values())


_HEADER_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 120),
    st.floats(-2, 3),
    st.text(max_size=8),
    st.sampled_from(["A", "B", "C", "resnet8", "plain8"]),
)
_HEADERS = st.one_of(
    st.text(max_size=40),
    st.dictionaries(
        st.sampled_from(
            ["name", "width", "num_classes", "in_channels", "shortcut", "plain", "preact", "x"]
        ),
        _HEADER_VALUES,
        max_size=5,
    ).map(json.dumps),
)


@given(_HEADERS)
def test_fuzz_model_header_raises_only_reslab_errors(header: str) -> None:
    """A file's header rebuilds its model: a corrupt one is a clear error, never a crash."""
    from safetensors.torch import save_file

    state = dict(create_model("resnet8", in_channels=1, width=0.25).state_dict())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.safetensors"
        save_file(state, path, metadata={CONFIG_KEY: header})
        with contextlib.suppress(ReslabError):
            load_model(path)


def test_fuzzers_see_failures() -> None:
    """Sanity: the inputs above do reach the error paths (a fuzzer that never fails proves
    nothing)."""
    with pytest.raises(ReslabError):
        resolve({"epochs": "ten"})
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "w.safetensors"
        bad.write_bytes(_WEIGHTS[:50])
        with pytest.raises(ReslabError):
            read_state_dict(bad)
