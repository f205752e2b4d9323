"""Known-truth reconstruction tasks: the dictionary metrics against independent computations, the generator
(determinism, frequencies, groups, bad parameters), the decoder directions read through the protocol, and the
task end to end (an SAE whose decoder is the truth scores 1; gradient-aware methods are no cells)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from harness.core import registry
from harness.core.cell import RunSpec, expand
from harness.core.context import RunContext
from harness.errors import ConfigError
from harness.metrics.dictionary import (
    abs_cosine_matrix,
    active_set_precision_recall,
    match_latents,
    mmcs,
    recovered_fraction,
)
from harness.protocols.reconstruction import ReconstructionMethod, SparseCodes, decoder_directions
from harness.sae import SAE, TopKConfig
from harness.tasks.reconstruction.synthetic import SyntheticConfig, frequencies, generate

TINY = SyntheticConfig(d=16, n_features=48, mean_active=3.0, n_groups=4, group_size=3, n_train=512, n_test=128)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ctx(seed: int = 0) -> RunContext:
    return RunContext(seed=seed, device=torch.device("cpu"), cache_dir=Path("/nonexistent"))


def method(name: str, seed: int = 0, **params):
    m = registry.get_method(name).cls.create(params)
    m.setup(ctx(seed))
    return m


# ====================================================================== metrics
def test_the_true_dictionary_scores_one_under_permutation_sign_and_scale():
    D = torch.randn(40, 12, generator=torch.Generator().manual_seed(0))
    learned = -3.0 * D[torch.randperm(40, generator=torch.Generator().manual_seed(1))]
    learned = torch.cat([learned, torch.zeros(5, 12)])  # dead (zero) rows change nothing
    assert mmcs(D, learned) == pytest.approx(1.0, abs=1e-12)
    assert recovered_fraction(D, learned) == 1.0
    feature, cos = match_latents(D, learned[:40])
    assert torch.allclose(cos, torch.ones(40, dtype=torch.float64))
    assert torch.equal(D[feature], D[torch.randperm(40, generator=torch.Generator().manual_seed(1))])


@pytest.mark.parametrize("d, n_latents", [(16, 64), (6, 64)])
def test_a_random_dictionary_scores_what_the_distribution_of_the_max_cosine_says(d, n_latents):
    """For i.i.d. uniform unit vectors, cos^2 ~ Beta(1/2, (d-1)/2); given a true feature the |cos| with n
    independent random rows are independent, so their max has CDF F^n: E[max] = int_0^1 (1 - F(t)^n) dt
    (0.605 for d = 16, n = 64; 0.866 for d = 6) and P(max >= 0.9) = 1 - F(0.9)^n (0.0001; 0.309)."""
    n_features = 4000
    beta = stats.beta(0.5, (d - 1) / 2)
    expected = integrate.quad(lambda t: 1 - beta.cdf(t * t) ** n_latents, 0, 1)[0]
    p_recovered = 1 - beta.cdf(0.81) ** n_latents
    rng = np.random.default_rng(7)  # another generator than the harness's
    draws = [(rng.standard_normal((n_features, d)), rng.standard_normal((n_latents, d))) for _ in range(3)]
    assert np.mean([mmcs(t, w) for t, w in draws]) == pytest.approx(expected, abs=0.01)
    assert np.mean([recovered_fraction(t, w) for t, w in draws]) == pytest.approx(p_recovered, abs=0.02)


def test_recovered_fraction_counts_features_at_cosine_0_9():
    true = torch.eye(3, dtype=torch.float64)
    learned = torch.tensor([[0.95, math.sqrt(1 - 0.95**2), 0.0],   # |cos| 0.95 with e0
                            [0.0, 0.85, math.sqrt(1 - 0.85**2)]],  # 0.85 with e1 (and 0.527 with e2)
                           dtype=torch.float64)
    assert recovered_fraction(true, learned) == pytest.approx(1 / 3)
    assert mmcs(true, learned) == pytest.approx((0.95 + 0.85 + math.sqrt(1 - 0.85**2)) / 3)
    assert torch.allclose(abs_cosine_matrix(true, learned), learned.t().abs())


def test_active_set_precision_recall_by_hand():
    # 3 features, 4 latents standing for features 0, 0, 1, 2 (a split feature keeps both latents)
    feature = torch.tensor([0, 0, 1, 2])
    true_active = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 0]], dtype=torch.bool)
    dense = torch.tensor([[1.0, 0.5, 0.0, 0.0],    # latents 0, 1 -> feature 0 (active): 2 hits; feature 2 missed
                          [0.0, 0.0, 0.0, 2.0],    # latent 3 -> feature 2 (inactive): 0 hits; feature 1 missed
                          [0.0, 0.0, 3.0, 0.0]])   # latent 2 -> feature 1 (inactive)
    precision, recall = active_set_precision_recall(dense, feature, true_active)
    assert precision == pytest.approx(2 / 4) and recall == pytest.approx(1 / 3)
    sparse = SparseCodes(torch.tensor([[0, 1], [3, 3], [2, 0]]), torch.tensor([[1.0, 0.5], [1.0, 1.0], [3.0, 0.0]]), 4)
    assert active_set_precision_recall(sparse, feature, true_active, chunk_rows=2) == (precision, recall)


# ====================================================================== generator
def test_generator_is_deterministic_per_seed_and_seeds_differ():
    a, b, c = generate(TINY, 0), generate(TINY, 0), generate(TINY, 1)
    for x, y in zip(a[:2] + (a[2].dictionary, a[2].test_active), b[:2] + (b[2].dictionary, b[2].test_active)):
        assert torch.equal(x, y)
    assert not torch.equal(a[2].dictionary, c[2].dictionary) and not torch.equal(a[0], c[0])
    # the held-out split does not depend on n_train
    longer = generate(SyntheticConfig(**{**TINY.__dict__, "n_train": 700}), 0)
    assert torch.equal(longer[1], a[1]) and longer[0].shape == (700, 16)


def test_generator_stream_is_not_the_plain_seed():
    """A method seeding a generator with the cell seed (random-dict, every SAE's init) must not draw the truth."""
    D = generate(TINY, 0)[2].dictionary
    plain = torch.randn(TINY.n_features, TINY.d, generator=torch.Generator().manual_seed(0))
    assert mmcs(D, plain) < 0.9


def test_power_law_frequencies_are_kept_with_correlated_groups():
    cfg = SyntheticConfig(d=8, n_features=40, mean_active=4.0, power_law=1.0, n_groups=5, group_size=4,
                          group_correlation=0.9, n_train=1, n_test=40000)
    p = frequencies(cfg)
    assert float(p.sum()) == pytest.approx(4.0) and torch.all(p[:-1] > p[1:])
    assert float(p[0] / p[9]) == pytest.approx(10.0)  # (i + 1)^-1
    truth = generate(cfg, 3)[2]
    rate = truth.test_active.double().mean(0)
    assert torch.all((rate - p).abs() <= 4.5 * torch.sqrt(p * (1 - p) / 40000))  # the copula keeps the marginals
    assert float(truth.test_active.sum(1).double().mean()) == pytest.approx(4.0, rel=0.03)


def test_group_members_co_fire_and_no_one_else_does():
    cfg = SyntheticConfig(d=8, n_features=40, mean_active=4.0, power_law=0.0, n_groups=5, group_size=4,
                          group_correlation=0.9, n_train=1, n_test=40000)
    active = generate(cfg, 4)[2].test_active.double()
    corr = torch.corrcoef(active.t()) - torch.eye(40, dtype=torch.float64)
    partners = (corr > 0.2).sum(1)
    assert sorted(partners.tolist()) == [0] * 20 + [3] * 20  # 5 groups of 4 co-fire; the others are independent
    assert corr[partners == 0].abs().max() < 0.05


def test_activations_are_the_active_directions_times_their_magnitudes():
    cfg = SyntheticConfig(d=32, n_features=64, mean_active=3.0, n_groups=4, group_size=4, n_train=1, n_test=300)
    _, test, truth = generate(cfg, 5)
    D = truth.dictionary.double()
    for i in range(test.shape[0]):
        on = truth.test_active[i].nonzero().flatten()
        if on.numel() == 0:
            assert test[i].abs().max() == 0
            continue
        coef = torch.linalg.lstsq(D[on].t(), test[i].double()[:, None]).solution[:, 0]
        assert torch.allclose(coef @ D[on], test[i].double(), atol=1e-5)  # no noise: exactly in the span
        assert coef.min() > 0.5 - 1e-4 and coef.max() < 1.5 + 1e-4
    noisy = generate(SyntheticConfig(**{**cfg.__dict__, "noise_std": 0.1}), 5)
    assert torch.equal(noisy[2].test_active[:10], truth.test_active[:10])  # noise leaves the features alone
    assert 0.05 < float((noisy[1][0] - test[0]).std()) < 0.2


@pytest.mark.parametrize("changes, fix", [
    ({"mean_active": 40.0}, "lower mean_active or power_law"),
    ({"mean_active": 200.0}, "mean_active must lie in"),
    ({"n_groups": 20, "group_size": 3}, "lower n_groups or group_size"),
    ({"group_size": 1}, "group_size must be >= 2"),
    ({"group_correlation": 1.5}, "group_correlation must lie in"),
    ({"noise_std": -0.1}, "noise_std must be >= 0"),
    ({"magnitude_min": 2.0}, "magnitude_min <= magnitude_max"),
    ({"n_train": 0}, "n_train must be >= 1"),
])
def test_bad_generator_parameters_name_the_fix(changes, fix):
    task = registry.get_task("reconstruction/synthetic-64").create()
    config = task.resolve_config({**TINY.__dict__, **changes})
    with pytest.raises(ConfigError, match=fix):
        task.preflight(config, ctx())
    with pytest.raises(ConfigError, match=fix):
        generate(config, 0)


# ====================================================================== decoder directions through the protocol
def test_decoder_directions_are_the_methods_dictionaries():
    X = generate(TINY, 0)[0]
    pca = method("pca", k=4).fit(X)
    assert torch.allclose(decoder_directions(pca, pca.encode(X[:3]), 16), pca.components_.t(), atol=1e-5)
    ident = method("identity").fit(X)
    assert torch.allclose(decoder_directions(ident, ident.encode(X[:3]), 16), torch.eye(16))
    rd = method("random-dict", k=3).fit(X)
    assert torch.allclose(decoder_directions(rd, rd.encode(X[:3]), 16, chunk=7), rd.atoms_, atol=1e-6)
    topk = method("topk-sae", k=3, epochs=1).fit(X)
    assert torch.allclose(decoder_directions(topk, topk.encode(X[:3]), 16), topk.sae.W_dec, atol=1e-5)


# ====================================================================== the task
def _truth_sae(tmp_path: Path, D: torch.Tensor, k: int) -> str:
    """An SAE whose decoder (and encoder) is the true dictionary, saved for ``user-sae``."""
    n, d = D.shape
    SAE(D.clone(), torch.zeros(n), D.clone(), torch.zeros(d), TopKConfig(k=k)).save(tmp_path / "truth")
    return str(tmp_path / "truth")


def test_an_sae_whose_decoder_is_the_truth_scores_one(tmp_path):
    task = registry.get_task("reconstruction/synthetic-64").create()
    config = task.resolve_config(TINY.__dict__)
    data = task.build(config, ctx(0))
    assert data.source is None and data.train_grads is None
    m = method("user-sae", path=_truth_sae(tmp_path, data.truth.dictionary, 3))
    metrics = task.check_metrics(task.evaluate(data, task.apply(m, data, ctx(0))))
    assert metrics["mmcs"] == pytest.approx(1.0, abs=1e-6) and metrics["recovered_fraction"] == 1.0
    assert {s.name for s in task.metrics} == set(metrics) and "loss_recovered" not in metrics
    assert 0 < metrics["active_precision"] <= 1 and 0 < metrics["active_recall"] <= 1
    rd = method("random-dict").fit(data.train)
    random_metrics = task.evaluate(data, task.apply(rd, data, ctx(0)))
    assert random_metrics["mmcs"] < 0.66 and random_metrics["recovered_fraction"] < 0.05  # theory: 0.605, 0.0001


class _Oracle(ReconstructionMethod):
    """Codes = the true coefficients (least squares on the truly active features), decode = the truth."""

    name, version, description = "oracle", "1", "knows the dictionary"

    def __init__(self, D=None, active=None):
        self.D, self.active = D, active

    def fit(self, acts):
        return self

    def encode(self, acts):
        codes = torch.zeros(acts.shape[0], self.D.shape[0])
        for i in range(acts.shape[0]):
            on = self.active[i].nonzero().flatten()
            if on.numel():
                codes[i, on] = torch.linalg.lstsq(self.D[on].t(), acts[i][:, None]).solution[:, 0]
        return codes

    def decode(self, codes):
        return codes @ self.D


def test_the_true_codes_score_perfect_precision_and_recall():
    task = registry.get_task("reconstruction/synthetic-64").create()
    data = task.build(task.resolve_config({**TINY.__dict__, "n_test": 64}), ctx(2))
    oracle = _Oracle(data.truth.dictionary, data.truth.test_active)
    metrics = task.evaluate(data, task.apply(oracle, data, ctx(2)))
    assert metrics["mmcs"] == pytest.approx(1.0, abs=1e-6) and metrics["explained_variance"] == pytest.approx(1, abs=1e-5)
    assert metrics["active_precision"] == 1.0 and metrics["active_recall"] == 1.0
    assert metrics["l0"] == pytest.approx(float(data.truth.test_active.sum(1).double().mean()))


def test_gradient_aware_methods_are_no_cells_of_the_known_truth_tasks():
    cells = expand(RunSpec(tasks=["reconstruction/synthetic-64"], seeds=[0], progress=False))
    names = {c.method_entry.name for c in cells}
    assert "g-sae" not in names and {"topk-sae", "jumprelu-sae", "batchtopk-sae", "matryoshka-sae", "pca"} <= names
    with pytest.raises(ConfigError, match="runs on none of the selected tasks.*downstream-loss gradients"):
        expand(RunSpec(tasks=["reconstruction/synthetic-64"], methods=["g-sae"], seeds=[0], progress=False))
    both = expand(RunSpec(tasks=["reconstruction/synthetic-64", "reconstruction/embedded-resid"], methods=["g-sae"],
                          seeds=[0], progress=False))
    assert [c.task_entry.name for c in both] == ["reconstruction/embedded-resid"]


def test_registered_known_truth_tasks():
    for name, d, n in (("synthetic-64", 64, 256), ("synthetic-128", 128, 512)):
        entry = registry.get_task(f"reconstruction/{name}")
        task = entry.create()
        config = task.default_config()
        assert entry.in_default_suite and task.main_metric == "mmcs"
        assert (config.d, config.n_features) == (d, n) and config.n_features > config.d
        assert config.mean_active == d // 12  # the TopK family's default k


def test_bad_generator_parameters_are_one_line_before_any_work(capsys, tmp_path):
    from harness.cli import main

    code = main(["run", "--tasks", "reconstruction/synthetic-64", "--methods", "pca", "--seeds", "0", "--no-progress",
                 "--results-dir", str(tmp_path / "r"), "--set", "mean_active=40.0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "lower mean_active or power_law" in err[0]
    assert not list((tmp_path / "r").rglob("*.json"))


def test_selftest_runs_every_method_on_a_known_truth_task(tmp_path):
    from harness.core.selftest import selftest

    results = selftest("cpu", tasks=["reconstruction/synthetic-64"], cache_dir=tmp_path)
    names = {r.method for r in results}
    assert {"jumprelu-sae", "batchtopk-sae", "matryoshka-sae", "topk-sae", "pca", "identity"} <= names
    assert "g-sae" not in names and [r.line() for r in results if not r.ok] == []


def test_newer_architectures_join_the_default_suite_on_the_known_truth_tasks_only():
    from harness.core.cell import RunSpec, expand

    cells = expand(RunSpec(tasks=None, methods=None, seeds=[0]))
    newer = {"jumprelu-sae", "batchtopk-sae", "matryoshka-sae"}
    tasks_of = {m: {c.task_entry.name for c in cells if c.method_entry.name == m} for m in newer}
    for method, tasks in tasks_of.items():
        assert tasks == {"reconstruction/synthetic-64", "reconstruction/synthetic-128"}, (method, tasks)
    assert "reconstruction/embedded-resid" in {c.task_entry.name for c in cells if c.method_entry.name == "topk-sae"}
    named = expand(RunSpec(tasks=["reconstruction/embedded-resid"], methods=["matryoshka-sae"], seeds=[0]))
    assert [c.method_entry.name for c in named] == ["matryoshka-sae"]  # named, it runs anywhere
