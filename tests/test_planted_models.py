"""Embedded planted-circuit models: committed models load and verify, failures are refused, training runs.

No test retrains a real model (that takes minutes; `harness models build`
and `harness models check` do); the training loop is smoke-tested on a tiny
recipe whose model must fail verification.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.embedded import planted, registry
from harness.embedded.planted.build import sharpen_heads
from harness.core.card import compare_cards
from harness.errors import HarnessError
from harness.models.gpt import load_gpt, save_gpt
from harness.data import prompts as P
from harness.tasks.circuits.task import clear_model_cache, get_model

NAMES = list(planted.PLANTED)
COMMITTED = {name: planted.MODELS[name].committed_dir for name in NAMES}


@pytest.fixture(scope="module")
def committed() -> dict:
    return {name: load_gpt(COMMITTED[name]) for name in NAMES}


def _exempt(spec) -> set:
    """A trap model's negative, redundant and sign-cancelling heads: in the circuit, checked by their own rules."""
    return set(spec.traps.negative) | {h for g in spec.traps.redundant for h in g} | set(spec.traps.cancel)


@pytest.mark.parametrize("name", NAMES)
def test_committed_model_card_passes_and_matches_recomputation(committed, name):
    model = committed[name]
    spec = planted.PLANTED[name]
    card = model.card
    assert card["name"] == name and card["task"] == spec.task
    assert card["circuit_heads"] == [list(h) for h in spec.circuit]
    assert card["recipe"] == spec.recipe.to_dict()  # the committed model was built with the recipe in code
    v = card["verification"]
    assert v["passed"] and all(c["passed"] for c in v["checks"].values())
    planted.check_card(card)  # the stored numbers pass the thresholds
    # recompute verification on the committed weights: same numbers as stored
    fresh = planted.verify(model, spec)
    diffs = compare_cards(v, fresh, atol=1e-4)
    assert not diffs, diffs[:5]
    # the thresholds, spelled out
    drop = np.array(v["resample_drop"])
    circuit = np.zeros_like(drop, dtype=bool)
    for layer, head in spec.circuit:
        circuit[layer, head] = True
    plain = circuit.copy()  # circuit heads judged by the minimum drop (a trap's negative / redundant heads are not)
    for layer, head in _exempt(spec):
        plain[layer, head] = False
    assert v["accuracy"] >= 0.95 and v["mean_metric"] > 0
    assert drop[plain].min() >= planted.THRESHOLDS["circuit_min_drop"]
    others = ~circuit  # non-circuit heads judged by the maximum drop (an opposing pair is not: it has its own checks)
    for pair in spec.traps.opposing:
        for layer, head in pair:
            others[layer, head] = False
    assert np.abs(drop[others]).max() <= planted.THRESHOLDS["noncircuit_max_abs_drop"]
    assert np.array(v["distractor_effect"])[~circuit].max() >= planted.THRESHOLDS["distractor_min_effect"]


@pytest.mark.parametrize("name", NAMES)
def test_load_planted_prefers_committed_dir(name, tmp_path):
    model = planted.load_planted(name, cache_dir=tmp_path, reverify=True)
    assert model.model_id == name and model.card["name"] == name
    assert not (tmp_path / name).exists()  # nothing built into the cache


def test_load_order_cache_then_build(tmp_path, monkeypatch):
    name = "planted-ioi"
    entry = planted.MODELS[name]
    committed = entry.committed_dir
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "committed")  # pretend nothing is committed
    built = []

    def fake_build(directory, log=None):
        built.append(Path(directory))
        return save_gpt(load_gpt(committed), directory)

    monkeypatch.setattr(entry, "build", fake_build)
    cache = tmp_path / "cache"
    planted.load_planted(name, cache_dir=cache, reverify=False)
    assert built == [cache / (name + ".building")] and entry.is_current(cache / name)
    assert not (cache / (name + ".building")).exists()
    planted.load_planted(name, cache_dir=cache, reverify=False)  # now found in the cache: no second build
    assert len(built) == 1
    with pytest.raises(HarnessError, match="harness models build"):
        planted.load_planted("planted-greater-than", cache_dir=None)


def _failing_card(card: dict) -> dict:
    bad = copy.deepcopy(card)
    bad["verification"]["resample_drop"][0][0] = 0.4  # head 0.0 is not in either circuit
    return bad


@pytest.mark.parametrize("name", NAMES)
def test_failing_card_is_refused(committed, name, tmp_path):
    model = committed[name]
    with pytest.raises(HarnessError, match="noncircuit_heads_negligible"):
        planted.check_card(_failing_card(model.card), where=name)
    bad = copy.deepcopy(model.card)
    spec = planted.PLANTED[name]
    circuit_head = [h for h in spec.circuit[1:] + spec.circuit[:1] if h not in _exempt(spec)][0]
    bad["verification"]["resample_drop"][circuit_head[0]][circuit_head[1]] = 0.01
    with pytest.raises(HarnessError, match=f"circuit_heads_matter.*{circuit_head[0]}.{circuit_head[1]}"):
        planted.check_card(bad)
    bad = copy.deepcopy(model.card)
    bad["verification"]["accuracy"] = 0.5
    with pytest.raises(HarnessError, match="'accuracy' failed"):
        planted.check_card(bad)
    with pytest.raises(HarnessError, match="no verification"):
        planted.check_card({k: v for k, v in model.card.items() if k != "verification"})
    # a model saved with a failing card is refused when loaded as a task model, and from a cache dir
    save_gpt(model, tmp_path / "copy", card=_failing_card(model.card))
    clear_model_cache()
    with pytest.raises(HarnessError, match="failed verification"):
        get_model(str(tmp_path / "copy"))


def test_refused_when_weights_do_not_match_the_card(committed, tmp_path, monkeypatch):
    """Re-verification at load time catches weights that fail even though the stored card passes."""
    broken = copy.deepcopy(committed["planted-ioi"])
    d = broken.d_head
    with torch.no_grad():  # make non-circuit head 0.0 (a previous-token head) write 30x more
        broken.model.blocks[0].attn.out.weight[:, 0:d] *= 30.0
    cache = tmp_path / "cache"
    save_gpt(broken, cache / "planted-ioi")  # with the committed (passing) card
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "none")
    planted.load_planted("planted-ioi", cache_dir=cache, reverify=False)  # the card alone passes
    with pytest.raises(HarnessError, match="re-verified.*noncircuit_heads_negligible"):
        planted.load_planted("planted-ioi", cache_dir=cache, reverify=True)


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_covers_task_and_sampler_matches_prompts(name):
    spec = planted.PLANTED[name]
    tok = planted.make_tokenizer(spec.task)
    if spec.task == "ioi":
        for word in P.IOI_NAMES + P.IOI_PLACES + P.IOI_OBJECTS:
            assert tok.token_to_id(word) is not None
        sampler = planted.IOISampler(tok)
        d = sampler.sample(np.random.default_rng(0), 6)
        ids = sampler.tokens(d)
        for row, t, order, io, s in zip(ids, d["t"], d["order"], d["io"], d["s"]):
            a, b = (io, s) if order == 0 else (s, io)
            seg = P._fill(P.IOI_TEMPLATES[t], {"A": " " + P.IOI_NAMES[a], "B": " " + P.IOI_NAMES[b],
                                                "S2": " " + P.IOI_NAMES[s], "PLACE": " " + tok.vocab[row[7]],
                                                "OBJECT": " " + tok.vocab[row[12]]})
            assert tok.encode(P.render(seg, "words")) == row.tolist()
        swapped = sampler.tokens(d, swap=True)
        assert torch.equal(swapped[:, 1], ids[:, 3]) and torch.equal(swapped[:, 9], ids[:, 9])
        io_repeated = sampler.tokens(d, s2="io")  # the interchange source: IO repeated, answer S
        assert torch.equal(io_repeated[:, 9], sampler.answer(d, "io"))
        abc = sampler.tokens(d, abc=True)
        assert (abc[:, 9] != abc[:, 1]).all() and (abc[:, 9] != abc[:, 3]).all()
    else:
        for word in P.GT_NOUNS + tuple(P.yy(v) for v in range(100)):
            assert tok.token_to_id(word) is not None
        sampler = planted.GreaterThanSampler(tok)
        d = sampler.sample(np.random.default_rng(0), 6)
        ids = sampler.tokens(d)
        for row, noun, xx, yy in zip(ids, d["noun"], d["xx"], d["yy"]):
            text = f"The {P.GT_NOUNS[noun]} lasted from the year {xx} {yy:02d} to the year {xx}"
            assert tok.encode(text) == row.tolist()
        target = sampler.target(d["yy"])
        assert torch.allclose(target.sum(-1), torch.ones(6))
        for row, y in zip(target, d["yy"]):
            above = row[torch.from_numpy(sampler.year_ids)] > 0
            assert above.tolist() == [v > y for v in range(100)]


TINY = dict(d_model=16, d_mlp=32, n_heads=4, steps=3, batch=4, distractor_batch=4, verify_prompts=32, log_every=1)


def test_training_smoke_and_verification_rejects_bad_model(tmp_path, monkeypatch):
    spec = planted.PLANTED["planted-ioi"]
    recipe = replace(spec.recipe, **TINY)
    logs = []
    model = planted.build_model("planted-ioi", recipe, log=logs.append)
    assert model.n_layers == 3 and model.d_model == 16
    card = model.card
    assert card["training"]["history"][-1]["step"] == 3
    assert np.isfinite(card["training"]["history"][-1]["loss"])
    v = card["verification"]
    assert not v["passed"]
    assert not v["checks"]["accuracy"]["passed"]
    with pytest.raises(HarnessError, match="failed verification"):
        planted.check_card(card, where="tiny")
    assert any("FAIL" in line for line in logs)
    # deterministic: the same recipe gives the same weights
    again = planted.build_model("planted-ioi", recipe, log=None)
    for a, b in zip(model.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    # the registry's build refuses to write a model that fails verification
    monkeypatch.setattr(planted.build, "build_model", lambda name, recipe=None, log=None: model)
    with pytest.raises(HarnessError, match="failed verification"):
        registry.build(["planted-ioi"], tmp_path / "out", force=True, log=None)
    assert not (tmp_path / "out" / "planted-ioi" / "gpt.json").exists()


def test_greater_than_training_smoke():
    spec = planted.PLANTED["planted-greater-than"]
    model, training = planted.train(spec, replace(spec.recipe, **TINY), log=None)
    assert training["history"][-1]["step"] == 3 and np.isfinite(training["history"][-1]["loss"])


def test_registry_build_keeps_existing_models(tmp_path):
    target = tmp_path / "planted-ioi"
    save_gpt(load_gpt(COMMITTED["planted-ioi"]), target)
    before = (target / "model.safetensors").stat().st_mtime_ns
    paths = registry.build(["planted-ioi"], out=tmp_path, force=False, log=None)
    assert paths == [target] and (target / "model.safetensors").stat().st_mtime_ns == before
    assert [m.name for m in registry.models() if m.family == "circuits"] == NAMES
    assert registry.get("planted-ioi") is planted.MODELS["planted-ioi"]


def test_compare_cards():
    a = {"x": 1.0, "y": [1, 2], "training": {"seconds": 5}}
    assert compare_cards(a, {"x": 1.0 + 1e-7, "y": [1, 2], "training": {"seconds": 9}}) == []
    assert compare_cards(a, {"x": 1.1, "y": [1, 2], "training": {"seconds": 5}}) == ["x: 1.0 != 1.1"]


def test_committed_files_are_small():
    for name in NAMES:
        d = COMMITTED[name]
        size = sum(f.stat().st_size for f in d.iterdir())
        assert size < 1_000_000, (name, size)
        json.loads((d / "gpt.json").read_text())


# ------------------------------------------------------------------ trap models
TRAP_NAMES = list(planted.TRAP_SPECS)


@pytest.mark.parametrize("name", TRAP_NAMES)
def test_trap_spec_round_trips_through_its_card(committed, name):
    spec = planted.PLANTED[name]
    card = committed[name].card
    assert spec.traps and planted.Traps.from_dict(spec.traps.to_dict()) == spec.traps
    assert planted.Traps.from_dict(card["traps"]) == spec.traps
    # the card's JSON sorts keys, so the weights come back in another order (a dict: the loss looks them up)
    recipe = planted.PlantedRecipe.from_dict(card["recipe"])
    assert recipe.to_dict() == spec.recipe.to_dict() and dict(recipe.weights) == dict(spec.recipe.weights)
    assert recipe == replace(spec.recipe, weights=recipe.weights)
    assert card["trap_notes"] == spec.notes and {"mechanism", "ground_truth", "predictions"} <= set(spec.notes)
    assert set(spec.notes["predictions"]) >= {"acdc", "act-patch-mean", "act-patch-resample", "eap", "eap-ig",
                                             "discrete-sae", "random"}
    assert planted.MODELS[name].is_current(COMMITTED[name])
    assert not planted.MODELS[name].is_current(Path("/nonexistent"))
    # every trap has its own checks in the card, all passed
    checks = card["verification"]["checks"]
    t = spec.traps
    expected = ({"negative_heads_raise_metric"} if t.negative else set()) \
        | ({"redundant_singles_negligible", "redundant_joint_matters"} if t.redundant else set()) \
        | ({"busy_heads_attend", "busy_heads_active", "busy_heads_inert"} if t.busy else set()) \
        | ({"via_heads_matter", "saturation_hides_gradient"} if t.via else set()) \
        | ({"cancel_heads_change_each_prompt", "cancel_heads_change_each_prompt_other_ablations",
            "cancel_signs_follow_order", "cancel_mean_effect_negligible", "noncircuit_heads_change_no_prompt"}
           if t.cancel else set()) \
        | ({"opposing_singles_outweigh_circuit", "opposing_pairs_inert"} if t.opposing else set()) \
        | ({"sharpened_switch_narrow"} if t.sharpen else set())
    assert expected and expected <= set(checks) and all(checks[c]["passed"] for c in expected)


def _break_trap(card: dict, name: str) -> tuple[dict, str]:
    """A copy of ``card`` whose trap numbers fail, and the check that must say so."""
    bad = copy.deepcopy(card)
    v, t = bad["verification"], planted.PLANTED[name].traps
    if t.negative:
        layer, head = t.negative[0]
        v["resample_drop"][layer][head] = 0.02
        return bad, "negative_heads_raise_metric"
    if t.redundant:
        v["traps"]["redundant"][0]["single_resample_drop"][0] = 0.4
        return bad, "redundant_singles_negligible"
    if t.busy:
        layer, head = t.busy[0][0]
        v["traps"]["activity"][layer][head] = 0.0
        return bad, "busy_heads_active"
    if t.cancel:  # the head's drops no longer cancel in the mean
        v["traps"]["cancel"][f"{t.cancel[0][0]}.{t.cancel[0][1]}"]["corrupted_patch"]["mean_drop"] = 0.2
        return bad, "cancel_mean_effect_negligible"
    layer, head = t.via[0]
    v["traps"]["linear_estimate_drop"][layer][head] = v["corrupted_patch_drop"][layer][head]
    return bad, "saturation_hides_gradient"


@pytest.mark.parametrize("name", TRAP_NAMES)
def test_trap_card_that_fails_its_trap_check_is_refused(committed, name):
    bad, check = _break_trap(committed[name].card, name)
    with pytest.raises(HarnessError, match=f"check '{check}' failed"):
        planted.check_card(bad, where=name)
    # without its traps entry the same numbers are judged as a plain planted model's: the negative and
    # redundant heads then fail the circuit check (they are exempt from it only as declared traps)
    t = planted.PLANTED[name].traps
    if t.negative or t.redundant or t.cancel:
        plain = {k: v for k, v in committed[name].card.items() if k != "traps"}
        with pytest.raises(HarnessError, match="circuit_heads_matter"):
            planted.check_card(plain, where=name)


def test_cancel_trap_checks_and_hint():
    """planted-ioi-cancel: each of its checks refuses a card whose numbers break it; 2.1's drops cancel in the
    mean (every split alternates the orders) but not per prompt; it attends to the first name."""
    name = "planted-ioi-cancel"
    card = load_gpt(COMMITTED[name]).card
    v = card["verification"]
    cancel = v["traps"]["cancel"]["2.1"]
    for rep in ("resample", "corrupted_patch", "mean_ablation"):
        c = cancel[rep]
        assert abs(c["mean_drop"]) <= planted.TRAP_THRESHOLDS["cancel_max_mean_drop"] < c["abs_drop"]
        assert c["abba_drop"] > 0 > c["baba_drop"]
    # what the mean metric sees of 2.1 is as small as a non-circuit head's; per prompt it is a circuit head
    grid = np.array(v["traps"]["per_prompt_abs_drop"]["resample"])
    circuit = np.zeros_like(grid, dtype=bool)
    for layer, head in planted.PLANTED[name].circuit:
        circuit[layer, head] = True
    assert grid[circuit].min() >= planted.TRAP_THRESHOLDS["cancel_min_abs_drop"] > 0.1 >= grid[~circuit].max()
    breaks = {
        "cancel_heads_change_each_prompt": ("resample", "abs_drop", 0.1),
        "cancel_heads_change_each_prompt_other_ablations": ("mean_ablation", "abs_drop", 0.1),
        "cancel_signs_follow_order": ("resample", "sign_agreement", 0.6),
        "cancel_mean_effect_negligible": ("resample", "mean_drop", -0.3),
    }
    for check, (rep, key, value) in breaks.items():
        bad = copy.deepcopy(card)
        bad["verification"]["traps"]["cancel"]["2.1"][rep][key] = value
        with pytest.raises(HarnessError, match=f"check '{check}' failed"):
            planted.check_card(bad, where=name)
    bad = copy.deepcopy(card)
    bad["verification"]["traps"]["per_prompt_abs_drop"]["resample"][0][0] = 0.2
    with pytest.raises(HarnessError, match="check 'noncircuit_heads_change_no_prompt' failed"):
        planted.check_card(bad, where=name)
    assert card["attention_hints"]["2.1"] == [13, P.IOI_TEMPLATES[0].index("{A}")]  # the first name
    assert card["verification"]["attention"]["2.1"]["hint_attention"] >= 0.9


def test_opposing_trap_checks():
    """planted-ioi-opposing: each head of the pair alone moves the metric more than any circuit head (the
    suppressor down, the promoter up), the two together leave it; each check refuses numbers that break it,
    and as a plain card (no traps entry) the pair fails the non-circuit heads' check."""
    name = "planted-ioi-opposing"
    card = load_gpt(COMMITTED[name]).card
    v, th = card["verification"], planted.TRAP_THRESHOLDS
    (pair,) = v["traps"]["opposing"]
    circuit = planted.PLANTED[name].circuit
    for rep in ("resample", "corrupted_patch", "mean_ablation"):
        bar = max(th["opposing_min_single_drop"], max(v[f"{rep}_drop"][layer][head] for layer, head in circuit))
        suppressor, promoter = pair[f"single_{rep}_drop"]
        assert suppressor >= bar and -promoter >= bar
        assert abs(pair[f"joint_{rep}_drop"]) <= th["opposing_max_joint_drop"]
    breaks = {"opposing_singles_outweigh_circuit": ("single_corrupted_patch_drop", [0.5, -2.0]),
              "opposing_pairs_inert": ("joint_mean_ablation_drop", 0.2)}
    for check, (key, value) in breaks.items():
        bad = copy.deepcopy(card)
        bad["verification"]["traps"]["opposing"][0][key] = value
        with pytest.raises(HarnessError, match=f"check '{check}' failed"):
            planted.check_card(bad, where=name)
    bad = copy.deepcopy(card)  # a circuit head that drops the metric more than the pair does
    layer, head = circuit[0]
    bad["verification"]["resample_drop"][layer][head] = 5.0
    with pytest.raises(HarnessError, match="check 'opposing_singles_outweigh_circuit' failed"):
        planted.check_card(bad, where=name)
    plain = {k: v for k, v in card.items() if k != "traps"}
    with pytest.raises(HarnessError, match="noncircuit_heads_negligible"):
        planted.check_card(plain, where=name)


def test_sharpened_trap_is_the_saturated_model_with_a_sharper_query():
    """planted-ioi-saturated-sharp: planted-ioi-saturated's trained weights with 2.6's query x30 and nothing
    else changed; sharpening multiplies that head's attention logits by the factor; without it the switch
    along the corrupted -> clean path is wider than the check allows."""
    from harness.embedded.planted.traps import _path_attention
    from harness.embedded.planted.verifier import _split

    sharp, base = load_gpt(COMMITTED["planted-ioi-saturated-sharp"]), load_gpt(COMMITTED["planted-ioi-saturated"])
    (head, factor), = planted.PLANTED["planted-ioi-saturated-sharp"].traps.sharpen
    dh = base.d_head
    rows = slice(head[1] * dh, (head[1] + 1) * dh)
    for (key, a), b in zip(sharp.model.state_dict().items(), base.model.state_dict().values()):
        if key == f"blocks.{head[0]}.attn.qkv.weight" or key == f"blocks.{head[0]}.attn.qkv.bias":
            assert torch.allclose(a[rows], b[rows] * factor, rtol=1e-6, atol=0)
            b = b.clone()
            b[rows] = a[rows]
        assert torch.equal(a, b), key
    spec = planted.PLANTED["planted-ioi-saturated-sharp"]
    width = sharp.card["verification"]["traps"]["path_attention"]
    assert max(w["switch_width"] for w in width.values()) <= planted.TRAP_THRESHOLDS["sharpen_max_switch_width"]
    split = _split(base, "ioi", 64, 11)
    with torch.no_grad():
        z_clean = base.run_with_cache(split.clean, return_logits=False)[1]
        z_corrupt = base.run_with_cache(split.corrupted, return_logits=False)[1]
        unsharpened = _path_attention(base, spec, split, z_clean, z_corrupt)
    assert max(w["switch_width"] for w in unsharpened.values()) > planted.TRAP_THRESHOLDS["sharpen_max_switch_width"]
    # the attention logits scale by the factor (a toy check on the model's own scoring function)
    from harness.embedded.planted.trap_training import attention_scores
    x = torch.randn(2, 14, base.d_model)
    before = attention_scores(base.model, x, head[0], head[1], 13)
    copy_model = load_gpt(COMMITTED["planted-ioi-saturated"])
    sharpen_heads(copy_model, ((head, 3.0),))
    assert torch.allclose(attention_scores(copy_model.model, x, head[0], head[1], 13), 3.0 * before, rtol=1e-5, atol=1e-5)
    bad = copy.deepcopy(sharp.card)
    next(iter(bad["verification"]["traps"]["path_attention"].values()))["switch_width"] = 0.1
    with pytest.raises(HarnessError, match="check 'sharpened_switch_narrow' failed"):
        planted.check_card(bad, where="planted-ioi-saturated-sharp")


TINY_TRAP = dict(TINY, n_heads=8, steps=2, verify_prompts=16)


@pytest.mark.parametrize("name", TRAP_NAMES)
def test_trap_training_smoke_is_deterministic_and_fails_verification(name):
    spec = planted.PLANTED[name]
    recipe = replace(spec.recipe, **TINY_TRAP)
    model = planted.build_model(name, recipe, log=None)
    history = model.card["training"]["history"][-1]
    own = {"negative": spec.traps.negative, "redundant_match": spec.traps.redundant,
           "busy_attention": spec.traps.busy, "via_match": spec.traps.via, "saturation": spec.traps.saturated, "cancel_balance": spec.traps.cancel,
           "opposing_match": spec.traps.opposing, "background": spec.traps.background,
           "background_attention": spec.traps.background}
    assert {k for k, v in own.items() if v} <= set(history) and np.isfinite(history["loss"])
    assert not model.card["verification"]["passed"] and "traps" in model.card["verification"]
    again, _ = planted.train(spec, recipe, log=None)
    sharpen_heads(again, spec.traps.sharpen)  # what the build does after training (a no-op without sharpened heads)
    for a, b in zip(model.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
