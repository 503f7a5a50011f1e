"""Weights: safetensors round trip, the popular CIFAR checkpoint layout, and no code from files."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from reslab.errors import CheckpointError, UnsafePickleError
from reslab.models import create_model
from reslab.weights import load_model, load_weights, read_metadata, save_weights


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _popular_cifar_layout(model: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """Keys as the widely used CIFAR ResNet repositories write them."""
    out = {}
    for key, value in model.state_dict().items():
        key = key.replace("fc.", "linear.").replace(".downsample.", ".shortcut.")
        out[prefix + key] = value.clone()
    return out


def test_safetensors_round_trip_rebuilds_the_model(tmp_path: Path) -> None:
    model = create_model("resnet20", shortcut="B", num_classes=7).eval()
    path = save_weights(model, tmp_path / "w.safetensors")
    assert '"shortcut": "B"' in read_metadata(path)["reslab.model"]
    rebuilt = load_model(path).eval()
    assert _same_weights(model, rebuilt)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt(x), model(x))


@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_popular_cifar_checkpoint_imports(tmp_path: Path, prefix: str, shortcut: str) -> None:
    src = create_model("resnet20", shortcut=shortcut)
    for p in src.parameters():
        p.data.normal_()
    ckpt = {"epoch": 200, "best_prec1": 91.7, "state_dict": _popular_cifar_layout(src, prefix)}
    assert any(k.endswith("linear.weight") for k in ckpt["state_dict"])
    torch.save(ckpt, tmp_path / "model.th")
    dst = load_weights(create_model("resnet20", shortcut=shortcut), tmp_path / "model.th")
    assert _same_weights(src, dst)


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.sentinel,))


def test_checkpoint_carrying_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    state = create_model("resnet20").state_dict()
    torch.save({"state_dict": state, "payload": _Payload(sentinel)}, tmp_path / "evil.pth")
    assert not sentinel.exists()
    with pytest.raises(UnsafePickleError, match="refused"):
        load_weights(create_model("resnet20"), tmp_path / "evil.pth")
    assert not sentinel.exists(), "unpickling ran the payload"
    # Sanity: the payload does run under an unrestricted unpickler, so the test can fail.
    pickle.loads(pickle.dumps(_Payload(sentinel)))
    assert sentinel.exists()


def test_other_architecture_lists_missing_and_unexpected_keys(tmp_path: Path) -> None:
    r20 = save_weights(create_model("resnet20"), tmp_path / "r20.safetensors")
    r32 = save_weights(create_model("resnet32"), tmp_path / "r32.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys: layer1\.3\.conv1\.weight"):
        load_weights(create_model("resnet32"), r20)
    with pytest.raises(CheckpointError, match=r"unexpected keys: layer1\.3\."):
        load_weights(create_model("resnet20"), r32)
    with pytest.raises(
        CheckpointError, match=r"wrong shapes: fc\.weight \(10, 64\) != \(100, 64\)"
    ):
        load_weights(create_model("resnet20", num_classes=100), r20)


def test_truncated_and_missing_files(tmp_path: Path) -> None:
    path = save_weights(create_model("resnet20"), tmp_path / "w.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_weights(create_model("resnet20"), path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(create_model("resnet20"), tmp_path / "nope.safetensors")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_weights(create_model("resnet20"), garbage)


def test_old_checkpoints_without_bn_step_counters_load(tmp_path: Path) -> None:
    src = create_model("resnet20")
    state = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state}, tmp_path / "old.pth")
    dst = load_weights(create_model("resnet20"), tmp_path / "old.pth")
    assert torch.equal(dst.fc.weight, src.fc.weight)


# --- the input normalisation in the header (issue 10) ------------------------------------------


def test_the_header_records_the_input_normalisation_and_old_files_have_none(
    tmp_path: Path,
) -> None:
    from safetensors.torch import save_file

    from reslab.weights import IMAGENET, Normalization, read_normalization

    model = create_model("resnet8", width=0.25, num_classes=10, in_channels=1)
    norm = Normalization.of("digits", [0.3], [0.4])
    path = save_weights(model, tmp_path / "w.safetensors", normalization=norm)
    assert read_normalization(path) == norm
    # A loaded model keeps it, so saving it again (e.g. as an EMA or best file) keeps it too.
    again = save_weights(load_model(path), tmp_path / "again.safetensors")
    assert read_normalization(again) == norm
    # The model attribute the trainer sets is recorded when no argument is given.
    model.reslab_normalization = IMAGENET  # type: ignore[assignment]
    assert read_normalization(save_weights(model, tmp_path / "attr.safetensors")) == IMAGENET
    # Files without the entry (older reslab files, a bare state_dict, a .pth) have none...
    save_file(dict(model.state_dict()), tmp_path / "old.safetensors")
    torch.save(model.state_dict(), tmp_path / "net.pth")
    assert read_normalization(tmp_path / "old.safetensors") is None
    assert read_normalization(tmp_path / "net.pth") is None
    # ... and still load as before.
    assert _same_weights(load_weights(create_model("resnet8", width=0.25, num_classes=10,
                                                   in_channels=1), tmp_path / "old.safetensors"),
                         model)  # fmt: skip


@pytest.mark.parametrize(
    "entry",
    ['{"name": "x", "mean": [0.5], "std": [0.0]}', '{"mean": [0.5]}', "[1, 2]", "{not json",
     '{"name": "x", "mean": [0.5, 0.5], "std": [0.2]}', '{"name": "x", "mean": ["a"], "std": [1]}'],
)  # fmt: skip
def test_a_corrupt_normalisation_entry_is_one_checkpoint_error(tmp_path: Path, entry: str) -> None:
    from safetensors.torch import save_file

    from reslab.weights import NORMALIZATION_KEY, read_normalization

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(1)}, path, metadata={NORMALIZATION_KEY: entry})
    with pytest.raises(CheckpointError, match=r"corrupt reslab\.normalization entry"):
        read_normalization(path)
