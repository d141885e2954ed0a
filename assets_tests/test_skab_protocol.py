"""The SKAB leaderboard protocol's pieces, checked by hand-computed cases."""

import numpy as np
import pytest

from autosink_platform.reference.skab import labelled_files, pooled, rows_flagged, windows
from autosink_platform.reference.sources import DatasetMissing


def test_windows_are_stride_one_row_blocks():
    values = np.arange(12, dtype=float).reshape(6, 2)
    w = windows(values, 3)
    assert w.shape == (4, 3, 2) and (w[1] == values[1:4]).all()


def test_a_row_is_flagged_when_the_windows_before_it_all_exceed_the_limit():
    # window 3: row i needs windows i-2 and i-1 anomalous; rows 2 .. len(flags)-3 are judged.
    flags = np.array([0, 1, 1, 1, 0, 1, 1, 0, 0, 0], dtype=bool)
    assert rows_flagged(flags, 12, 3).tolist() == [0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0]


def test_pooled_figures_use_the_leaderboard_formulas():
    pred = np.array([1, 1, 0, 0, 1, 0])
    true = np.array([1, 0, 1, 0, 1, 0])
    out = pooled(pred, true)  # tp 2, fp 1, fn 1, tn 2
    assert out["f1"] == pytest.approx(2 / (2 + 1)) and out["far_percent"] == pytest.approx(100 / 3)
    assert out["mar_percent"] == pytest.approx(100 / 3)


def test_missing_skab_is_named(tmp_path):
    with pytest.raises(DatasetMissing, match="no SKAB files"):
        labelled_files(tmp_path)
