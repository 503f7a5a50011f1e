"""The generic residual module, for any branch, and a residual MLP block."""

from __future__ import annotations

from torch import Tensor, nn


class Residual(nn.Module):
    """``y = shortcut(x) + branch(x)``: any branch, identity shortcut when none is given.

    With ``plain=True`` there is no shortcut and ``y = branch(x)``.
    """

    def __init__(
        self, branch: nn.Module, shortcut: nn.Module | None = None, *, plain: bool = False
    ) -> None:
        super().__init__()
        self.branch = branch
        self.shortcut: nn.Module | None = None if plain else (shortcut or nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        out = self.branch(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return out


class ResidualMLP(Residual):
    """A residual block for feature vectors: ``x + W2 relu(W1 norm(x))``.

    Pre-norm, as in transformer MLP blocks, so the identity path stays clean (He et al. 2016).
    A linear projection replaces the identity when ``out_features`` differs from
    ``in_features``; ``zero_init=True`` zeroes ``W2`` so the block starts as its shortcut.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        *,
        dropout: float = 0.0,
        plain: bool = False,
        zero_init: bool = False,
    ) -> None:
        out_features = out_features or in_features
        hidden_features = hidden_features or 4 * in_features
        fc2 = nn.Linear(hidden_features, out_features)
        branch = nn.Sequential(
            nn.LayerNorm(in_features),
            nn.Linear(in_features, hidden_features),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            fc2,
        )
        shortcut = None if out_features == in_features else nn.Linear(in_features, out_features)
        super().__init__(branch, shortcut, plain=plain)
        if zero_init:
            nn.init.zeros_(fc2.weight)
            nn.init.zeros_(fc2.bias)


__all__ = ["Residual", "ResidualMLP"]
