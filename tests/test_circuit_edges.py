"""Edge-level circuits: the edge methods (EAP, EAP-IG inputs, ACDC on edges), the edge metrics, the task.

The methods are checked against independent computations on a tiny float64 model: autograd through the
hand-written split forward of ``test_edge_models`` (EAP, EAP-IG) and the sequential ACDC procedure redone with
it, edge by edge.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.baselines import circuit_edges as ce
from harness.errors import HarnessError
from harness.metrics import pr_auc, roc_auc
from harness.models.graph import EdgeGraph
from harness.protocols.circuits import PassCounter
from test_circuits_methods import ctx, make_data, method  # noqa: F401  (ctx is a fixture)
from test_edge_models import _one_thread, manual_forward, patched, tiny  # noqa: F401  (fixtures)


def test_edge_methods_refuse_models_without_split_inputs():
    pytest.importorskip("transformers")
    from harness.models.hf_causal import HFCausalLM
    from test_models_hf_causal import make_hf, make_tokenizer

    model = HFCausalLM(make_hf(), make_tokenizer(), model_id="tiny-gpt2")
    data = make_data(model)
    for run in (lambda: ce.edge_eap_scores(model, data), lambda: ce.edge_eap_ig_scores(model, data),
                lambda: ce.acdc_edges(model, data, 0.02)):
        with pytest.raises(HarnessError, match="split q/k/v inputs; supported: the harness's GPT models"):
            run()


# ------------------------------------------------------------------------ the methods
def manual_gradients(model, data, embed=None) -> np.ndarray:
    """``d metric / d input_v`` of every target by autograd on :func:`manual_forward`, ``[b, s, n_targets, d]``."""
    g = model.edge_graph()
    b, s = data.clean.shape
    probes = {t: torch.zeros(b, s, model.d_model, dtype=torch.float64, requires_grad=True) for t in g.targets}
    extra = {t: (lambda src, p=p: p) for t, p in probes.items()}
    logits, _ = manual_forward(model.model, data.clean, extra, embed)
    grads = torch.autograd.grad(data.metric.from_logits(logits), list(probes.values()))
    return torch.stack(grads, dim=2)


def manual_attribution(model, diff, grads) -> np.ndarray:
    g = model.edge_graph()
    return np.array([float((diff[:, :, u] * grads[:, :, v]).sum()) for u, v in g.edge_index])


def test_edge_eap_equals_autograd_on_the_manual_forward(tiny):
    model, data = tiny
    with torch.no_grad():
        _, clean_src = manual_forward(model.model, data.clean)
        _, corr_src = manual_forward(model.model, data.corrupted)
    names = model.edge_graph().sources
    diff = torch.stack([clean_src[n] - corr_src[n] for n in names], dim=2)
    want = manual_attribution(model, diff, manual_gradients(model, data))
    got = ce.edge_eap_scores(model, data)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert np.abs(got).max() > 1e-3


def test_edge_eap_is_first_order_patching(tiny):
    """At small distances between clean and corrupted, EAP equals the true single-edge patching effect."""
    model, data = tiny
    g = model.edge_graph()
    eps = 1e-4
    run = model.edge_run(data.clean)
    near = run.sources + eps * torch.randn(run.sources.shape, generator=torch.Generator().manual_seed(0),
                                           dtype=torch.float64)
    grads = model.edge_gradients(data.clean, data.metric.from_logits)[1]
    linear = ce.edge_attribution(g, run.sources - near, grads)
    keep = ~torch.eye(g.n_edges, dtype=torch.bool)
    ids = data.metric.token_ids
    with torch.no_grad():
        m_clean = float(data.metric.from_last(model.unembed(run.resid_final[:, -1], ids)))
    actual = m_clean - data.metric.from_last(model.run_with_edges(run, keep, near, token_ids=ids)).numpy()
    assert np.abs(linear).max() > 1e-6
    np.testing.assert_allclose(actual, linear, rtol=0, atol=1e-3 * np.abs(linear).max())


def test_edge_eap_ig_inputs_variant(tiny):
    model, data = tiny
    np.testing.assert_allclose(ce.edge_eap_ig_scores(model, data, steps=1), ce.edge_eap_scores(model, data),
                               rtol=1e-12, atol=1e-14)
    with torch.no_grad():
        _, clean_src = manual_forward(model.model, data.clean)
        _, corr_src = manual_forward(model.model, data.corrupted)
    steps = 3
    grads = sum(manual_gradients(model, data, corr_src["input"] + k / steps * (clean_src["input"] - corr_src["input"]))
                for k in range(1, steps + 1)) / steps
    names = model.edge_graph().sources
    diff = torch.stack([clean_src[n] - corr_src[n] for n in names], dim=2)
    np.testing.assert_allclose(ce.edge_eap_ig_scores(model, data, steps=steps), manual_attribution(model, diff, grads),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("tau", [0.01, 0.1])
def test_acdc_edges_is_sequential_acdc(tiny, tau):
    """The speculative batches give exactly the sequential procedure, itself re-done here edge by edge with
    the hand-written forward."""
    model, data = tiny
    g = model.edge_graph()
    scores, kept = ce.acdc_edges(model, data, tau)
    with torch.no_grad():
        _, corr_src = manual_forward(model.model, data.corrupted)

        def m(removed):
            return float(data.metric.from_logits(manual_forward(model.model, data.clean, patched(corr_src, removed))[0]))

        gap = abs(m([]) - float(data.metric.from_logits(model.logits(data.corrupted))))
        removed, m_cur = [], m([])
        want = np.zeros(g.n_edges)
        for i in reversed(range(g.n_edges)):
            m_new = m(removed + [g.edges[i]])
            want[i] = abs(m_cur - m_new) / gap
            if want[i] < tau:
                removed, m_cur = removed + [g.edges[i]], m_new
    np.testing.assert_allclose(scores, want, rtol=1e-8, atol=1e-10)
    assert g.names(~kept) == sorted(removed, key=g.index)
    assert 0 < kept.sum() < g.n_edges


def test_edge_methods_count_passes_and_derive_node_scores(tiny, ctx):  # noqa: F811
    model, data = tiny
    g = model.edge_graph()
    for name, forward, backward in (("eap-edges", 2, 1), ("eap-ig-edges", 6, 5), ("acdc-edges", None, 0)):
        counter = PassCounter(model)
        m = method(name, ctx)
        heads = m.score_heads(counter, data)
        edges = m.score_edges(counter, data)  # cached: no more passes
        assert edges.shape == (g.n_edges,) and np.isfinite(edges).all()
        np.testing.assert_allclose(heads, g.node_scores(edges)["heads"])
        assert counter.backward == backward
        assert counter.forward == forward if forward else counter.forward > g.n_edges // 8
    acdc = method("acdc-edges", ctx)
    acdc.score_heads(model, data)
    selected = acdc.select_heads(model, data, None)
    assert selected.dtype == bool and np.array_equal(selected, g.head_mask_of(acdc.select_edges(model, data)))
    assert method("eap-edges", ctx).select_heads(model, data, None) is None


# ------------------------------------------------------------------------ metrics
def test_edge_auc_agrees_with_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    g = EdgeGraph(3, 8)
    truth = np.zeros(g.n_edges, dtype=bool)
    truth[rng.choice(g.n_edges, 9, replace=False)] = True
    for scores in (rng.random(g.n_edges), np.round(rng.random(g.n_edges), 1), truth + rng.random(g.n_edges)):
        assert roc_auc(scores, truth) == pytest.approx(sklearn_metrics.roc_auc_score(truth, scores), abs=1e-12)
        assert pr_auc(scores, truth) == pytest.approx(sklearn_metrics.average_precision_score(truth, scores), abs=1e-12)


# ------------------------------------------------------------------------ the task
def test_edge_methods_on_the_planted_ioi_model(tmp_path):
    """A full run: edge methods record edge metrics against the path-patched ground truth, node methods none;
    the leaderboard shows both (missing cells as a dash) and the page the edge f(k) plot."""
    from harness.core.cell import RunSpec
    from harness.core.records import Store
    from harness.core.runner import run
    from harness.report.leaderboard import build_tables, render_markdown

    spec = RunSpec(tasks=["circuits/ioi"], methods=["eap-edges", "eap-ig-edges", "acdc-edges", "eap"], seeds=[0],
                   results_dir=tmp_path / "res", cache_dir=tmp_path / "cache", progress=False,
                   task_overrides={"n_fit": 8, "n_eval": 16})
    assert not run(spec).failed
    records = {r["method"]: r for r in Store(tmp_path / "res").load_all()}
    edge_keys = {"edge_roc_auc", "edge_pr_auc", "edge_cpr", "edge_cmd"}
    assert not edge_keys & set(records["eap"]["metrics"]) and "edge_scores" not in records["eap"]["artifacts"]
    for name in ("eap-edges", "eap-ig-edges", "acdc-edges"):
        m, art = records[name]["metrics"], records[name]["artifacts"]
        assert edge_keys <= set(m), name
        assert m["edge_roc_auc"] > 0.8 and m["roc_auc"] == 1.0, (name, m)
        assert 0 < m["edge_cpr"] < 1 and 0 <= m["edge_cmd"] < 1
        assert len(art["edge_scores"]) == 262 and len(art["edge_truth"]) == 7
        curve = art["edge_faithfulness_curve"]
        assert curve["components"] == "edges" and curve["f"][-1] == 1.0 and curve["n_components"][-1] == 262
    assert records["eap-ig-edges"]["metrics"]["backward_passes"] == 5
    text = render_markdown(build_tables(records.values()))
    assert "edge_roc_auc" in text and "| —" in text
    from harness.report.html import render_html
    from harness.report.plots import write_plots

    paths = write_plots(list(records.values()), tmp_path / "plots")
    edge_plot = "circuits-edge-faithfulness-ioi-planted-ioi.png"
    assert edge_plot in {p.name for p in paths}
    assert edge_plot in render_html(build_tables(records.values()), paths)  # in the circuits section of the page


def test_edge_curve_points_equal_manual_patching(tiny):
    """f(k) of the edge faithfulness curve, recomputed with the hand-written forward for one circuit size."""
    from harness.data.circuits import Split
    from harness.metrics.circuits import top_k_mask
    from harness.tasks.circuits.edges import EdgeCurveEvaluator

    model, data = tiny
    g = model.edge_graph()
    split = Split(data.clean, data.corrupted, data.metric, [], [])
    scores = np.random.default_rng(1).random(g.n_edges)
    curve = EdgeCurveEvaluator(model, split).curve(scores)
    assert curve.f[0] == 0.0 and curve.f[-1] == 1.0 and list(curve.sizes) == [0, 0, 0, 1, 2, 5, 11, 22, 55, 110]
    with torch.no_grad():
        _, corr_src = manual_forward(model.model, data.corrupted)

        def m(edges):
            return float(data.metric.from_logits(manual_forward(model.model, data.clean, patched(corr_src, edges))[0]))

        empty, full = m(list(g.edges)), m([])
        for k, size in ((6, 11), (7, 22), (8, 55)):
            kept = top_k_mask(scores, size)
            assert curve.f[k] == pytest.approx((m(g.names(~kept)) - empty) / (full - empty), abs=1e-9)


def test_planted_ground_truth_edges_hold_on_fresh_prompts():
    """planted-ioi's ground-truth edges, re-verified by path patching on 128 other prompts."""
    from harness.embedded.planted import load_planted
    from harness.tasks.circuits import edge_truth

    model = load_planted("planted-ioi")
    stored = edge_truth.PLANTED_EDGES["planted-ioi"]
    fresh = edge_truth.verify_edges(model, "planted-ioi", n_prompts=128, seed=12345, edges=stored["edges"])
    assert fresh["passed"] and fresh["faithfulness"] > 0.95
    for edge, value in stored["verification"]["effect"].items():
        assert fresh["effect"][edge] == pytest.approx(value, abs=0.05), edge
    assert abs(fresh["largest_other"][1]) < edge_truth.EDGE_THRESHOLD
    truth, source = edge_truth.edge_ground_truth(model)
    assert truth.sum() == 7 and source == "path-patched edges of planted-ioi"
    for name in edge_truth.MECHANISMS:
        entry = edge_truth.PLANTED_EDGES[name]
        assert entry["verification"]["passed"] and set(entry["edges"]) == set(entry["verification"]["effect"])
