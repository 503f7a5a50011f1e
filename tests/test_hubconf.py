"""hubconf.py: every registered name is a torch.hub entry point with create_model's options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reslab.models import create_model, list_models
from reslab.weights import save_weights

ROOT = Path(__file__).resolve().parents[1]


def test_every_registered_name_is_a_hub_entry_point() -> None:
    """What ``torch.hub.list`` lists (it reads GitHub only): hubconf's public callables."""
    hub = torch.hub._import_module("hubconf", str(ROOT / "hubconf.py"))
    public = {f for f in dir(hub) if callable(getattr(hub, f)) and not f.startswith("_")}
    assert public == set(list_models())
    assert hub.dependencies[0] == "torch"


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("resnet20", {"shortcut": "B", "width": 0.25}),
        ("plain20", {"width": 0.25}),
        ("wrn16_8", {"width": 0.1}),
    ],
)
def test_hub_load_builds_the_registry_net(name: str, options: dict[str, object]) -> None:
    torch.manual_seed(0)
    net = torch.hub.load(str(ROOT), name, source="local", **options)
    torch.manual_seed(0)
    same = create_model(name, **options)
    assert net.reslab_config == same.reslab_config == {"name": name, **options}
    state, expected = net.state_dict(), same.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state)


def test_hub_load_takes_a_weights_file(tmp_path: Path) -> None:
    trained = create_model("resnet20", width=0.25, num_classes=3)
    path = save_weights(trained, tmp_path / "w.safetensors")
    net = torch.hub.load(str(ROOT), "resnet20", source="local", weights=str(path))
    assert net.num_classes == 3 and torch.equal(net.fc.weight, trained.fc.weight)
    with pytest.raises(ValueError, match="holds resnet20, not resnet32: load it as 'resnet20'"):
        torch.hub.load(str(ROOT), "resnet32", source="local", weights=str(path))
    with pytest.raises(TypeError, match="give no other options"):
        torch.hub.load(str(ROOT), "resnet20", source="local", weights=str(path), width=2)
