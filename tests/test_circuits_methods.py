"""Circuit metrics, the circuit baselines and the discrete-SAE method, on tiny random models.

Every metric is checked against an independent computation; every method against
an explicit (slow) computation of what it claims to compute.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.baselines import circuits as bc
from harness.core import registry
from harness.core.context import RunContext
from harness.metrics import faithfulness, pr_auc, roc_auc, roc_curve, set_metrics, top_k_mask
from harness.models.gpt import GPT, GPTConfig, HookedGPT
from harness.models.tokenizer import WordTokenizer
from harness.protocols.circuits import CircuitData, LastTokenMetric, PassCounter
from harness.methods.discrete_sae import unique_positive_codes
from harness.sae.discrete import PlainAdam as _Adam

CIRCUIT_METHODS = ["act-patch-mean", "act-patch-resample", "eap", "eap-ig", "acdc", "random", "discrete-sae", "atp-star",
                   "subnetwork-probing", "activity-diff"]


# ----------------------------------------------------------------- fixtures
def make_model(seed=0, dtype=torch.float64, d_mlp=64, layer_norm=True, n_layers=2, std=0.3) -> HookedGPT:
    """A tiny random GPT with weights large enough that heads matter (GPT-2 init makes every effect ~1e-4)."""
    torch.manual_seed(seed)
    cfg = GPTConfig(n_layers=n_layers, n_heads=4, d_model=32, d_mlp=d_mlp, vocab_size=20, n_ctx=8, layer_norm=layer_norm)
    gpt = GPT(cfg)
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            if ".ln" in name or name.startswith("ln_f"):
                continue  # keep LayerNorm at (1, 0)
            p.normal_(0.0, std)
    gpt = gpt.to(dtype).eval()
    return HookedGPT(gpt, WordTokenizer([f"w{i}" for i in range(cfg.vocab_size)]), model_id="tiny-random")


def make_data(model: HookedGPT, n=12, seq=8, seed=1) -> CircuitData:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, model.config.vocab_size, (n, seq), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1:4] = torch.randint(0, model.config.vocab_size, (n, 3), generator=g)
    metric = LastTokenMetric(torch.tensor([3, 5]), lambda last: last[..., 0] - last[..., 1], "logit_diff")
    return CircuitData(model, clean, corrupted, metric, "toy")


@pytest.fixture
def ctx(tmp_path: Path) -> RunContext:
    return RunContext(seed=0, device=torch.device("cpu"), cache_dir=tmp_path)


@pytest.fixture(scope="module")
def model64() -> HookedGPT:
    return make_model()


@pytest.fixture(scope="module")
def data64(model64) -> CircuitData:
    return make_data(model64)


def method(name: str, ctx: RunContext, **params):
    m = registry.get_method(name).cls.create(params)
    m.setup(ctx)
    return m


# ------------------------------------------------------------------ metrics
def brute_force_auc(scores, truth) -> float:
    s, t = np.ravel(scores), np.ravel(truth)
    pos, neg = s[t], s[~t]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def hand_average_precision(scores, truth) -> float:
    """AP from the sorted list: one threshold per distinct score, high to low; AP = sum (R_t - R_prev) P_t."""
    s, t = np.ravel(scores), np.ravel(truth)
    ap, prev_recall = 0.0, 0.0
    for thr in sorted(set(s.tolist()), reverse=True):
        predicted = s >= thr
        tp = np.sum(predicted & t)
        precision, recall = tp / predicted.sum(), tp / t.sum()
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return float(ap)


@pytest.mark.parametrize("seed", range(6))
def test_roc_auc_matches_brute_force_pairs(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, size=(3, 4)).astype(float)  # many ties
    truth = rng.random((3, 4)) < 0.4
    truth.flat[0], truth.flat[1] = True, False
    assert roc_auc(scores, truth) == pytest.approx(brute_force_auc(scores, truth), abs=1e-12)
    assert roc_auc(scores.ravel(), truth.ravel()) == roc_auc(scores, truth)


@pytest.mark.parametrize("seed", range(4))
def test_roc_curve_area_is_roc_auc(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=(3, 4)).astype(float)  # ties enter as one threshold (a diagonal step)
    truth = rng.random((3, 4)) < 0.4
    truth.flat[0], truth.flat[1] = True, False
    fpr, tpr = roc_curve(scores, truth)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2) == pytest.approx(roc_auc(scores, truth), abs=1e-12)
    # hand example: + - + -  ->  (0,0) (0,.5) (.5,.5) (.5,1) (1,1)
    fpr, tpr = roc_curve([0.9, 0.8, 0.7, 0.6], [True, False, True, False])
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1] and tpr.tolist() == [0, 0.5, 0.5, 1, 1]


def test_roc_auc_extremes_and_errors():
    truth = np.array([[True, False], [False, True]])
    assert roc_auc(np.array([[1.0, 0.0], [0.0, 1.0]]), truth) == 1.0
    assert roc_auc(np.array([[0.0, 1.0], [1.0, 0.0]]), truth) == 0.0
    assert roc_auc(np.ones((2, 2)), truth) == 0.5
    with pytest.raises(ValueError, match="both"):
        roc_auc(np.ones((2, 2)), np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="both"):
        roc_auc(np.ones((2, 2)), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="shape"):
        roc_auc(np.ones((2, 2)), np.ones(4, bool))
    with pytest.raises(ValueError, match="NaN"):
        roc_auc(np.array([np.nan, 1.0]), np.array([True, False]))


def test_pr_auc_hand_example():
    # Sorted: + - + -  -> precision 1 at recall .5, 2/3 at recall 1.
    assert pr_auc([0.9, 0.8, 0.7, 0.6], [True, False, True, False]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # A tie between a positive and a negative at the top enters as one threshold: P = 1/2 at R = 1.
    assert pr_auc([1.0, 1.0], [True, False]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="all False"):
        pr_auc([1.0, 2.0], [False, False])


@pytest.mark.parametrize("seed", range(6))
def test_pr_auc_matches_hand_computation_and_sklearn(seed):
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=(4, 5)).astype(float)
    truth = rng.random((4, 5)) < 0.3
    truth.flat[3] = True
    ap = pr_auc(scores, truth)
    assert ap == pytest.approx(hand_average_precision(scores, truth), abs=1e-12)
    assert ap == pytest.approx(average_precision_score(truth.ravel(), scores.ravel()), abs=1e-12)


def test_set_metrics_against_sets():
    rng = np.random.default_rng(0)
    for _ in range(20):
        sel, tru = rng.random((3, 4)) < 0.4, rng.random((3, 4)) < 0.4
        S = {i for i in range(12) if sel.flat[i]}
        T = {i for i in range(12) if tru.flat[i]}
        p = len(S & T) / len(S) if S else 0.0
        r = len(S & T) / len(T) if T else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        got = set_metrics(sel, tru)
        assert got == pytest.approx({"precision": p, "recall": r, "f1": f})
    # F1 is the harmonic mean of P and R, not an average over heads.
    sel = np.array([True, True, True, True, False, False])
    tru = np.array([True, False, False, False, False, False])
    assert set_metrics(sel, tru) == pytest.approx({"precision": 0.25, "recall": 1.0, "f1": 0.4})
    assert set_metrics(np.zeros(6, bool), tru) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_top_k_mask_deterministic_ties():
    scores = np.array([[1.0, 3.0, 3.0], [3.0, 0.0, 2.0]])
    assert top_k_mask(scores, 2).tolist() == [[False, True, True], [False, False, False]]
    assert top_k_mask(scores, 4).tolist() == [[False, True, True], [True, False, True]]
    assert top_k_mask(scores, 0).sum() == 0 and top_k_mask(scores, 100).all()
    with pytest.raises(ValueError):
        top_k_mask(scores, -1)


def test_faithfulness_formula():
    assert faithfulness(2.0, 1.0, 3.0) == pytest.approx(0.5)
    assert faithfulness(3.0, 1.0, 3.0) == 1.0 and faithfulness(1.0, 1.0, 3.0) == 0.0
    assert faithfulness(-1.0, 0.5, -2.0) == pytest.approx((-1.0 - 0.5) / (-2.0 - 0.5))
    with pytest.raises(ValueError, match="undefined"):
        faithfulness(1.0, 2.0, 2.0)


# ---------------------------------------------------------------- baselines
@pytest.mark.parametrize("kind", ["mean", "resample"])
def test_act_patch_batched_equals_per_head_loop(model64, data64, kind):
    rep = bc.patch_replacement(model64, data64, kind)
    batched = bc.act_patch_batched(model64, data64, rep)
    loop = bc.act_patch_loop(model64, data64, rep)
    assert batched.shape == (2, 4)
    assert np.abs(loop).max() > 1e-3  # heads matter in this model: the comparison is not vacuous
    np.testing.assert_allclose(batched, loop, rtol=1e-9, atol=1e-10)


def test_act_patch_full_vocabulary_metric_in_groups(model64, monkeypatch):
    """A metric over the whole vocabulary (token_ids None, like greater-than's probabilities),
    with the output budget so small that the sets go in several ablate_many calls."""
    data = make_data(model64)
    data.metric = LastTokenMetric(None, lambda last: last.softmax(-1)[..., :10].sum(-1), "p_low")
    rep = bc.patch_replacement(model64, data, "resample")
    want = bc.act_patch_loop(model64, data, rep)
    monkeypatch.setattr(bc, "MAX_OUTPUT_ELEMENTS", 3 * data.clean.shape[0] * 20)  # 3 sets per call
    counted = PassCounter(model64)
    np.testing.assert_allclose(bc.act_patch_batched(counted, data, rep), want, rtol=1e-9, atol=1e-12)
    assert counted.forward == (1 + 1) + (1 + 3) + (1 + 3) + (1 + 2)  # the clean set alone, then 8 heads in 3 + 3 + 2


def test_act_patch_baselines_float32(ctx):
    model = make_model(dtype=torch.float32)
    data = make_data(model)
    for name, kind in (("act-patch-mean", "mean"), ("act-patch-resample", "resample")):
        scores = method(name, ctx).score_heads(model, data)
        loop = bc.act_patch_loop(model, data, bc.patch_replacement(model, data, kind))
        np.testing.assert_allclose(scores, np.abs(loop), rtol=1e-3, atol=1e-4)
        signed = method(name, ctx, absolute=False).score_heads(model, data)
        np.testing.assert_allclose(np.abs(signed), scores)


def explicit_eap(model: HookedGPT, data: CircuitData) -> np.ndarray:
    """EAP by hand: retain_grad on every layer's z of a clean run, backward the metric."""
    zs = {}

    def keep(layer, z):
        z.retain_grad()
        zs[layer] = z
        return z

    with torch.enable_grad():
        metric = data.metric.from_logits(model.model(data.clean, keep))
        metric.backward()
    with torch.no_grad():
        _, z_corr = model.run_with_cache(data.corrupted)
    out = np.zeros((model.n_layers, model.n_heads))
    for layer, z in zs.items():
        out[layer] = ((z.detach() - z_corr[:, :, layer]) * z.grad).sum(dim=(0, 1, 3)).numpy()
    model.model.zero_grad(set_to_none=True)
    return out


def test_eap_equals_explicit_autograd(model64, data64, ctx):
    want = explicit_eap(model64, data64)
    np.testing.assert_allclose(bc.eap_scores(model64, data64), want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(method("eap", ctx).score_heads(model64, data64), np.abs(want), rtol=1e-9, atol=1e-12)
    counted = PassCounter(model64)
    method("eap", ctx).score_heads(counted, data64)
    assert (counted.forward, counted.backward) == (2, 1)


def test_eap_ig_one_step_is_eap(model64, data64, ctx):
    np.testing.assert_allclose(bc.eap_ig_scores(model64, data64, steps=1), bc.eap_scores(model64, data64), rtol=1e-12)
    np.testing.assert_allclose(
        method("eap-ig", ctx, steps=1).score_heads(model64, data64),
        method("eap", ctx).score_heads(model64, data64),
        rtol=1e-12,
    )


def test_eap_ig_counts_its_passes(model64, data64, ctx):
    counted = PassCounter(model64)
    method("eap-ig", ctx, steps=3).score_heads(counted, data64)
    # head_gradients (1 + 1) + corrupted run (1 + 0) + (steps - 1) * L interpolated runs (1 + 1 each)
    assert (counted.forward, counted.backward) == (2 + 2 * 2, 1 + 2 * 2)


def test_eap_ig_linear_case_is_exact():
    """Attention-only, no LayerNorm: the metric is linear in the last layer's z, so for those heads
    EAP, EAP-IG (any steps) and resample patching all agree exactly."""
    model = make_model(d_mlp=0, layer_norm=False)
    data = make_data(model)
    patched = bc.act_patch_batched(model, data, bc.patch_replacement(model, data, "resample"))
    eap = bc.eap_scores(model, data)
    ig = bc.eap_ig_scores(model, data, steps=3)
    np.testing.assert_allclose(eap[-1], patched[-1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ig[-1], patched[-1], rtol=1e-9, atol=1e-12)
    assert not np.allclose(eap[0], patched[0], rtol=1e-3)  # earlier layers are nonlinear: EAP is approximate


def test_eap_ig_completeness(model64, data64):
    """IG's completeness: one layer's head scores add up to the effect of patching the whole layer."""
    steps = 40
    ig = bc.eap_ig_scores(model64, data64, steps=steps)
    z_corr = bc.patch_replacement(model64, data64, "resample")
    with torch.no_grad():
        m_clean = float(data64.metric.from_logits(model64.logits(data64.clean)))
        for layer in range(model64.n_layers):
            mask = torch.zeros(2, 4, dtype=torch.bool)
            mask[layer] = True
            m_layer = float(data64.metric.from_logits(model64.run_with_heads_replaced(data64.clean, mask, z_corr)))
            effect = m_clean - m_layer
            # Right Riemann sum: error O(1/steps) of the path integral.
            assert ig[layer].sum() == pytest.approx(effect, rel=0.05, abs=0.02 * abs(effect) + 1e-9)


def _hooked_z(model: HookedGPT, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's ``z`` ``[b, s, H, d_head]`` read at its ``blocks.{l}.attn.hook_z`` hook point."""
    seen: dict[str, torch.Tensor] = {}
    hooks = {f"blocks.{l}.attn.hook_z": (lambda act, name: seen.__setitem__(name, act.clone()))
             for l in range(model.n_layers)}
    with torch.no_grad():
        model.run_with_hooks(tokens, hooks)
    return [seen[f"blocks.{l}.attn.hook_z"] for l in range(model.n_layers)]


def test_activity_diff_equals_explicit_loop(model64, data64, ctx):
    """Per head: the mean over prompts and positions of ||z_clean - z_corrupt||, summed in Python floats from
    the z read at each layer's hook point; 2 forward passes, no backward."""
    z_clean, z_corr = _hooked_z(model64, data64.clean), _hooked_z(model64, data64.corrupted)
    b, s = data64.clean.shape
    expected = np.zeros((model64.n_layers, model64.n_heads))
    for layer, head in itertools.product(range(model64.n_layers), range(model64.n_heads)):
        total = 0.0
        for i, pos in itertools.product(range(b), range(s)):
            d = (z_clean[layer][i, pos, head] - z_corr[layer][i, pos, head]).tolist()
            total += sum(x * x for x in d) ** 0.5
        expected[layer, head] = total / (b * s)
    counted = PassCounter(model64)
    scores = method("activity-diff", ctx).score_heads(counted, data64)
    np.testing.assert_allclose(scores, expected, rtol=1e-12, atol=1e-15)
    assert (counted.forward, counted.backward) == (2, 0)
    assert (scores > 0).all()  # the corrupted tokens (positions 1-3) reach every head at later positions


def test_activity_diff_sees_activity_not_effect(ctx):
    """A head whose W_O is zero changes nothing downstream (patching it has no effect), yet its activity
    score is what it was: the score reads the head's z, not what the model does with it."""
    model = make_model()
    data = make_data(model)
    before = bc.activity_scores(model, data)
    layer, head, d_head = 1, 2, model.config.d_model // model.n_heads
    with torch.no_grad():
        model.model.blocks[layer].attn.out.weight[:, head * d_head:(head + 1) * d_head] = 0.0
    after = method("activity-diff", ctx).score_heads(model, data)
    effect = bc.act_patch_batched(model, data, bc.patch_replacement(model, data, "resample"))
    assert abs(effect[layer, head]) < 1e-12 and after[layer, head] == pytest.approx(before[layer, head], rel=1e-12)
    assert after[layer, head] > 0.1 * after.max()  # still active, on the scale of the other heads


def test_acdc_scores_and_selection(model64, data64, ctx):
    acdc = method("acdc", ctx, tau=0.05)
    scores = acdc.score_heads(model64, data64)
    kept = acdc.select_heads(model64, data64, scores)
    assert kept.dtype == bool and kept.shape == (2, 4)
    assert np.all(scores[kept] >= 0.05) and np.all(scores[~kept] < 0.05)
    # The first head visited (last layer, head 0) sees the plain single-head patching effect.
    patched = bc.act_patch_batched(model64, data64, bc.patch_replacement(model64, data64, "resample"))
    with torch.no_grad():
        gap = abs(
            float(data64.metric.from_logits(model64.logits(data64.clean)))
            - float(data64.metric.from_logits(model64.logits(data64.corrupted)))
        )
    assert scores[-1, 0] == pytest.approx(abs(patched[-1, 0]) / gap, rel=1e-9)
    assert method("acdc", ctx, tau=0.0).select_heads(model64, data64, scores).all()
    assert not method("acdc", ctx, tau=float("inf")).select_heads(model64, data64, scores).any()


def test_random_is_deterministic_in_seed(model64, data64, tmp_path):
    def run(seed):
        m = method("random", RunContext(seed=seed, device=torch.device("cpu"), cache_dir=tmp_path))
        return m.score_heads(model64, data64)

    np.testing.assert_array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


@pytest.mark.parametrize("name", CIRCUIT_METHODS)
def test_every_method_returns_finite_scores(name, ctx):
    model = make_model(dtype=torch.float32)
    data = make_data(model)
    entry = registry.get_method(name)
    assert entry.family == "circuits" and entry.version == "1"
    assert entry.baseline == (name not in ("discrete-sae", "atp-star", "subnetwork-probing"))
    m = method(name, ctx)
    scores = m.score_heads(model, data)
    assert isinstance(scores, np.ndarray) and scores.shape == (2, 4)
    assert np.issubdtype(scores.dtype, np.floating) and np.isfinite(scores).all()
    sel = m.select_heads(model, data, scores)
    own = name in ("acdc", "subnetwork-probing")  # the methods with their own circuit
    assert sel is None if not own else (sel.dtype == bool and sel.shape == (2, 4))


# ------------------------------------------------------------- discrete SAE
def test_discrete_sae_deterministic_for_fixed_seed(ctx, tmp_path):
    model = make_model(dtype=torch.float32)
    data = make_data(model, n=16)
    a = method("discrete-sae", ctx).score_heads(model, data)
    b = method("discrete-sae", ctx).score_heads(model, data)
    np.testing.assert_array_equal(a, b)
    assert (a >= 0).all() and np.array_equal(a, np.round(a))
    for normalise, source in (("head", "z"), ("unit", "result")):
        m = method("discrete-sae", ctx, normalise=normalise, source=source, epochs=3)
        s = m.score_heads(model, data)
        assert s.shape == (2, 4) and np.isfinite(s).all()
        assert set(m.diagnostics_) >= {"mse", "l0", "codes_used"}
    with pytest.raises(ValueError, match="normalise"):
        method("discrete-sae", ctx, normalise="bogus").score_heads(model, data)


def test_sae_adam_matches_torch_adam():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(a.detach().clone())
    mine, ref = _Adam([a], lr=1e-2), torch.optim.Adam([b], lr=1e-2)
    for _ in range(10):
        x = torch.randn(3)
        mine.step(torch.autograd.grad(((a @ x) ** 2).sum(), [a]))
        ref.zero_grad()
        ((b @ x) ** 2).sum().backward()
        ref.step()
    torch.testing.assert_close(a.detach(), b.detach())


def test_unique_positive_codes():
    # Head (0, 0): positives show codes {1, 2}, negatives {2} -> 1; head (0, 1): {3} vs {3, 4} -> 0.
    pos = torch.tensor([[[1, 3]], [[2, 3]]])  # [n=2, L=1, H=2]
    neg = torch.tensor([[[2, 3]], [[2, 4]]])
    assert unique_positive_codes(pos, neg, 5).tolist() == [[1, 0]]


class _StubModel:
    """Just enough of a HookedModel for the discrete SAE: fixed per-head outputs whose circuit heads
    carry prompt-specific content on clean prompts only (the others look alike on both)."""

    n_layers, n_heads, d_head = 3, 4, 8

    def __init__(self, circuit: np.ndarray, n_prompts: int):
        g = torch.Generator().manual_seed(0)
        self.circuit = torch.as_tensor(circuit)
        self.base = 3.0 * torch.randn(self.n_layers, self.n_heads, self.d_head, generator=g)
        self.content = 3.0 * torch.randn(n_prompts, self.n_layers, self.n_heads, self.d_head, generator=g)
        self.noise = 0.1 * torch.randn(2 * n_prompts, self.n_layers, self.n_heads, self.d_head, generator=g)

    def run_with_cache(self, tokens, return_logits=True):
        n = tokens.shape[0] // 2  # the method stacks [positives; negatives]
        z = self.base.expand(2 * n, -1, -1, -1).clone() + self.noise[: 2 * n]
        z[:n] += self.circuit[..., None] * self.content[tokens[:n, 0]]
        return None, z[:, None].expand(-1, tokens.shape[1], -1, -1, -1)


def test_discrete_sae_finds_heads_that_differ_on_positives(ctx):
    circuit = np.zeros((3, 4), bool)
    circuit[[0, 1, 2], [1, 3, 0]] = True
    n = 10
    clean = torch.arange(n)[:, None].repeat(1, 4)  # token 0 = prompt id
    data = CircuitData(None, clean, clean.clone(), None, "stub")
    scores = method("discrete-sae", ctx, n_examples=n).score_heads(_StubModel(circuit, n), data)
    assert roc_auc(scores, circuit) > 0.9


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: a second intra-op thread only adds synchronisation (and spins
    badly when the 2-core machine is busy); restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
