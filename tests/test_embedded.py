"""The embedded-model contract (harness.embedded): one schedule, one recipe base, one card format, one registry."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from harness.embedded import registry
from harness.core.card import CardFormat, compare_cards, compare_weights
from harness.embedded.docstring_lm import RECIPE as LM_RECIPE
from harness.embedded.icl_learner import ICL_MODEL_SPECS, ICLRecipe
from harness.embedded.planted import PLANTED
from harness.embedded.schedule import warmup_cosine
from harness.errors import HarnessError, UnknownNameError


# The three schedules the committed weights were trained with, verbatim from before they were merged.
def _planted_lr(step, r):
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    progress = (step - r.warmup) / max(1, r.steps - r.warmup)
    return r.min_lr + 0.5 * (r.lr - r.min_lr) * (1 + math.cos(math.pi * progress))


def _icl_lr(step, r):
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    t = (step - r.warmup) / max(1, r.steps - r.warmup)
    return r.lr * (r.min_lr_frac + (1 - r.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def _lm_lr(step, r):
    return r.lr * min(1.0, (step + 1) / r.warmup) * 0.5 * (1 + math.cos(math.pi * step / r.steps))


def test_one_schedule_gives_the_committed_recipes_floats_at_every_step():
    cases = [(spec.recipe, _planted_lr) for spec in PLANTED.values()]
    cases += [(spec.recipe, _icl_lr) for spec in ICL_MODEL_SPECS.values()]
    cases += [(LM_RECIPE, _lm_lr)]
    for recipe, old in cases:
        for r in (recipe, replace(recipe, steps=7, warmup=3)):
            new = [r.lr_at(s) for s in range(r.steps)]
            assert new == [old(s, r) for s in range(r.steps)], type(r).__name__  # exact float equality
    assert warmup_cosine(0, steps=10, lr=1.0, warmup=2) == 0.5
    assert warmup_cosine(9, steps=10, lr=1.0, warmup=0, min_lr=0.1) > 0.1


def test_recipes_share_the_base_and_record_json_ready_dicts():
    from harness.embedded.recipe import Recipe

    for r in (PLANTED["planted-ioi"].recipe, ICL_MODEL_SPECS["icl-d5"].recipe, LM_RECIPE):
        assert isinstance(r, Recipe)
        d = r.to_dict()
        assert json.loads(json.dumps(d)) == d and d["steps"] == r.steps
    assert ICLRecipe.from_dict({**ICLRecipe().to_dict(), "unknown": 1}) == ICLRecipe()
    assert LM_RECIPE.to_dict()["betas"] == [0.9, 0.95]
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    opt = LM_RECIPE.adamw(model)
    assert [len(g["params"]) for g in opt.param_groups] == [1, 1]
    assert opt.param_groups[0]["weight_decay"] == LM_RECIPE.weight_decay and opt.param_groups[1]["weight_decay"] == 0.0
    assert LM_RECIPE.set_lr(opt, 0) == LM_RECIPE.lr_at(0) == opt.param_groups[1]["lr"]


def test_card_format_round_trip_and_errors(tmp_path):
    fmt = CardFormat(name="test-format", version=2, json_name="test.json", what="test model")
    module = torch.nn.Linear(4, 3)
    fmt.write(tmp_path / "m", module.state_dict(), {"card": {"x": 1.5}})
    assert fmt.holds(tmp_path / "m") and fmt.card(tmp_path / "m") == {"x": 1.5}
    meta = fmt.read(tmp_path / "m")
    assert meta["format"] == "test-format" and meta["format_version"] == 2
    other = torch.nn.Linear(4, 3)
    fmt.load_state(other, tmp_path / "m")
    assert torch.equal(other.weight, module.weight)
    assert compare_weights(tmp_path / "m" / "model.safetensors", tmp_path / "m" / "model.safetensors") == 0.0
    with pytest.raises(HarnessError, match="do not match"):
        fmt.load_state(torch.nn.Linear(4, 2), tmp_path / "m")
    with pytest.raises(ValueError, match="JSON"):
        fmt.write(tmp_path / "bad", module.state_dict(), {"card": {"x": object()}})
    assert not (tmp_path / "bad").exists()
    assert fmt.card(tmp_path / "nothing") is None
    with pytest.raises(HarnessError, match="expected test.json"):
        fmt.read(tmp_path / "nothing")
    (tmp_path / "m" / "test.json").write_text(json.dumps({**meta, "format_version": 3}))
    with pytest.raises(HarnessError, match="format_version 3"):
        fmt.read(tmp_path / "m")
    assert compare_cards({"a": [1.0], "seconds": 1}, {"a": [1.0 + 1e-9], "seconds": 2}) == []
    assert compare_cards({"a": 1}, {"b": 1}) == ["a: only in one card", "b: only in one card"]


def test_registry_lists_every_embedded_model_once():
    names = [m.name for m in registry.models()]
    traps = ["planted-ioi-negative", "planted-ioi-redundant", "planted-ioi-busy", "planted-ioi-saturated",
             "planted-ioi-saturated-sharp", "planted-ioi-cancel", "planted-ioi-opposing"]
    assert names == ["planted-ioi", "planted-greater-than", *traps, "icl-d5", "icl-d8-noisy", "icl-d5-long",
                     "icl-d8-noisy-long", "docstring-gpt"]
    assert [m.family for m in registry.models()] == ["circuits"] * 9 + ["icl"] * 4 + ["reconstruction"]
    for model in registry.models():
        assert model.is_current(model.committed_dir), model.name
        assert model.committed_dir.parent == registry.WEIGHTS_DIR
        model.verify(model.committed_dir)
    with pytest.raises(UnknownNameError, match="did you mean"):
        registry.get("planted-iio")


def test_compare_reports_identical_and_different_directories(tmp_path):
    import shutil

    model = registry.get("icl-d5")
    copy = tmp_path / "icl-d5"
    shutil.copytree(model.committed_dir, copy)
    lines = []
    assert model.compare(model.committed_dir, copy, log=lines.append) and "bitwise identical" in lines[0]
    from safetensors.torch import load_file, save_file

    weights = load_file(str(copy / "model.safetensors"))
    first = sorted(weights)[0]
    weights[first] = weights[first] + 1e-3
    save_file(weights, str(copy / "model.safetensors"))
    assert not model.compare(model.committed_dir, copy, log=lines.append) and "DIFFERENT" in lines[-1]
