"""The icl family: reference predictors against closed forms, metrics, probes, the learner, the tasks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.core import registry
from harness.core.context import RunContext
from harness.errors import InvalidOutputError
from harness.metrics.icl import ilwd, implied_weights, normalized_squared_error, r2_score, spd
from harness.protocols.icl import (
    ICLPredictor,
    ICLProblem,
    REFERENCE_PREDICTORS,
    averaging_weights,
    gd_step_size,
    gd_weights,
    knn_predict,
    ols_weights,
    reference_predictions,
    ridge_weights,
)
from harness.embedded.icl_learner import (
    ICLArch,
    ICLModelSpec,
    ICLRecipe,
    InContextRegressor,
    TransformerLearner,
    load_icl_dir,
    sample_regression,
    save_icl_model,
    train_icl_model,
)

PREDICTORS = ("ols", "ridge", "ridge-bayes", "gd-1step", "gd-multistep", "knn-3", "averaging", "zero")


def _data(B=6, k=9, d=4, m=5, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((B, d))
    xs = rng.standard_normal((B, k, d))
    ys = np.einsum("bkd,bd->bk", xs, w) + noise * rng.standard_normal((B, k))
    xq = rng.standard_normal((B, m, d))
    return xs, ys, w, xq


def _method(name, problem=None):
    m = registry.get_method(name).cls()
    m.setup(RunContext(seed=0, device=torch.device("cpu"), cache_dir=Path(".")))
    if problem is not None and hasattr(m, "prepare"):
        m.prepare(problem)
    return m


# ---------------------------------------------------------------- reference predictors
def test_ols_overdetermined_matches_normal_equations_and_recovers_w():
    xs, ys, w, _ = _data(k=9, d=4)
    got = ols_weights(xs, ys)
    for b in range(xs.shape[0]):
        X, y = xs[b], ys[b]
        np.testing.assert_allclose(got[b], np.linalg.solve(X.T @ X, X.T @ y), atol=1e-10)
    np.testing.assert_allclose(got, w, atol=1e-10)  # noiseless: exact


def test_ols_underdetermined_is_min_norm():
    xs, ys, _, _ = _data(k=2, d=5)
    got = ols_weights(xs, ys)
    for b in range(xs.shape[0]):
        X, y = xs[b], ys[b]
        np.testing.assert_allclose(got[b], X.T @ np.linalg.solve(X @ X.T, y), atol=1e-10)
    assert np.all(ols_weights(xs[:, :0], ys[:, :0]) == 0)


def test_ridge_closed_form_and_limits():
    xs, ys, _, _ = _data(k=7, d=4, noise=0.3)
    lam = 0.7
    got = ridge_weights(xs, ys, lam)
    for b in range(xs.shape[0]):
        X, y = xs[b], ys[b]
        np.testing.assert_allclose(got[b], np.linalg.solve(X.T @ X + lam * np.eye(4), X.T @ y), atol=1e-10)
    np.testing.assert_allclose(ridge_weights(xs, ys, 0.0), ols_weights(xs, ys))
    assert np.abs(ridge_weights(xs, ys, 1e9)).max() < 1e-6


def test_gd_one_step_and_many_steps_closed_form():
    xs, ys, _, _ = _data(k=10, d=3)
    eta = 0.02
    b = np.einsum("bkd,bk->bd", xs, ys)
    np.testing.assert_allclose(gd_weights(xs, ys, 1, eta), eta * b, atol=1e-12)
    T = 7
    got = gd_weights(xs, ys, T, eta)
    for i in range(xs.shape[0]):
        A = xs[i].T @ xs[i]
        closed = (np.eye(3) - np.linalg.matrix_power(np.eye(3) - eta * A, T)) @ np.linalg.solve(A, b[i])
        np.testing.assert_allclose(got[i], closed, atol=1e-10)
    # default step (risk-optimal per k); 1/L steps converge to OLS, also when under-determined (min-norm)
    np.testing.assert_allclose(gd_weights(xs, ys, 1), gd_step_size(10, 3) * b, atol=1e-12)
    np.testing.assert_allclose(gd_weights(xs, ys, 5000, "lipschitz"), ols_weights(xs, ys), atol=1e-6)
    xu, yu, _, _ = _data(k=2, d=5)
    np.testing.assert_allclose(gd_weights(xu, yu, 5000, "lipschitz"), ols_weights(xu, yu), atol=1e-6)
    w10 = gd_weights(xs, ys, 10, "lipschitz")
    loss = lambda w: ((np.einsum("bkd,bd->bk", xs, w) - ys) ** 2).sum(-1)  # noqa: E731
    assert np.all(loss(w10) <= loss(gd_weights(xs, ys, 9, "lipschitz")) + 1e-12)


def test_gd_step_size_is_risk_optimal():
    B, k, d = 20000, 6, 4
    xs, ys, w, _ = _data(B=B, k=k, d=d, seed=1)
    b = np.einsum("bkd,bk->bd", xs, ys)
    eta = gd_step_size(k, d)
    risk = [((e * b - w) ** 2).sum(-1).mean() for e in (0.7 * eta, eta, 1.3 * eta)]
    assert risk[1] < risk[0] and risk[1] < risk[2]


def test_averaging_and_knn():
    xs, ys, _, xq = _data(k=8, d=3)
    np.testing.assert_allclose(averaging_weights(xs, ys), np.einsum("bkd,bk->bd", xs, ys) / 8)
    # 3-NN by brute force
    got = knn_predict(xs, ys, xq, 3)
    for b in range(xs.shape[0]):
        for j in range(xq.shape[1]):
            dist = ((xs[b] - xq[b, j]) ** 2).sum(-1)
            np.testing.assert_allclose(got[b, j], ys[b][np.argsort(dist)[:3]].mean())
    # fewer examples than neighbours: all of them; none: 0
    np.testing.assert_allclose(knn_predict(xs[:, :2], ys[:, :2], xq, 3), np.repeat(ys[:, :2].mean(1, keepdims=True), 5, 1))
    assert np.all(knn_predict(xs[:, :0], ys[:, :0], xq, 3) == 0)


@pytest.mark.parametrize("name", PREDICTORS)
def test_predictor_shapes_and_reference_agreement(name):
    xs, ys, _, xq = _data(B=5, k=6, d=3, m=4, noise=0.5)
    problem = ICLProblem(d=3, n_points=6, noise_std=0.5)
    m = _method(name, problem)
    out = m.predict_prefixes(xs, ys, xq)
    assert isinstance(out, np.ndarray) and out.shape == (5, 7, 4) and np.isfinite(out).all()
    ref = {"ridge-bayes": "ridge_bayes", "gd-1step": "gd_1step", "gd-multistep": "gd_multistep", "knn-3": "knn3"}
    np.testing.assert_allclose(out, reference_predictions(ref.get(name, name), problem, xs, ys, xq), atol=1e-12)


def test_ridge_bayes_uses_the_noise_level():
    xs, ys, _, xq = _data(k=6, d=3, noise=0.5)
    m = _method("ridge-bayes", ICLProblem(d=3, n_points=6, noise_std=0.5, prior_std=2.0))
    np.testing.assert_allclose(m.predict(xs, ys, xq), np.einsum("bmd,bd->bm", xq, ridge_weights(xs, ys, 0.0625)))


# ---------------------------------------------------------------- metrics
def test_spd_of_a_predictor_with_itself_is_zero_and_is_dimension_normalised():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((10, 4, 6)), rng.standard_normal((10, 4, 6))
    assert spd(a, a, 5) == 0.0
    assert spd(a, b, 5) == pytest.approx(spd(b, a, 5))
    assert spd(a, b, 5) == pytest.approx(((a - b) ** 2).mean() / 5)
    assert spd(a, b, 5, axis=(0, 2)).shape == (4,)
    assert normalized_squared_error(a, b, 2) == pytest.approx(((a - b) ** 2).mean() / 2)


def test_ilwd_recovers_a_known_linear_map():
    rng = np.random.default_rng(0)
    B, K, m, d = 7, 3, 12, 5
    xq = rng.standard_normal((B, m, d))
    w1, w2 = rng.standard_normal((B, K, d)), rng.standard_normal((B, K, d))
    p1, p2 = np.einsum("bmd,bkd->bkm", xq, w1), np.einsum("bmd,bkd->bkm", xq, w2)
    np.testing.assert_allclose(implied_weights(xq, p1), w1, atol=1e-10)
    np.testing.assert_allclose(implied_weights(xq[:, None].repeat(K, 1), p1), w1, atol=1e-10)
    assert ilwd(implied_weights(xq, p1), implied_weights(xq, p2)) == pytest.approx(((w1 - w2) ** 2).sum(-1).mean() / d)
    assert ilwd(w1, w1) == 0.0
    # for linear predictors with x ~ N(0, I), SPD estimates ILWD
    xq_big = rng.standard_normal((B, 20000, d))
    s = spd(np.einsum("bmd,bkd->bkm", xq_big, w1), np.einsum("bmd,bkd->bkm", xq_big, w2), d)
    assert s == pytest.approx(ilwd(w1, w2), rel=0.05)
    with pytest.raises(ValueError):
        implied_weights(xq[:, :3], p1[..., :3])


def test_r2_score_pooled():
    from sklearn.metrics import r2_score as sk_r2

    rng = np.random.default_rng(0)
    T = rng.standard_normal((200, 3)) * np.array([1.0, 3.0, 0.5])
    P = T + 0.3 * rng.standard_normal(T.shape)
    assert r2_score(T, T) == 1.0
    assert r2_score(T, np.broadcast_to(T.mean(0), T.shape)) == pytest.approx(0.0, abs=1e-12)
    assert r2_score(T, P) == pytest.approx(sk_r2(T, P, multioutput="variance_weighted"))


# ---------------------------------------------------------------- probes
@pytest.mark.parametrize("name,min_r2", [("ridge-probe", 0.99), ("mlp-probe", 0.95)])
def test_probes_decode_a_linearly_embedded_target(name, min_r2):
    rng = np.random.default_rng(0)
    N, t, h = 1500, 5, 48
    T = rng.standard_normal((N, t))
    A = rng.standard_normal((t, h))
    H = T @ A + 0.05 * rng.standard_normal((N, h)) + 3.0  # offset: probes must standardise / fit intercepts
    probe = _method(name)
    out = probe.fit(H[:1000], T[:1000])
    assert out is probe
    pred = probe.predict(H[1000:])
    assert isinstance(pred, np.ndarray) and pred.shape == (500, t)
    assert r2_score(T[1000:], pred) > min_r2


def test_mean_probe_is_the_floor():
    rng = np.random.default_rng(0)
    H, T = rng.standard_normal((400, 8)), rng.standard_normal((400, 3))
    probe = _method("mean-probe").fit(H[:300], T[:300])
    assert abs(r2_score(T[300:], probe.predict(H[300:]))) < 0.05


# ---------------------------------------------------------------- the in-context learner
@pytest.mark.parametrize("encoding", ["paired", "interleaved"])
def test_learner_prefix_queries_equal_separate_sequences(encoding):
    torch.manual_seed(0)
    model = InContextRegressor(ICLArch(d=3, n_points=5, n_layers=2, d_model=32, d_mlp=64, encoding=encoding))
    for p in model.parameters():
        p.data += 0.1 * torch.randn_like(p)
    xs, ys, _ = sample_regression(3, 5, 3, 0.0, torch.Generator().manual_seed(0))
    xq = torch.randn(3, 4, 3)
    with torch.no_grad():
        P = model.predict_prefixes(xs, ys, xq)
        for k in range(6):
            for j in range(4):
                single = model(torch.cat([xs[:, :k], xq[:, j : j + 1]], 1), ys[:, :k])[:, -1]
                torch.testing.assert_close(single, P[:, k, j], atol=1e-5, rtol=1e-5)
        # causality: y_2 never reaches predictions for points 0..2
        ys2 = ys.clone()
        ys2[:, 2] += 10
        a, b = model(xs, ys[:, :-1]), model(xs, ys2[:, :-1])
        torch.testing.assert_close(a[:, :3], b[:, :3])
        assert (a[:, 3:] - b[:, 3:]).abs().max() > 1e-4


def test_smoke_training_is_deterministic_and_round_trips(tmp_path):
    spec = ICLModelSpec("tiny", ICLArch(d=2, n_points=3, n_layers=1, n_heads=1, d_model=16, d_mlp=32),
                        ICLRecipe(steps=15, batch_size=8, warmup=3, eval_tasks=50))
    m1, card = train_icl_model(spec)
    m2, _ = train_icl_model(spec)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    for key in ("training_steps", "training_seconds", "final_error_per_k", "recipe", "arch"):
        assert key in card
    assert len(card["final_error_per_k"]) == 4
    save_icl_model(m1, card, tmp_path / "tiny")
    m3, card3 = load_icl_dir(tmp_path / "tiny")
    assert card3["final_error_per_k"] == card["final_error_per_k"]
    xs, ys, _ = sample_regression(4, 4, 2, 0.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(m1(xs, ys[:, :-1]), m3(xs, ys[:, :-1]))
    learner = TransformerLearner(m3, card3)
    out = _method("icl-transformer", ICLProblem(d=2, n_points=3, learner=learner)).predict_prefixes(
        xs.numpy()[:, :3].astype(np.float64), ys.numpy()[:, :3].astype(np.float64), xs.numpy()[:, :2].astype(np.float64))
    assert isinstance(out, np.ndarray) and out.shape == (4, 4, 2) and out.dtype == np.float64


# ---------------------------------------------------------------- tasks
def _ctx(tmp_path, seed=0):
    return RunContext(seed=seed, device=torch.device("cpu"), cache_dir=tmp_path / "cache")


def test_predictor_task_end_to_end_and_deterministic(tmp_path):
    task = registry.get_task("icl/linear-d5").create()
    config = task.resolve_config({"n_contexts": 30})
    data = task.build(config, _ctx(tmp_path, 0))
    again = task.build(config, _ctx(tmp_path, 0))
    other = task.build(config, _ctx(tmp_path, 1))
    np.testing.assert_array_equal(data.xs, again.xs)
    np.testing.assert_array_equal(data.refs["transformer"], again.refs["transformer"])
    assert not np.array_equal(data.xs, other.xs)
    assert set(data.refs) == {"transformer", *REFERENCE_PREDICTORS}

    for name in ("ols", "icl-transformer", "zero"):
        m = _method(name)
        metrics = task.check_metrics(task.evaluate(data, task.apply(m, data, _ctx(tmp_path))))
        assert {s.name for s in task.metrics} <= set(metrics)
        if name == "ols":
            assert metrics["spd_ols"] == 0.0 and metrics["ilwd_ols"] < 1e-20
            assert metrics["err_final"] < 1e-12  # noiseless, k > d
        if name == "icl-transformer":
            assert metrics["spd_transformer"] == 0.0
        if name == "zero":
            assert 0.6 < metrics["err_final"] < 1.5


class _BadShape(ICLPredictor):
    name = "bad-shape"

    def predict_prefixes(self, xs, ys, x_query):
        return np.zeros((xs.shape[0], xs.shape[1], x_query.shape[1]))


class _NaN(ICLPredictor):
    name = "nan"

    def predict_prefixes(self, xs, ys, x_query):
        return np.full((xs.shape[0], xs.shape[1] + 1, x_query.shape[1]), np.nan)


class _List(ICLPredictor):
    name = "list"

    def predict_prefixes(self, xs, ys, x_query):
        return np.zeros((xs.shape[0], xs.shape[1] + 1, x_query.shape[1])).tolist()


@pytest.mark.parametrize("cls,msg", [(_BadShape, "shape"), (_NaN, "non-finite"), (_List, "numpy array")])
def test_predictor_task_rejects_invalid_outputs(tmp_path, cls, msg):
    task = registry.get_task("icl/linear-d5").create()
    data = task.build(task.resolve_config({"n_contexts": 10}), _ctx(tmp_path, 0))
    with pytest.raises(InvalidOutputError, match=msg):
        task.apply(cls(), data, _ctx(tmp_path))


def test_probe_task_end_to_end(tmp_path):
    task = registry.get_task("icl/probe-d5").create()
    config = task.resolve_config({"n_train": 300, "n_test": 150})
    data = task.build(config, _ctx(tmp_path, 0))
    np.testing.assert_array_equal(data.targets["w"], task.build(config, _ctx(tmp_path, 0)).targets["w"])
    out = task.apply(_method("ridge-probe"), data, _ctx(tmp_path))
    metrics = task.check_metrics(task.evaluate(data, out))
    assert {s.name for s in task.metrics} <= set(metrics)
    assert metrics["r2_w_bayes"] == pytest.approx(1.0)  # noiseless, n > d: w is determined
    assert metrics["r2_w_layer0"] < 0.2  # the read-in of the query token knows nothing about w


def test_plots_and_summary(tmp_path):
    from harness.tasks.icl.plots import plot_icl, summarize_icl

    recs = []
    for seed in (0, 1):
        for method, scale in (("icl-transformer", 0.5), ("ols", 0.0), ("zero", 1.0)):
            metrics = {f"err_k{k}": scale * (1 - k / 4) for k in range(4)}
            metrics.update({f"spd_transformer_k{k}": abs(scale - 0.5) for k in range(4)})
            metrics.update(err_final=0.1 * scale, err_mean=0.2 * scale)
            for r in ("transformer", *REFERENCE_PREDICTORS):
                metrics[f"spd_{r}"] = metrics[f"ilwd_{r}"] = 0.1 + scale
            recs.append({"task": "icl/linear-d5", "method": method, "seed": seed, "status": "ok", "metrics": metrics})
        metrics = {"r2_w_best": 0.9, "r2_xty_best": 0.9}
        for t in ("w", "xty"):
            for layer in range(3):
                metrics[f"r2_{t}_layer{layer}"] = layer / 2
                metrics[f"r2_{t}_layer{layer}_control"] = 0.1
        recs.append({"task": "icl/probe-d5", "method": "ridge-probe", "seed": seed, "status": "ok", "metrics": metrics})
    paths = plot_icl(recs, tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["icl-linear-d5-curves.png", "icl-probe-d5-probes.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    text = summarize_icl(recs)
    assert "icl/linear-d5" in text and "icl/probe-d5" in text and "closest" in text


def test_icl_models_are_in_the_model_builder_registry(capsys, monkeypatch):
    from harness.cli import main
    from harness.embedded import icl_learner, registry

    def no_training(*args, **kwargs):
        raise AssertionError("a build without --force retrained a committed model (its recipe changed?)")

    names = ["icl-d5", "icl-d8-noisy", "icl-d5-long", "icl-d8-noisy-long"]
    for name in names:  # never overwrite the committed weights here
        monkeypatch.setattr(icl_learner.MODELS[name], "build", no_training)
    assert registry.get("icl-d5").family == "icl"
    assert [m.name for m in registry.models() if m.family == "icl"] == names
    # the committed models match their recipes, so a build without --force trains nothing
    paths = registry.build(names)
    assert [p.name for p in paths] == names
    assert "up to date" in capsys.readouterr().out
    assert main(["models", "list"]) == 0 and "icl-d8-noisy" in capsys.readouterr().out