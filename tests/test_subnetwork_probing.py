"""Subnetwork probing (harness/methods/subnetwork_probing.py) against independent computations.

- the mixing primitive: mix 1 is the clean run and mix 0 the run with every head replaced, bit for bit; a
  last-layer head mixed by c in an attention-only model without layer norm gives, exactly, c times the
  clean logits plus (1 - c) times the logits with that head replaced (everything after it is linear);
  per-prompt mixes are the per-row runs; position mode is the full run's last position; its gradient
  against finite differences;
- the hard-concrete sample, its expected L0 and the deterministic mask against Louizos et al.'s
  formulas computed by hand (the u at which a sample leaves 0 and reaches 1, a Monte Carlo estimate);
- the learned mask on a hand-built model where two heads carry the task through a saturated softmax and
  every other head is zero, and on the committed planted IOI model;
- passes, determinism per seed, parameters, the registry and the Hugging Face adapter.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.baselines import circuits as bc
from harness.core import registry
from harness.core.context import RunContext
from harness.methods.subnetwork_probing import (
    BETA, GAMMA, ZETA, SubnetworkProbing, deterministic_mask, expected_l0, hard_concrete, learn_log_alpha,
)
from harness.protocols.circuits import CircuitData, PassCounter
from test_atp_star import saturation_model
from test_circuits_methods import make_data, make_model


def all_heads(model) -> torch.Tensor:
    return torch.ones(model.n_layers, model.n_heads, dtype=torch.bool)


# ------------------------------------------------------------ the mixing primitive
@pytest.mark.parametrize("kind", ["resample", "mean"])
def test_mix_one_is_clean_and_zero_is_replaced_exactly(kind):
    model = make_model(n_layers=3)
    data = make_data(model)
    rep = bc.patch_replacement(model, data, kind)
    L, H = model.n_layers, model.n_heads
    with torch.no_grad():
        clean = model.logits(data.clean)
        replaced = model.run_with_heads_replaced(data.clean, all_heads(model), rep)
        assert torch.equal(model.run_with_heads_mixed(data.clean, torch.ones(L, H, dtype=torch.float64), rep), clean)
        assert torch.equal(model.run_with_heads_mixed(data.clean, torch.zeros(L, H, dtype=torch.float64), rep), replaced)
        # a 0/1 mix is run_with_heads_replaced on the heads at 0
        mask = torch.rand(L, H, generator=torch.Generator().manual_seed(0)) < 0.5
        got = model.run_with_heads_mixed(data.clean, (~mask).double(), rep)
        assert torch.equal(got, model.run_with_heads_replaced(data.clean, mask, rep))


def test_mixing_a_last_layer_head_is_linear_in_its_coefficient():
    """Attention-only, no layer norm: a last-layer head's z reaches the logits linearly and no other head reads
    it, so logits(c) = c logits(clean) + (1 - c) logits(head replaced), an identity the hook does not assume."""
    model = make_model(d_mlp=0, layer_norm=False, n_layers=2, std=0.5)
    data = make_data(model)
    rep = bc.patch_replacement(model, data, "resample")
    L, H = model.n_layers, model.n_heads
    head = torch.zeros(L, H, dtype=torch.bool)
    head[L - 1, 2] = True
    with torch.no_grad():
        clean = model.logits(data.clean)
        replaced = model.run_with_heads_replaced(data.clean, head, rep)
        for c in (0.25, 0.7):
            mix = torch.ones(L, H, dtype=torch.float64)
            mix[L - 1, 2] = c
            got = model.run_with_heads_mixed(data.clean, mix, rep)
            torch.testing.assert_close(got, c * clean + (1 - c) * replaced, rtol=1e-12, atol=1e-12)
        assert not torch.allclose(clean, replaced)  # the head matters


def test_per_prompt_mix_and_position_mode():
    model = make_model(n_layers=2)
    data = make_data(model, n=5)
    rep = bc.patch_replacement(model, data, "resample")
    mix = torch.rand(5, model.n_layers, model.n_heads, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        full = model.run_with_heads_mixed(data.clean, mix, rep)
        for i in range(5):
            row = model.run_with_heads_mixed(data.clean[i : i + 1], mix[i], rep[i : i + 1])
            torch.testing.assert_close(full[i : i + 1], row, rtol=1e-12, atol=1e-12)
        ids = data.metric.token_ids
        at = model.run_with_heads_mixed(data.clean, mix, rep, position=-1, token_ids=ids)
        torch.testing.assert_close(at, full[:, -1][:, ids], rtol=1e-10, atol=1e-12)
        mean = bc.patch_replacement(model, data, "mean")  # [s, L, H, d]: sliced to the position in the last block
        torch.testing.assert_close(model.run_with_heads_mixed(data.clean, mix, mean, position=-1),
                                   model.run_with_heads_mixed(data.clean, mix, mean)[:, -1], rtol=1e-10, atol=1e-12)
    for bad in (torch.ones(3, 3), torch.ones(model.n_layers, model.n_heads, dtype=torch.bool), [[1.0] * 4] * 2):
        with pytest.raises(ValueError, match="mix must be"):
            model.run_with_heads_mixed(data.clean, bad, rep)


def test_mix_gradient_against_finite_differences():
    model = make_model(n_layers=2)
    data = make_data(model, n=4)
    rep = bc.patch_replacement(model, data, "resample")
    mix = torch.rand(4, model.n_layers, model.n_heads, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fn = data.metric.from_last
    ids = data.metric.token_ids
    counted = PassCounter(model)
    value, grad = counted.mix_gradient(data.clean, mix, rep, fn, position=-1, token_ids=ids)
    assert (counted.forward, counted.backward) == (1, 1) and grad.shape == mix.shape
    with torch.no_grad():
        def f(m):
            return float(fn(model.run_with_heads_mixed(data.clean, m, rep, position=-1, token_ids=ids)))

        assert float(value) == pytest.approx(f(mix), rel=1e-12)
        eps = 1e-6
        for idx in [(0, 0, 1), (3, 1, 2), (2, 0, 3)]:
            up, down = mix.clone(), mix.clone()
            up[idx] += eps
            down[idx] -= eps
            assert float(grad[idx]) == pytest.approx((f(up) - f(down)) / (2 * eps), rel=1e-6, abs=1e-9)
    with pytest.raises(ValueError, match="scalar"):
        model.mix_gradient(data.clean, mix, rep, lambda logits: logits.sum(-1))


# ------------------------------------------------------------ hard concrete
def test_hard_concrete_against_louizos_formulas():
    """By hand: s = 1 / (1 + exp(-(ln u - ln(1 - u) + log_alpha) / beta)), m = min(1, max(0, s (zeta - gamma)
    + gamma)); m leaves 0 at u0 = sigmoid(beta ln(-gamma / zeta) - log_alpha) (so P(m != 0) = 1 - u0) and
    reaches 1 at u1 = sigmoid(beta ln((1 - gamma) / (zeta - 1)) - log_alpha)."""
    def sig(x):
        return 1.0 / (1.0 + math.exp(-x))

    for la in (-2.0, 0.0, 0.7, 3.0):
        for u in (0.01, 0.3, 0.5, 0.9, 0.999):
            s = sig((math.log(u) - math.log(1 - u) + la) / BETA)
            want = min(1.0, max(0.0, s * (ZETA - GAMMA) + GAMMA))
            got = float(hard_concrete(torch.tensor(la, dtype=torch.float64), torch.tensor(u, dtype=torch.float64)))
            assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
        u0 = sig(BETA * math.log(-GAMMA / ZETA) - la)
        u1 = sig(BETA * math.log((1 - GAMMA) / (ZETA - 1)) - la)
        t = torch.tensor(la, dtype=torch.float64)
        at = [float(hard_concrete(t, torch.tensor(v, dtype=torch.float64))) for v in (u0 * 0.999, u0 * 1.001, u1 * 0.999, u1 * 1.001)]
        assert at[0] == 0.0 < at[1] and at[2] < 1.0 == at[3]
        assert float(expected_l0(t)) == pytest.approx(1 - u0, rel=1e-12)
        assert float(deterministic_mask(t)) == pytest.approx(min(1.0, max(0.0, sig(la) * (ZETA - GAMMA) + GAMMA)), rel=1e-12)
    # Monte Carlo: the fraction of non-zero samples is the expected L0
    la = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)
    u = torch.rand(200_000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    frac = (hard_concrete(la, u) > 0).double().mean(0)
    torch.testing.assert_close(frac, expected_l0(la), atol=0.005, rtol=0)
    # the gradient of a sample flows into log_alpha where 0 < m < 1 only
    la = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    m = hard_concrete(la, torch.tensor([1e-4, 0.5, 1 - 1e-4], dtype=torch.float64))
    m.sum().backward()
    assert la.grad[0] == 0 and la.grad[1] > 0 and la.grad[2] == 0 and m[0] == 0 and m[2] == 1


# ------------------------------------------------------------ learning the mask
@pytest.mark.parametrize("n_layers", [2, 3])
def test_learned_mask_keeps_the_two_heads_through_a_saturated_softmax(n_layers):
    """Only head A (layer L-2) and head B (layer L-1) have weights; A acts through B's saturated softmax, where
    the gradient at the clean point is 0.  Masking any other head changes nothing, so the L0 term alone drives
    their log_alpha (all equally: Adam's steps); A and B are defended by the KL and must end above them.  A's
    mask matters only where it crosses 1/2 (B's query flips sign there), a narrow band the samples seldom hit,
    so the prompt is repeated: 16 samples per step."""
    model, data = saturation_model(n_layers)
    data = CircuitData(model, data.clean.repeat(8, 1), data.corrupted.repeat(8, 1), data.metric, data.task)
    a, b = (n_layers - 2, 0), (n_layers - 1, 0)
    m = SubnetworkProbing()
    m.setup(RunContext(seed=0, device=torch.device("cpu"), cache_dir="."))
    scores = m.score_heads(model, data)
    others = np.ones_like(scores, dtype=bool)
    others[a] = others[b] = False
    assert min(scores[a], scores[b]) > scores[others].max()
    assert np.ptp(scores[others]) < 1e-9  # nothing but the L0 term moved them
    assert scores[others].max() < 0 < min(scores[a], scores[b])
    np.testing.assert_array_equal(m.select_heads(model, data, scores), ~others)


def test_planted_ioi_cell(tmp_path):
    """On the committed planted IOI model each circuit head's resample ablation removes >= 88% of the logit
    difference (its model card), i.e. nats of KL, and no other head's moves the metric by more than 1.3%: the
    circuit heads must end above every other head and in the method's own circuit."""
    task = registry.get_task("circuits/ioi").create()
    ctx = RunContext(seed=0, device=torch.device("cpu"), cache_dir=tmp_path)
    data = task.build(task.resolve_config({"n_eval": 16}), ctx)
    m = SubnetworkProbing()
    m.setup(ctx)
    out = task.apply(m, data, ctx)
    metrics = task.evaluate(data, out)
    assert metrics["roc_auc"] == 1.0 and metrics["recall"] == 1.0
    assert (out.forward_passes, out.backward_passes) == (2 + 40, 40)


def test_passes_and_determinism(tmp_path):
    model = make_model(n_layers=2)
    data = make_data(model)
    counted = PassCounter(model)
    learn_log_alpha(counted, data, steps=7)
    assert (counted.forward, counted.backward) == (1 + 1 + 7, 7)  # full run, corrupted z, 7 steps
    counted = PassCounter(model)
    learn_log_alpha(counted, data, steps=3, loss="metric", ablation="mean")
    assert (counted.forward, counted.backward) == (2 + 1 + 3, 3)  # full and corrupted metric, mean z, 3 steps

    def run(seed, **params):
        m = SubnetworkProbing.create({"steps": 5, **params})
        m.setup(RunContext(seed=seed, device=torch.device("cpu"), cache_dir=tmp_path))
        return m.score_heads(model, data)

    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))
    for params in ({"loss": "metric"}, {"ablation": "mean"}, {"lam": 0.0}):
        s = run(0, **params)
        assert s.shape == (2, 4) and np.isfinite(s).all()
    with pytest.raises(ValueError, match="loss"):
        run(0, loss="bogus")
    with pytest.raises(ValueError, match="ablation"):
        run(0, ablation="zero")
    with pytest.raises(ValueError, match="steps"):
        run(0, steps=0)


def test_registered_method():
    entry = registry.get_method("subnetwork-probing")
    assert entry.cls is SubnetworkProbing and not entry.baseline
    assert "2104.03514" in entry.cls.description and "Louizos" in entry.cls.description
    assert SubnetworkProbing.create({}).get_params() == {
        "steps": 40, "lr": 0.3, "lam": 0.01, "init": 1.0, "ablation": "resample", "loss": "kl"}


# ------------------------------------------------------------ Hugging Face adapter
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_hugging_face_adapter_mixing(family):
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from harness.models import HFCausalLM
    from test_models_hf_causal import WORDS, make_hf, make_tokenizer

    model = HFCausalLM(make_hf(family=family), make_tokenizer(), model_id=f"tiny-{family}")
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, len(WORDS), (4, 6), generator=g)
    corrupted = torch.randint(0, len(WORDS), (4, 6), generator=g)
    with torch.no_grad():
        rep = model.run_with_cache(corrupted, return_logits=False)[1]
        L, H = model.n_layers, model.n_heads
        assert torch.equal(model.run_with_heads_mixed(clean, torch.ones(L, H, dtype=torch.float64), rep), model.logits(clean))
        assert torch.equal(model.run_with_heads_mixed(clean, torch.zeros(L, H, dtype=torch.float64), rep),
                           model.run_with_heads_replaced(clean, torch.ones(L, H, dtype=torch.bool), rep))
        mix = torch.rand(4, L, H, generator=g, dtype=torch.float64)
        torch.testing.assert_close(model.run_with_heads_mixed(clean, mix, rep, position=-1),
                                   model.run_with_heads_mixed(clean, mix, rep)[:, -1], rtol=1e-10, atol=1e-12)
