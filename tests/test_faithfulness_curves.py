"""MIB faithfulness curves of the circuits family: the pure metrics (sizes, CPR, CMD) against hand
computations, the task's curve on the planted IOI model, the plot and the cell identity they leave alone."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.metrics import MIB_KS, cmd, cpr, faithfulness_curve_sizes, top_k_mask, top_k_masks


# ------------------------------------------------------------------- metrics
def test_cpr_cmd_hand_computation():
    # x = k / 100 = 0.1, 0.5, 1.0; f = 0.2, 0.6, 1.0
    # CPR = 0.4 * (0.2 + 0.6) / 2 + 0.5 * (0.6 + 1.0) / 2 = 0.16 + 0.40 = 0.56
    # CMD = 0.4 * (0.8 + 0.4) / 2 + 0.5 * (0.4 + 0.0) / 2 = 0.24 + 0.10 = 0.34
    assert cpr([10, 50, 100], [0.2, 0.6, 1.0]) == pytest.approx(0.56, abs=1e-12)
    assert cmd([10, 50, 100], [0.2, 0.6, 1.0]) == pytest.approx(0.34, abs=1e-12)


def test_cpr_cmd_on_mib_ks():
    # the axis runs from x = 0.001 to x = 1: a perfect curve gets 0.999, not 1
    ones, zeros = np.ones(10), np.zeros(10)
    assert cpr(MIB_KS, ones) == pytest.approx(0.999) and cmd(MIB_KS, ones) == 0.0
    assert cpr(MIB_KS, zeros) == 0.0 and cmd(MIB_KS, zeros) == pytest.approx(0.999)
    # 12 components: f = 0 up to 5% (empty circuits), 0 at 10% (1 head), 0.5 at 20%, 1 at 50% and 100%
    # CPR = 0.1 * (0 + 0.5) / 2 + 0.3 * (0.5 + 1) / 2 + 0.5 * (1 + 1) / 2 = 0.025 + 0.225 + 0.5 = 0.75
    # CMD = 0.001 * 1 + 0.003 * 1 + 0.005 * 1 + 0.01 * 1 + 0.03 * 1 + 0.05 * 1      (k = 0.1 ... 10%: |1 - f| = 1)
    #       + 0.1 * (1 + 0.5) / 2 + 0.3 * (0.5 + 0) / 2 + 0 = 0.099 + 0.075 + 0.075 = 0.249
    f = [0, 0, 0, 0, 0, 0, 0, 0.5, 1, 1]
    assert cpr(MIB_KS, f) == pytest.approx(0.75, abs=1e-12)
    assert cmd(MIB_KS, f) == pytest.approx(0.249, abs=1e-12)
    x = np.asarray(MIB_KS) / 100  # an independent implementation of the same rule
    assert cpr(MIB_KS, f) == pytest.approx(np.trapezoid(f, x) if hasattr(np, "trapezoid") else np.trapz(f, x))


def test_cpr_cmd_overshoot_and_negative_faithfulness():
    # f above 1: CPR counts it (0.5 * (1.5 + 1.0) / 2 = 0.625), CMD penalises it (0.5 * (0.5 + 0) / 2 = 0.125)
    assert cpr([50, 100], [1.5, 1.0]) == pytest.approx(0.625)
    assert cmd([50, 100], [1.5, 1.0]) == pytest.approx(0.125)
    # negative f (the circuit does worse than ablating everything): 0.9 * (-0.5 + 1) / 2 = 0.225;
    # CMD = 0.9 * (1.5 + 0) / 2 = 0.675
    assert cpr([10, 100], [-0.5, 1.0]) == pytest.approx(0.225)
    assert cmd([10, 100], [-0.5, 1.0]) == pytest.approx(0.675)
    assert cpr([10, 100], [-1.0, -1.0]) == pytest.approx(-0.9)


@pytest.mark.parametrize("ks, f, message", [
    ([10], [1.0], "two points"),
    ([10, 100], [1.0], "one value per k"),
    ([50, 10], [1.0, 1.0], "increasing"),
    ([0, 100], [0.0, 1.0], r"\(0, 100\]"),
    ([10, 200], [0.0, 1.0], r"\(0, 100\]"),
    ([10, 100], [math.nan, 1.0], "NaN"),
])
def test_cpr_cmd_reject_bad_curves(ks, f, message):
    for fn in (cpr, cmd):
        with pytest.raises(ValueError, match=message):
            fn(ks, f)


def test_curve_sizes_follow_mib_floor():
    assert faithfulness_curve_sizes(12).tolist() == [0, 0, 0, 0, 0, 0, 1, 2, 6, 12]
    assert faithfulness_curve_sizes(144).tolist() == [0, 0, 0, 1, 2, 7, 14, 28, 72, 144]
    assert faithfulness_curve_sizes(1000).tolist() == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    assert faithfulness_curve_sizes(1).tolist() == [0] * 9 + [1]  # one component: in only at 100%
    assert faithfulness_curve_sizes(30, [10, 100]).tolist() == [3, 30]  # 0.1 * 30 is 3.0000000000000004
    assert faithfulness_curve_sizes(100, [29, 57, 100]).tolist() == [29, 57, 100]  # 0.29 * 100 = 28.999999999999996
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n_components"):
            faithfulness_curve_sizes(bad)


def test_top_k_masks_are_nested_and_match_top_k_mask():
    scores = np.array([[0.1, 0.5, 0.5], [0.2, 0.0, 0.5]])
    masks = top_k_masks(scores, [0, 1, 2, 3, 4, 6, 9])
    assert masks.shape == (7, 2, 3)
    for n, m in zip([0, 1, 2, 3, 4, 6, 9], masks):
        assert (m == top_k_mask(scores, n)).all()
    assert all((masks[i] <= masks[i + 1]).all() for i in range(6))  # a larger circuit contains a smaller one
    assert masks[1].tolist() == [[False, True, False], [False, False, False]]  # tie 0.5 x3: lowest index first
