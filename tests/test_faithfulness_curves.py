"""MIB faithfulness curves of the circuits family: the pure metrics (sizes, CPR, CMD) against hand
computations, the task's curve on the planted IOI model, the plot and the cell identity they leave alone."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.metrics import MIB_KS, cmd, cpr, faithfulness_curve_sizes, top_k_mask, top_k_masks


# ------------------------------------------------------------------- metrics
def test_cpr_cmd_hand_computation():
    # x = k / 100 = 0.1, 0.5, 1.0; f = 0.2, 0.6, 1.0
    # CPR = 0.4 * (0.2 + 0.6) / 2 + 0.5 * (0.6 + 1.0) / 2 = 0.16 + 0.40 = 0.56
    # CMD = 0.4 * (0.8 + 0.4) / 2 + 0.5 * (0.4 + 0.0) / 2 = 0.24 + 0.10 = 0.34
    assert cpr([10, 50, 100], [0.2, 0.6, 1.0]) == pytest.approx(0.56, abs=1e-12)
    assert cmd([10, 50, 100], [0.2, 0.6, 1.0]) == pytest.approx(0.34, abs=1e-12)


def test_cpr_cmd_on_mib_ks():
    # the axis runs from x = 0.001 to x = 1: a perfect curve gets 0.999, not 1
    ones, zeros = np.ones(10), np.zeros(10)
    assert cpr(MIB_KS, ones) == pytest.approx(0.999) and cmd(MIB_KS, ones) == 0.0
    assert cpr(MIB_KS, zeros) == 0.0 and cmd(MIB_KS, zeros) == pytest.approx(0.999)
    # 12 components: f = 0 up to 5% (empty circuits), 0 at 10% (1 head), 0.5 at 20%, 1 at 50% and 100%
    # CPR = 0.1 * (0 + 0.5) / 2 + 0.3 * (0.5 + 1) / 2 + 0.5 * (1 + 1) / 2 = 0.025 + 0.225 + 0.5 = 0.75
    # CMD = 0.001 * 1 + 0.003 * 1 + 0.005 * 1 + 0.01 * 1 + 0.03 * 1 + 0.05 * 1      (k = 0.1 ... 10%: |1 - f| = 1)
    #       + 0.1 * (1 + 0.5) / 2 + 0.3 * (0.5 + 0) / 2 + 0 = 0.099 + 0.075 + 0.075 = 0.249
    f = [0, 0, 0, 0, 0, 0, 0, 0.5, 1, 1]
    assert cpr(MIB_KS, f) == pytest.approx(0.75, abs=1e-12)
    assert cmd(MIB_KS, f) == pytest.approx(0.249, abs=1e-12)
    x = np.asarray(MIB_KS) / 100  # an independent implementation of the same rule
    assert cpr(MIB_KS, f) == pytest.approx(np.trapezoid(f, x) if hasattr(np, "trapezoid") else np.trapz(f, x))


def test_cpr_cmd_overshoot_and_negative_faithfulness():
    # f above 1: CPR counts it (0.5 * (1.5 + 1.0) / 2 = 0.625), CMD penalises it (0.5 * (0.5 + 0) / 2 = 0.125)
    assert cpr([50, 100], [1.5, 1.0]) == pytest.approx(0.625)
    assert cmd([50, 100], [1.5, 1.0]) == pytest.approx(0.125)
    # negative f (the circuit does worse than ablating everything): 0.9 * (-0.5 + 1) / 2 = 0.225;
    # CMD = 0.9 * (1.5 + 0) / 2 = 0.675
    assert cpr([10, 100], [-0.5, 1.0]) == pytest.approx(0.225)
    assert cmd([10, 100], [-0.5, 1.0]) == pytest.approx(0.675)
    assert cpr([10, 100], [-1.0, -1.0]) == pytest.approx(-0.9)


@pytest.mark.parametrize("ks, f, message", [
    ([10], [1.0], "two points"),
    ([10, 100], [1.0], "one value per k"),
    ([50, 10], [1.0, 1.0], "increasing"),
    ([0, 100], [0.0, 1.0], r"\(0, 100\]"),
    ([10, 200], [0.0, 1.0], r"\(0, 100\]"),
    ([10, 100], [math.nan, 1.0], "NaN"),
])
def test_cpr_cmd_reject_bad_curves(ks, f, message):
    for fn in (cpr, cmd):
        with pytest.raises(ValueError, match=message):
            fn(ks, f)


def test_curve_sizes_follow_mib_floor():
    assert faithfulness_curve_sizes(12).tolist() == [0, 0, 0, 0, 0, 0, 1, 2, 6, 12]
    assert faithfulness_curve_sizes(144).tolist() == [0, 0, 0, 1, 2, 7, 14, 28, 72, 144]
    assert faithfulness_curve_sizes(1000).tolist() == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    assert faithfulness_curve_sizes(1).tolist() == [0] * 9 + [1]  # one component: in only at 100%
    assert faithfulness_curve_sizes(30, [10, 100]).tolist() == [3, 30]  # 0.1 * 30 is 3.0000000000000004
    assert faithfulness_curve_sizes(100, [29, 57, 100]).tolist() == [29, 57, 100]  # 0.29 * 100 = 28.999999999999996
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n_components"):
            faithfulness_curve_sizes(bad)


def test_top_k_masks_are_nested_and_match_top_k_mask():
    scores = np.array([[0.1, 0.5, 0.5], [0.2, 0.0, 0.5]])
    masks = top_k_masks(scores, [0, 1, 2, 3, 4, 6, 9])
    assert masks.shape == (7, 2, 3)
    for n, m in zip([0, 1, 2, 3, 4, 6, 9], masks):
        assert (m == top_k_mask(scores, n)).all()
    assert all((masks[i] <= masks[i + 1]).all() for i in range(6))  # a larger circuit contains a smaller one
    assert masks[1].tolist() == [[False, True, False], [False, False, False]]  # tie 0.5 x3: lowest index first


# ------------------------------------------------------------- the task's curve
import torch  # noqa: E402

from harness.core import registry  # noqa: E402
from harness.core.context import RunContext  # noqa: E402
from harness.errors import ConfigError  # noqa: E402
from harness.tasks.circuits.curves import faithfulness_curve, replacement  # noqa: E402
from harness.tasks.circuits.task import CircuitOutput  # noqa: E402


@pytest.fixture(scope="module")
def ioi(tmp_path_factory):
    task = registry.get_task("circuits/ioi").create()
    config = task.resolve_config({"n_fit": 8, "n_eval": 32})
    ctx = RunContext(seed=0, device=torch.device("cpu"), cache_dir=tmp_path_factory.mktemp("ioi") / "cache")
    return task, task.build(config, ctx)


def _output(scores) -> CircuitOutput:
    return CircuitOutput(np.asarray(scores, dtype=np.float64), None, 0, 0)


@pytest.mark.parametrize("ablation", ["resample", "mean"])
def test_curve_anchors_are_exact(ioi, ablation):
    """f(100%) == 1 (the circuit is every head) and f == 0 wherever C_k is empty, exactly."""
    _, data = ioi
    curve = faithfulness_curve(data.model, data.eval, data.truth.astype(float), ablation)
    assert curve.sizes.tolist() == [0, 0, 0, 0, 0, 0, 1, 2, 6, 12]
    assert curve.f[-1] == 1.0
    assert (curve.f[curve.sizes == 0] == 0.0).all()
    assert curve.m_model > curve.m_empty


def test_curve_matches_one_run_per_circuit(ioi):
    """The batched curve equals one plain run per circuit with the outside heads patched from the corrupted run."""
    _, data = ioi
    model, split = data.model, data.eval
    scores = np.random.default_rng(3).random((3, 4))
    curve = faithfulness_curve(model, split, scores, "resample")
    rep = replacement(model, split, "resample")

    def m(kept: np.ndarray) -> float:
        with torch.no_grad():
            logits = model.run_with_heads_replaced(split.clean, torch.as_tensor(~kept), rep)
        return float(split.metric.from_logits(logits))

    m_empty, m_model = m(np.zeros((3, 4), bool)), m(np.ones((3, 4), bool))
    assert curve.m_empty == pytest.approx(m_empty, abs=1e-4) and curve.m_model == pytest.approx(m_model, abs=1e-4)
    for n, f in zip(curve.sizes, curve.f):
        assert f == pytest.approx((m(top_k_mask(scores, n)) - m_empty) / (m_model - m_empty), abs=1e-4)


def test_oracle_beats_random_on_planted_ioi(ioi):
    task, data = ioi
    oracle = task.evaluate(data, _output(data.truth.astype(float)))
    randoms = [task.evaluate(data, _output(np.random.default_rng(s).random((3, 4)))) for s in range(5)]
    print("oracle CPR %.3f CMD %.3f; random CPR %s CMD %s" % (
        oracle["cpr"], oracle["cmd"], [round(r["cpr"], 3) for r in randoms], [round(r["cmd"], 3) for r in randoms]))
    assert oracle["cpr"] > np.mean([r["cpr"] for r in randoms])
    assert oracle["cmd"] < np.mean([r["cmd"] for r in randoms])
    # the curve behind the metrics is in the artifacts
    art = task.artifacts(data, _output(data.truth.astype(float)))["faithfulness_curve"]
    assert art["ks"] == list(MIB_KS) and art["ablation"] == "resample" and art["f"][-1] == 1.0
    assert cpr(art["ks"], art["f"]) == oracle["cpr"] and cmd(art["ks"], art["f"]) == oracle["cmd"]


def test_mean_ablation_is_a_task_attribute_not_a_config_field(ioi):
    task, data = ioi
    assert "faithfulness_ablation" not in task.config_keys()  # a config field would change every cell key
    variant = registry.get_task("circuits/ioi").create()
    variant.faithfulness_ablation = "mean"  # what add_task(..., faithfulness_ablation="mean") sets
    out = _output(data.truth.astype(float))
    assert variant.artifacts(data, out)["faithfulness_curve"]["ablation"] == "mean"
    assert variant.evaluate(data, out)["cpr"] != task.evaluate(data, out)["cpr"]
    variant.faithfulness_ablation = "zero"
    with pytest.raises(ConfigError, match="faithfulness_ablation"):
        variant.evaluate(data, out)


# ------------------------------------------------- records, plot, page, identity
def test_records_plot_and_page(tmp_path):
    from harness.core.cell import RunSpec
    from harness.core.records import Store
    from harness.core.runner import run
    from harness.report.html import render_html
    from harness.report.leaderboard import build_tables, table_frame
    from harness.report.plots import write_plots

    spec = RunSpec(tasks=["circuits/ioi"], methods=["random", "eap"], seeds=[0, 1], results_dir=tmp_path / "res",
                   cache_dir=tmp_path / "cache", progress=False, task_overrides={"n_fit": 8, "n_eval": 16})
    assert not run(spec).failed
    records = Store(tmp_path / "res").load_all()
    for r in records:
        curve = r["artifacts"]["faithfulness_curve"]
        assert len(curve["f"]) == len(curve["ks"]) == 10 and curve["f"][-1] == 1.0
        assert r["metrics"]["cpr"] == pytest.approx(cpr(curve["ks"], curve["f"]))
    paths = write_plots(records, tmp_path / "plots")
    names = [p.name for p in paths]
    assert "circuits-faithfulness-ioi-planted-ioi.png" in names and "circuits-roc-ioi-planted-ioi.png" in names
    assert all(p.stat().st_size > 10_000 for p in paths)
    tables = build_tables(records)
    columns = list(table_frame(tables[0]).columns)
    assert columns[2:5] == ["roc_auc (95% CI)", "cpr", "cmd"]  # CPR and CMD beside the main metric
    page = render_html(tables, paths)
    assert "circuits-faithfulness-ioi-planted-ioi.png" in page and "<th scope=\"col\" class=\"num\">cpr</th>" in page


def test_cell_identity_of_the_committed_reference_is_unchanged():
    """The circuits cells of results/reference.json still exist: the curve added metrics, no config field."""
    import json
    from pathlib import Path

    from harness.core.cell import RunSpec, expand
    from harness.core.records import config_hash

    ref = json.loads((Path(__file__).resolve().parents[1] / "results" / "reference.json").read_text())
    wanted = {(e["task"], e["task_version"], e["task_config_hash"], e["method"], e["method_config_hash"])
              for e in ref["entries"] if e["task"] in ("circuits/ioi", "circuits/greater_than")}
    assert wanted
    cells = expand(RunSpec(tasks=["circuits/ioi", "circuits/greater_than"], seeds=[0]))
    have = {(c.task_entry.name, c.task_entry.version, c.identity.task_config_hash, c.method_entry.name,
             config_hash(c.identity.config["method"])) for c in cells}
    assert wanted <= have


def _curve_record(task: str, method: str, edges: bool) -> dict:
    """A circuits record as the task writes it (only what the plots read): a head curve, and with ``edges`` an
    edge curve and its metrics."""
    ks = list(MIB_KS)
    f = [min(1.0, k / 10) for k in ks]
    art = {"faithfulness_curve": {"ks": ks, "f": f, "ablation": "resample", "components": "heads"}}
    metrics = {"cpr": cpr(ks, f), "cmd": cmd(ks, f)}
    if edges:
        fe = [min(1.0, k / 20) for k in ks]
        art["edge_faithfulness_curve"] = {"ks": ks, "f": fe, "ablation": "resample", "components": "edges"}
        metrics.update(edge_cpr=cpr(ks, fe), edge_cmd=cmd(ks, fe))
    return {"task": task, "model": "planted-ioi", "method": method, "baseline": True, "artifacts": art,
            "metrics": metrics}


def test_edge_faithfulness_plot_from_records_with_edge_curves(tmp_path, monkeypatch):
    """One edge f(k) plot per task where some record carries an edge curve, with only those methods in its
    legend; a task whose records carry none gets no edge plot; the family plotter writes it next to the head plot."""
    from harness.tasks.circuits import plots

    legends: dict[str, list[str]] = {}
    save = plots.save_figure

    def capture(fig, path):
        legends[path.name] = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        return save(fig, path)

    monkeypatch.setattr(plots, "save_figure", capture)
    records = [_curve_record("circuits/ioi", "eap-edges", True), _curve_record("circuits/ioi", "eap-edges", True),
               _curve_record("circuits/ioi", "eap", False), _curve_record("circuits/greater_than", "eap", False)]
    paths = plots.plot_faithfulness_curves(records, tmp_path, level="edges")
    assert [p.name for p in paths] == ["circuits-edge-faithfulness-ioi-planted-ioi.png"]
    assert paths[0].stat().st_size > 10_000
    edge_cpr = records[0]["metrics"]["edge_cpr"]
    assert legends[paths[0].name] == [f"eap-edges (baseline): CPR {edge_cpr:.3f}, CMD "
                                      f"{records[0]['metrics']['edge_cmd']:.3f} (2 seeds)"]
    names = {p.name for p in plots.plot_circuits(records, tmp_path / "all")}
    assert {"circuits-edge-faithfulness-ioi-planted-ioi.png", "circuits-faithfulness-ioi-planted-ioi.png",
            "circuits-faithfulness-greater_than-planted-ioi.png"} <= names
    assert not any(n.startswith("circuits-edge-faithfulness-greater_than") for n in names)
    assert plots.plot_faithfulness_curves(records[2:], tmp_path / "none", level="edges") == []
    with pytest.raises(ValueError, match="curve level"):
        plots.plot_faithfulness_curves(records, tmp_path, level="mlps")
