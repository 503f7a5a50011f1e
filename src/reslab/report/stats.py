"""Summary statistics of a study's runs: groups of seeds, mean ± sample standard deviation.

A group is one (family, depth, shortcut) triple, the nets a study compares; its seeds are
repeats. Standard deviations are sample standard deviations (``ddof=1``), 0 for one seed, and
values that were not measured (``None``, NaN) are left out, never counted as zero.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from reslab.report.schema import FAMILIES, is_number

__all__ = [
    "GroupKey",
    "group",
    "group_key",
    "label",
    "mean_std",
    "nan_mean_std",
    "several_shortcuts",
    "sort_key",
    "summarize_runs",
]

#: (family, depth, shortcut option or None)
GroupKey = tuple[str, int, "str | None"]


def group_key(obj: Mapping[str, Any]) -> GroupKey:
    """The group a run, summary row or probe entry belongs to."""
    return (str(obj["family"]), int(obj["depth"]), obj.get("shortcut"))


def sort_key(key: GroupKey) -> tuple[int, str, int]:
    """Plain before residual, then shortcut option, then depth."""
    family, depth, shortcut = key
    return (FAMILIES.index(family) if family in FAMILIES else 9, shortcut or "", depth)


def label(key: GroupKey, with_shortcut: bool) -> str:
    """``plain-56``, ``resnet-56``, or ``resnet-56 (B)`` when shortcut options are compared."""
    family, depth, shortcut = key
    if family == "plain":
        return f"plain-{depth}"
    return f"resnet-{depth}" + (f" ({shortcut})" if with_shortcut and shortcut else "")


def several_shortcuts(items: Sequence[Mapping[str, Any]]) -> bool:
    """True if the residual items use more than one shortcut option."""
    return len({x.get("shortcut") for x in items if x.get("family") == "residual"}) > 1


def group(items: Sequence[Mapping[str, Any]]) -> dict[GroupKey, list[Mapping[str, Any]]]:
    """``items`` by group, groups in :func:`sort_key` order, items in their given order."""
    groups: dict[GroupKey, list[Mapping[str, Any]]] = {}
    for item in items:
        groups.setdefault(group_key(item), []).append(item)
    return {k: groups[k] for k in sorted(groups, key=sort_key)}


def mean_std(values: Sequence[Any]) -> tuple[float | None, float | None]:
    """Mean and sample std of the finite numbers in ``values``; ``(None, None)`` if none."""
    xs = [float(v) for v in values if is_number(v) and math.isfinite(v)]
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    std = float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0
    return mean, std


def nan_mean_std(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise mean and sample std of a (seeds × points) array, NaN = not measured.

    The std is 0 where a column has fewer than two values; the mean is NaN where it has none.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: not measured there
        mean = np.nanmean(stack, axis=0)
        count = np.sum(np.isfinite(stack), axis=0)
        std = np.where(count > 1, np.nanstd(stack, axis=0, ddof=1), 0.0)
    return mean, np.nan_to_num(std)


def summarize_runs(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One ``summary`` row per (family, depth, shortcut): mean and sample std over seeds."""
    with_shortcut = several_shortcuts(runs)
    rows = []
    for key, members in group(runs).items():
        train = mean_std([r.get("final_clean_train_error") for r in members])
        test = mean_std([r.get("final_test_error") for r in members])
        rows.append(
            {
                "family": key[0],
                "depth": key[1],
                "shortcut": key[2],
                "label": label(key, with_shortcut),
                "n_seeds": len(members),
                "clean_train_error_mean": train[0],
                "clean_train_error_std": train[1],
                "test_error_mean": test[0],
                "test_error_std": test[1],
            }
        )
    return rows
