"""The saturation trap's background (``Traps.background``): its verification numbers and checks.

- ``_via_below_background`` against a direct computation of the same random prompt subsets;
- ``_background_checks`` passing on numbers like the committed card's and failing on a wrong sign, an inert
  head, a joint effect and via heads above the background;
- the committed planted-ioi-saturated card: the background heads, their signs and the numbers behind the checks.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from harness.embedded import planted
from harness.embedded.planted.specs import Traps
from harness.embedded.planted.traps import (
    TRAP_THRESHOLDS, VIA_SUBSET, VIA_SUBSET_SEED, VIA_SUBSETS, _background_checks, _via_below_background,
)


VIA, BACKGROUND = ((0, 0), (0, 1)), ((1, 0), (1, 1), (1, 2))


def _traps() -> Traps:
    return Traps(via=VIA, background=BACKGROUND)


def test_via_below_background_counts_the_subsets_directly():
    rng = np.random.default_rng(3)
    terms = rng.normal(0.0, 1.0, size=(64, 2, 3))  # [prompts, L, H]
    terms[:, 1] += np.array([0.4, -0.5, 0.45])  # background heads: a real effect each, of either sign
    got = _via_below_background(torch.from_numpy(terms), _traps())
    sub = np.random.default_rng(VIA_SUBSET_SEED)
    below = 0
    for _ in range(VIA_SUBSETS):
        m = np.abs(terms[sub.choice(64, VIA_SUBSET, replace=False)].mean(0))
        below += max(m[0, 0], m[0, 1]) < min(m[1, 0], m[1, 1], m[1, 2])
    assert got == {"fraction": round(below / VIA_SUBSETS, 6), "subset": VIA_SUBSET, "subsets": VIA_SUBSETS}
    assert 0.0 < got["fraction"] < 1.0


def test_via_below_background_extremes_and_small_splits():
    terms = torch.zeros(40, 2, 3, dtype=torch.float64)
    terms[:, 1] = 0.02
    assert _via_below_background(terms, _traps())["fraction"] == 1.0
    terms[:, 0, 1] = 0.05  # one via head above the whole background on every prompt
    assert _via_below_background(terms, _traps())["fraction"] == 0.0
    small = _via_below_background(torch.ones(16, 2, 3), _traps())  # fewer prompts than a subset: all of them
    assert small["subset"] == 16 and small["fraction"] == 0.0  # ties are not below


def _numbers(singles=(0.02, -0.02, 0.021), joint=0.004, fraction=0.99, attention=0.99) -> dict:
    reps = ("resample", "corrupted_patch", "mean_ablation")
    bg = {"heads": [list(h) for h in BACKGROUND],
          **{f"single_{r}_drop": list(singles) for r in reps}, **{f"joint_{r}_drop": joint for r in reps}}
    return {"traps": {"background_joint": bg, "via_below_background": {"fraction": fraction},
                      "attention": {f"{a}.{b}": {"attention": attention} for a, b in BACKGROUND}}}


def test_background_checks_pass_and_fail_for_the_right_reasons():
    ok = _background_checks(_numbers(), _traps())
    assert set(ok) == {"background_heads_move_metric", "background_heads_attend", "background_jointly_inert",
                       "via_below_background"} and all(c["passed"] for c in ok.values())
    failing = {
        "background_heads_move_metric": _numbers(singles=(0.02, 0.02, 0.021)),  # the second head has the wrong sign
        "background_jointly_inert": _numbers(joint=0.06),
        "via_below_background": _numbers(fraction=0.9),
        "background_heads_attend": _numbers(attention=0.3),
    }
    for name, v in failing.items():
        checks = _background_checks(v, _traps())
        assert [k for k, c in checks.items() if not c["passed"]] == [name]
    inert = _background_checks(_numbers(singles=(0.02, -0.002, 0.021)), _traps())["background_heads_move_metric"]
    assert not inert["passed"] and inert["value"] == pytest.approx(0.002)
    no_via = _background_checks(_numbers(), Traps(background=BACKGROUND))
    assert "via_below_background" not in no_via


def test_committed_saturated_card_holds_its_background():
    card = json.loads((planted.MODELS["planted-ioi-saturated"].committed_dir / "gpt.json").read_text())["card"]
    traps = Traps.from_dict(card["traps"])
    spec = planted.PLANTED["planted-ioi-saturated"]
    assert traps == spec.traps and len(traps.background) == 19
    assert not set(traps.background) & (set(spec.circuit) | {(0, 0), (1, 1)})
    v = card["verification"]
    assert v["passed"] and all(v["checks"][k]["passed"] for k in _background_checks(v, traps))
    bg = v["traps"]["background_joint"]
    signs = np.array([1.0 if i % 2 == 0 else -1.0 for i in range(19)])
    for rep in ("resample", "corrupted_patch", "mean_ablation"):
        signed = signs * np.array(bg[f"single_{rep}_drop"])
        assert signed.min() >= TRAP_THRESHOLDS["background_min_signed_drop"]
        assert np.abs(bg[f"single_{rep}_drop"]).max() <= 0.05  # still non-circuit heads by the ground truth's bar
    tampered = copy.deepcopy(v)
    tampered["traps"]["via_below_background"]["fraction"] = 0.5
    assert not _background_checks(tampered, traps)["via_below_background"]["passed"]
