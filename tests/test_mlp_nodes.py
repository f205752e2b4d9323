"""MLPs as circuit nodes: the model's MLP hooks, the baselines' MLP scores, the node-level ground truth and metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from harness.baselines.circuit_mlps import mlp_eap_ig_scores, mlp_eap_scores, mlp_patch_effects
from harness.core import registry
from harness.errors import HarnessError, InvalidOutputError
from harness.models.graph import EdgeGraph
from harness.protocols.circuits import PassCounter, has_mlp_scores, validate_mlp_scores
from harness.tasks.circuits.task import node_arrays

from test_circuits_methods import make_data, make_model


@pytest.fixture(scope="module")
def model():
    return make_model(seed=3, n_layers=3)


def test_mlp_outputs_are_what_each_mlp_adds(model):
    data = make_data(model)
    out = model.mlp_outputs(data.clean)
    names = [f"blocks.{l}.hook_resid_{p}" for l in range(3) for p in ("mid", "post")]
    _, cache = model.run_with_cache(data.clean, names=names)
    assert out.shape == (*data.clean.shape, 3, model.d_model)
    for layer in range(3):
        expected = cache[f"blocks.{layer}.hook_resid_post"] - cache[f"blocks.{layer}.hook_resid_mid"]
        assert torch.allclose(out[:, :, layer], expected, atol=1e-12)
        assert expected.abs().max() > 1e-3  # the MLPs do something in this model


def test_replacing_an_mlp_by_its_own_output_changes_nothing(model):
    data = make_data(model)
    own = model.mlp_outputs(data.clean)
    clean = model.logits(data.clean)
    for layer in range(3):
        assert torch.allclose(model.run_with_mlp_replaced(data.clean, layer, own[:, :, layer]), clean, atol=1e-10)


def test_last_mlp_patch_effect_equals_a_run_from_its_output(model):
    """The last MLP's resample effect, recomputed by resuming the run from the edited residual stream."""
    data = make_data(model)
    effects = mlp_patch_effects(model, data, "resample")
    post = "blocks.2.hook_resid_post"
    _, cache = model.run_with_cache(data.clean, names=[post])
    own, corr = model.mlp_outputs(data.clean)[:, :, 2], model.mlp_outputs(data.corrupted)[:, :, 2]
    patched = model.run_from(post, cache[post] - own + corr)
    expected = data.metric.from_logits(model.logits(data.clean)) - data.metric.from_logits(patched)
    assert effects.shape == (3,)
    assert effects[2] == pytest.approx(float(expected.detach()), abs=1e-10)


def test_mlp_mean_patch_uses_the_per_position_mean(model):
    data = make_data(model)
    mean = model.mlp_outputs(torch.cat([data.clean, data.corrupted])).mean(0)
    m_clean = data.metric.from_logits(model.logits(data.clean))
    expected = [float((m_clean - data.metric.from_logits(model.run_with_mlp_replaced(data.clean, l, mean[:, l]))).detach())
                for l in range(3)]
    assert np.allclose(mlp_patch_effects(model, data, "mean"), expected, atol=1e-12)


def test_mlp_gradients_match_finite_differences(model):
    """d metric / d (layer l's MLP output) along a random direction, against a central difference."""
    data = make_data(model)
    out, grad = model.mlp_gradients(data.clean, data.metric.from_logits)
    assert out.shape == grad.shape == (*data.clean.shape, 3, model.d_model)
    g = torch.Generator().manual_seed(0)
    eps = 1e-5
    for layer in range(3):
        v = torch.randn(out[:, :, layer].shape, generator=g, dtype=out.dtype)
        m = [data.metric.from_logits(model.run_with_mlp_replaced(data.clean, layer, out[:, :, layer] + s * eps * v))
             for s in (1, -1)]
        fd = float(((m[0] - m[1]) / (2 * eps)).detach())
        assert float((grad[:, :, layer] * v).sum()) == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_mlp_eap_is_the_linear_estimate_of_the_patch(model):
    data = make_data(model)
    out, grad = model.mlp_gradients(data.clean, data.metric.from_logits)
    with torch.no_grad():
        corr = model.mlp_outputs(data.corrupted)
    expected = ((out - corr) * grad).sum(dim=(0, 1, 3)).numpy()
    assert np.allclose(mlp_eap_scores(model, data), expected, atol=1e-12)


def test_mlp_eap_ig_is_eap_at_one_step_and_complete_at_many(model):
    """steps=1 is EAP; with many steps each MLP's score approaches its resample patching effect (the
    interpolation runs between the corrupted and the clean output of that MLP, the rest computed normally)."""
    data = make_data(model)
    assert np.allclose(mlp_eap_ig_scores(model, data, steps=1), mlp_eap_scores(model, data), atol=1e-12)
    effects = mlp_patch_effects(model, data, "resample")
    coarse, fine = (np.abs(mlp_eap_ig_scores(model, data, steps=s) - effects).max() for s in (2, 256))
    assert fine < 0.02 * np.abs(effects).max() and fine < coarse
    with pytest.raises(ValueError, match="steps must be >= 1"):
        mlp_eap_ig_scores(model, data, steps=0)


def test_attention_only_models_have_no_mlp_nodes():
    model = make_model(d_mlp=0)
    with pytest.raises(HarnessError, match="no MLPs"):
        model.mlp_outputs(make_data(model).clean)


def test_pass_counter_counts_mlp_runs(model):
    data = make_data(model)
    counter = PassCounter(model)
    mlp_eap_scores(counter, data)
    assert (counter.forward, counter.backward) == (2, 1)
    counter = PassCounter(model)
    mlp_patch_effects(counter, data, "resample")
    assert (counter.forward, counter.backward) == (1 + 1 + 3, 0)


@pytest.mark.parametrize("name, expected", [("act-patch-resample", "resample"), ("act-patch-mean", "mean"),
                                            ("eap", "eap"), ("eap-signed", "eap-signed"), ("eap-ig", "eap-ig")])
def test_methods_score_mlps_like_their_heads(model, name, expected):
    data = make_data(model)
    method = registry.get_method(name).cls()
    assert has_mlp_scores(method)
    got = method.score_mlps(model, data)
    if expected in ("resample", "mean"):
        ref = np.abs(mlp_patch_effects(model, data, expected))
    elif expected == "eap-ig":
        ref = np.abs(mlp_eap_ig_scores(model, data, steps=5))
    else:
        ref = mlp_eap_scores(model, data)
        ref = ref if expected == "eap-signed" else np.abs(ref)
    assert np.allclose(got, ref)


def test_edge_methods_sum_their_mlps_outgoing_edges(model):
    data = make_data(model)
    method = registry.get_method("eap-edges").cls()
    edges = method.score_edges(model, data)
    graph = EdgeGraph.of(model)
    names = graph.names(np.ones(graph.n_edges, dtype=bool))
    for layer in range(3):
        outgoing = [i for i, n in enumerate(names) if n.startswith(f"mlp{layer}->")]
        assert method.score_mlps(model, data)[layer] == pytest.approx(np.abs(edges[outgoing]).sum())


def test_random_mlp_scores_leave_head_scores_alone(model):
    method = registry.get_method("random").cls()
    method.seed = 4
    heads = method.score_heads(model, None)
    mlps = method.score_mlps(model, None)
    assert mlps.shape == (3,) and np.array_equal(heads, method.score_heads(model, None))
    assert np.array_equal(heads, np.random.default_rng(4).random(heads.shape))


def test_validate_mlp_scores():
    assert validate_mlp_scores(torch.tensor([1, 2, 3]), 3).dtype == np.float64
    with pytest.raises(InvalidOutputError, match=r"shape \[3\]"):
        validate_mlp_scores(np.zeros(4), 3, "m")
    with pytest.raises(InvalidOutputError, match="NaN or infinite"):
        validate_mlp_scores(np.array([0.0, np.nan, 1.0]), 3, "m")
    with pytest.raises(InvalidOutputError, match="numpy array"):
        validate_mlp_scores([1, 2, 3], 3, "m")


def test_node_metrics_agree_with_sklearn():
    rng = np.random.default_rng(0)
    heads, mlps = rng.random((3, 4)), rng.random(3)
    head_truth = np.zeros((3, 4), dtype=bool)
    head_truth[0, 1] = head_truth[2, 3] = True
    mlp_truth = np.array([False, False, True])
    scores, truth = node_arrays(heads, mlps, head_truth, mlp_truth)
    assert scores.shape == truth.shape == (15,) and truth.sum() == 3
    from harness.metrics import pr_auc, roc_auc
    assert roc_auc(scores, truth) == pytest.approx(roc_auc_score(truth, scores))
    assert pr_auc(scores, truth) == pytest.approx(average_precision_score(truth, scores))


def test_planted_tasks_score_heads_and_mlps_together(tmp_path):
    """On planted-ioi (whose path-patched edges put mlp2 in the circuit: it relays the name mover to the logits)
    methods that score MLPs record node-level metrics and their MLP scores; the others (acdc) record none."""
    from harness.core.cell import RunSpec
    from harness.core.records import Store
    from harness.core.runner import run

    spec = RunSpec(tasks=["circuits/ioi"], methods=["act-patch-resample", "acdc", "random"], seeds=[0],
                   results_dir=tmp_path / "res", cache_dir=tmp_path / "cache", progress=False,
                   task_overrides={"n_fit": 16, "n_eval": 32})
    run(spec)
    records = {r["method"]: r for r in Store(tmp_path / "res").load_all()}
    patch = records["act-patch-resample"]
    assert patch["artifacts"]["mlp_truth"] == [0, 0, 1]
    mlps = np.asarray(patch["artifacts"]["mlp_scores"])
    assert mlps.shape == (3,) and mlps[2] == mlps.max()  # the relay matters most of the three
    scores, truth = node_arrays(np.asarray(patch["artifacts"]["head_scores"]), mlps,
                                np.asarray(patch["artifacts"]["truth"], dtype=bool), np.array([0, 0, 1], dtype=bool))
    assert patch["metrics"]["node_roc_auc"] == pytest.approx(roc_auc_score(truth, scores))
    assert "node_roc_auc" in records["random"]["metrics"]
    assert "node_roc_auc" not in records["acdc"]["metrics"] and "mlp_scores" not in records["acdc"]["artifacts"]
