"""Summary statistics: groups of seeds, mean ± sample std, unmeasured values left out."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import fake_run
from reslab.report.stats import mean_std, nan_mean_std, summarize_runs


def test_summary_rows_match_numpy_over_seeds() -> None:
    runs = [fake_run(f, d, s, None if f == "plain" else "A", 4) for f in ("residual", "plain")
            for d in (56, 20) for s in range(3)]  # fmt: skip
    rows = summarize_runs(runs)
    assert [r["label"] for r in rows] == ["plain-20", "plain-56", "resnet-20", "resnet-56"]
    for row in rows:
        mine = [
            r["final_clean_train_error"]
            for r in runs
            if (r["family"], r["depth"]) == (row["family"], row["depth"])
        ]
        assert row["n_seeds"] == 3
        assert row["clean_train_error_mean"] == pytest.approx(np.mean(mine))
        assert row["clean_train_error_std"] == pytest.approx(np.std(mine, ddof=1))


def test_shortcut_options_get_their_own_rows_and_labels() -> None:
    runs = [fake_run("residual", 20, 0, option, 3) for option in "CAB"]
    assert [r["label"] for r in summarize_runs(runs)] == [
        "resnet-20 (A)",
        "resnet-20 (B)",
        "resnet-20 (C)",
    ]


def test_unmeasured_values_are_left_out_not_zero() -> None:
    assert mean_std([None, 4.0, float("nan"), 6.0]) == (5.0, pytest.approx(np.sqrt(2)))
    assert mean_std([3.0]) == (3.0, 0.0)
    assert mean_std([None]) == (None, None)
    diverged = {**fake_run("plain", 56, 0, None, 3), "final_clean_train_error": None}
    (row,) = summarize_runs([diverged])
    assert row["clean_train_error_mean"] is None and row["n_seeds"] == 1


def test_column_statistics_of_curves_with_gaps() -> None:
    stack = np.array([[1.0, np.nan, 2.0], [3.0, np.nan, np.nan]])
    mean, std = nan_mean_std(stack)
    assert mean[0] == 2.0 and np.isnan(mean[1]) and mean[2] == 2.0
    assert std.tolist() == [pytest.approx(np.sqrt(2)), 0.0, 0.0]
