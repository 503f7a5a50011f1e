"""One SGD step's state: momentum buffers restored in their parameter's layout."""

from __future__ import annotations

import torch


def test_restored_momentum_keeps_the_parameters_layout() -> None:
    from reslab.train import restore_momentum

    conv = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(conv.parameters(), lr=0.1, momentum=0.9)
    saved = {"optim.0": torch.randn(8, 3, 3, 3), "optim.1": torch.randn(8)}
    restore_momentum(opt, saved)
    buf = opt.state[conv.weight]["momentum_buffer"]
    assert buf.stride() == conv.weight.stride() != saved["optim.0"].stride()
    assert torch.equal(buf, saved["optim.0"])
    assert torch.equal(opt.state[conv.bias]["momentum_buffer"], saved["optim.1"])
