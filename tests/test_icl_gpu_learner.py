"""GPU-trained in-context learners: pending registration, the CPU check of their card numbers, the CUDA build;
and the long-trained CPU learner that reaches the same fidelity."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from harness.embedded import registry
from harness.embedded.icl_learner import (GPU_MODEL_SPECS, ICLArch, ICLModelSpec, ICLRecipe, save_icl_model,
                                          spec_hash, train_icl_model, verify_card_numbers)
from harness.embedded.icl_learner.train import _card, error_curves
from harness.errors import HarnessError

TINY = ICLModelSpec(
    name="icl-tiny", description="a test learner",
    arch=ICLArch(d=2, n_points=5, n_layers=1, n_heads=1, d_model=16, d_mlp=32, encoding="paired"),
    recipe=ICLRecipe(steps=20, batch_size=16, warmup=5, eval_tasks=200),
)


def _gpu_like_directory(tmp_path):
    """A learner trained here, saved with the card a GPU build writes (SPD per k, device in the hash)."""
    model, _ = train_icl_model(TINY)
    gpu = replace(TINY, device="cuda", card_tolerance=1e-4)
    card = _card(gpu, 1.0, 1.0, *error_curves(model, 200, 0.0, TINY.recipe.eval_seed), [])
    card["spec_hash"] = spec_hash(gpu)
    save_icl_model(model, card, tmp_path / "m")
    return gpu, tmp_path / "m"


def test_gpu_card_numbers_are_checked_from_the_weights(tmp_path):
    gpu, directory = _gpu_like_directory(tmp_path)
    card = json.loads((directory / "icl.json").read_text())["card"]
    assert len(card["spd_to_bayes_per_k"]) == TINY.arch.n_points + 1 and card["card_tolerance"] == 1e-4
    assert spec_hash(gpu) != spec_hash(TINY)  # the device is part of a GPU learner's identity
    assert verify_card_numbers(gpu, directory, log=None)
    meta = json.loads((directory / "icl.json").read_text())
    meta["card"]["spd_to_bayes_per_k"][3] += 1e-3  # a card that its weights do not produce
    (directory / "icl.json").write_text(json.dumps(meta))
    lines = []
    assert not verify_card_numbers(gpu, directory, log=lines.append)
    assert "NOT reproduced" in lines[0] and "spd_to_bayes_per_k 0.001" in lines[0]
    assert not verify_card_numbers(TINY, directory, log=None)  # another recipe's directory


def test_spd_is_zero_against_itself_and_matches_the_error_gap():
    model, card = train_icl_model(TINY)
    curve, bayes, spd = error_curves(model, 200, 0.0, 7)
    assert spd.shape == curve.shape and (spd >= 0).all()
    assert "spd_to_bayes_per_k" not in card  # CPU learners keep their committed card form
    # noiseless: the Bayes predictor is exact once k >= d, so the model's error there is its SPD
    assert spd[TINY.arch.d:] == pytest.approx(curve[TINY.arch.d:], rel=1e-6)


def test_pending_gpu_learners_are_found_but_not_listed_until_committed():
    for name, spec in GPU_MODEL_SPECS.items():
        assert spec.device == "cuda" and registry.get(name).spec is spec
        assert (name in [m.name for m in registry.models()]) == registry.get(name).is_current(
            registry.get(name).committed_dir)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is absent")
def test_building_a_gpu_learner_without_cuda_says_where_to_build_it(tmp_path):
    with pytest.raises(HarnessError, match="build it on a CUDA machine"):
        registry.get("icl-d5-gpu").build(tmp_path / "x", log=None)


def test_cuda_build_then_cpu_check(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine: the GPU learner build is checked where it is")
    gpu = replace(TINY, name="icl-tiny-gpu", device="cuda", card_tolerance=1e-4)
    model, card = train_icl_model(gpu)
    card["spec_hash"] = spec_hash(gpu)
    save_icl_model(model, card, tmp_path / "g")
    assert card["trained_on"] and verify_card_numbers(gpu, tmp_path / "g", log=None)


def test_the_long_cpu_learner_is_within_the_literatures_spd_to_ols():
    """icl-d5-long (issue 16): mean normalised SPD to OLS over k = 1..11 below 0.01, recomputed from its weights."""
    from harness.embedded.icl_learner import load_icl_model

    model, card, _ = load_icl_model("icl-d5-long")
    r = registry.get("icl-d5-long").spec.recipe
    curve, bayes, spd = error_curves(model, r.eval_tasks, r.noise_std, r.eval_seed)
    assert curve == pytest.approx(card["final_error_per_k"], abs=1e-5)  # the card's curve, from these weights
    assert spd[1:].mean() < 0.01
