"""Circuits family: prompt generators, task metrics, ground truth, build / apply / evaluate.

Uses the committed planted IOI model (no training) and a tiny random GPT-2
with a word-level tokenizer (bring-your-own-model path).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.core import registry
from harness.core.context import RunContext
from harness.errors import HarnessError, InvalidOutputError
from harness.protocols.circuits import CircuitMethod
from harness.data import circuits as D
from harness.tasks.circuits import ground_truth as G
from harness.data import prompts as P
from harness.tasks.circuits.task import CircuitTaskData, clear_model_cache, get_model


def ctx(tmp_path: Path, seed: int = 0) -> RunContext:
    return RunContext(seed=seed, device=torch.device("cpu"), cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------- prompts
def test_ioi_prompts_follow_templates_and_answers():
    prompts = P.generate_ioi(24, seed=3)
    pattern = re.compile(
        r"^(When|After|While) (\w+) and (\w+) (went to|were at) the (\w+), (\w+) (gave|handed|passed) a (\w+) to$"
    )
    for p in prompts:
        text = P.render(p.clean, "text")
        m = pattern.match(text)
        assert m, text
        a, b, s2 = m.group(2), m.group(3), m.group(6)
        assert P.render(p.clean, "words") == " ".join(seg.strip() for seg in p.clean)
        assert len(p.clean) == 14 and all(len(seg.split()) == 1 for seg in p.clean)
        assert s2 == p.s.strip()
        if p.order == "ABBA":
            assert (a, b) == (p.io.strip(), p.s.strip())
        else:
            assert (a, b) == (p.s.strip(), p.io.strip())
        assert p.io != p.s
        assert text.split()[0] == ("When", "After", "While")[p.template]


def test_ioi_orders_balanced_across_templates():
    prompts = P.generate_ioi(60, seed=0)
    orders = Counter(p.order for p in prompts)
    assert orders == {"ABBA": 30, "BABA": 30}
    per = Counter((p.template, p.order) for p in prompts)
    assert set(per) == {(t, o) for t in range(3) for o in ("ABBA", "BABA")}
    assert set(per.values()) == {10}


def test_ioi_corruption_is_abc():
    for p in P.generate_ioi(40, seed=1):
        diff = [i for i, (a, b) in enumerate(zip(p.clean, p.corrupted)) if a != b]
        assert diff == [9]  # only S2 changes
        names = [p.corrupted[1], p.corrupted[3], p.corrupted[9]]
        assert len(set(names)) == 3  # no repeated name
        assert p.corrupted[9] == p.c and p.c not in (p.io, p.s)


def test_prompts_deterministic_in_seed():
    assert P.generate_ioi(16, 7) == P.generate_ioi(16, 7)
    assert P.generate_ioi(16, 7) != P.generate_ioi(16, 8)
    assert P.generate_greater_than(16, 7) == P.generate_greater_than(16, 7)
    assert P.generate_greater_than(16, 7) != P.generate_greater_than(16, 8)


def test_greater_than_prompts():
    prompts = P.generate_greater_than(200, seed=0)
    for p in prompts:
        text = P.render(p.clean, "text")
        assert text == f"The {p.noun} lasted from the year {p.century}{p.year:02d} to the year {p.century}"
        assert P.render(p.clean, "words") == f"The {p.noun} lasted from the year {p.century} {p.year:02d} to the year {p.century}"
        assert P.render(p.corrupted, "text") == f"The {p.noun} lasted from the year {p.century}01 to the year {p.century}"
        assert 11 <= p.century <= 17 and 2 <= p.year <= 98
    assert len({p.year for p in prompts}) > 50


# ------------------------------------------------------------------- metrics
def test_ioi_metric_matches_hand_computation():
    name_ids = torch.tensor([5, 7, 9])
    metric = D.ioi_metric(name_ids, io_idx=torch.tensor([0, 2]), s_idx=torch.tensor([1, 0]))
    logits = torch.zeros(2, 3, 12)
    logits[0, -1, 5], logits[0, -1, 7] = 3.0, 1.0  # prompt 0: IO = id 5, S = id 7 -> 2
    logits[1, -1, 9], logits[1, -1, 5] = -1.0, 0.5  # prompt 1: IO = id 9, S = id 5 -> -1.5
    logits[:, :-1] = 100.0  # other positions are ignored
    assert metric.per_prompt(logits).tolist() == [2.0, -1.5]
    assert float(metric.from_logits(logits)) == pytest.approx(0.25)
    # leading dimensions (as from ablate_many): [n_sets, batch, k]
    last = logits[:, -1][:, name_ids].unsqueeze(0).repeat(4, 1, 1)
    assert metric.from_last(last).tolist() == pytest.approx([0.25] * 4)


def test_greater_than_metric_matches_hand_computation():
    V = 10
    year_ids = torch.tensor([2, 3, 4, 5])  # tokens of years 10, 20, 30, 40
    values = torch.tensor([10, 20, 30, 40])
    metric = D.greater_than_metric(year_ids, values, yy=torch.tensor([20, 5]))
    logits = torch.randn(2, 4, V, generator=torch.Generator().manual_seed(0))
    p = torch.softmax(logits[:, -1], dim=-1).numpy()
    want0 = (p[0, 4] + p[0, 5]) - (p[0, 2] + p[0, 3])  # YY = 20: 30, 40 above; 10, 20 at or below
    want1 = p[1, 2:6].sum()  # YY = 05: all above
    assert metric.per_prompt(logits).numpy() == pytest.approx([want0, want1], abs=1e-6)
    assert metric.token_ids is None  # full-vocabulary softmax


# --------------------------------------------------------------- ground truth
# Verbatim from DESIGN.md section 2 ("circuits").
DESIGN_IOI = "9.9 10.0 9.6 | 10.10 10.6 10.2 10.1 11.2 9.7 9.0 11.9 | 10.7 11.10 | 7.3 7.9 8.6 8.10 | 5.5 5.8 5.9 6.9 | 0.1 0.10 3.0 | 2.2 4.11."
DESIGN_GT = "0.1 0.3 0.5 5.5 6.1 6.9 7.10 8.11 9.1"


def _parse_heads(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in h.split(".")) for h in re.findall(r"\d+\.\d+", text)]


def test_ground_truth_lists_equal_design():
    design = Path(__file__).resolve().parents[2] / "shared" / "DESIGN.md"
    ioi_text, gt_text = DESIGN_IOI, DESIGN_GT
    if design.is_file():  # the shared design document, when present next to the repository
        doc = " ".join(design.read_text().split())
        m = re.search(r"IOI \(26\): (.*?\.) Greater-than: (.*?) \(\+ MLPs", doc)
        assert m, "DESIGN.md's head lists not found"
        ioi_text, gt_text = m.group(1), m.group(2)
        assert (ioi_text, gt_text) == (DESIGN_IOI, DESIGN_GT)
    assert list(G.GPT2_IOI_HEADS) == _parse_heads(ioi_text)
    assert len(G.GPT2_IOI_HEADS) == 26 == len(set(G.GPT2_IOI_HEADS))
    assert list(G.GPT2_GREATER_THAN_HEADS) == _parse_heads(gt_text)
    assert len(G.GPT2_GREATER_THAN_HEADS) == 9
    assert G.GPT2_GREATER_THAN_MLPS == (0, 1, 2, 3, 8, 9, 10, 11)


def test_ground_truth_file(tmp_path):
    f = tmp_path / "gt.json"
    f.write_text(json.dumps([[0, 1], [1, 3]]))
    mask = G.load_ground_truth_file(f, (2, 4))
    assert mask.dtype == bool and mask.sum() == 2 and mask[0, 1] and mask[1, 3]
    f.write_text(json.dumps([[2, 0]]))
    with pytest.raises(HarnessError, match="outside the model"):
        G.load_ground_truth_file(f, (2, 4))
    with pytest.raises(HarnessError, match="does not exist"):
        G.load_ground_truth_file(tmp_path / "missing.json", (2, 4))


# ------------------------------------------------------------ trivial methods
class Oracle(CircuitMethod):
    """Scores = the ground truth (read through a side channel for testing); uses one forward pass."""

    name = "oracle"
    truth: np.ndarray | None = None

    def score_heads(self, model, data):
        model.logits(data.clean)
        return self.truth.astype(float) + 0.01 * np.arange(self.truth.size).reshape(self.truth.shape) / self.truth.size


class Inverted(Oracle):
    def score_heads(self, model, data):
        return -self.truth.astype(float)


class OwnSelection(Oracle):
    def select_heads(self, model, data, scores):
        sel = np.zeros_like(self.truth)
        sel[np.argwhere(self.truth)[0][0], np.argwhere(self.truth)[0][1]] = True
        return sel


class Bad(CircuitMethod):
    def __init__(self, output=None, selection=None):
        self.output, self.selection = output, selection

    def score_heads(self, model, data):
        return self.output

    def select_heads(self, model, data, scores):
        return self.selection


@pytest.fixture(scope="module")
def ioi_data(tmp_path_factory) -> tuple:
    task = registry.get_task("circuits/ioi").create()
    config = task.resolve_config({"n_fit": 16, "n_eval": 64})
    data = task.build(config, ctx(tmp_path_factory.mktemp("ioi"), 0))
    return task, data


def test_ioi_task_on_planted_model(ioi_data):
    task, data = ioi_data
    assert isinstance(data, CircuitTaskData)
    assert data.fit.clean.shape == data.fit.corrupted.shape == (16, 14)
    assert data.eval.clean.shape == (64, 14)
    assert data.dropped_candidates == 0
    assert data.truth.shape == (3, 4) and set(map(tuple, np.argwhere(data.truth))) == {(0, 1), (1, 2), (2, 0)}
    assert data.ground_truth_source == "model card"
    # fit and eval prompts differ; the model does the task
    assert not set(data.fit_split.texts) & set(data.eval.texts)
    with torch.no_grad():
        assert float(data.fit.metric.from_logits(data.model.logits(data.fit.clean))) > 1.0

    oracle = Oracle()
    oracle.truth = data.truth
    out = task.apply(oracle, data, None)
    m = task.check_metrics(task.evaluate(data, out))
    assert m["roc_auc"] == 1.0 and m["pr_auc"] == 1.0
    assert m["precision"] == m["recall"] == m["f1"] == 1.0
    assert m["faithfulness"] > 0.8
    assert m["forward_passes"] == 1 and m["backward_passes"] == 0
    assert m["dropped_candidates"] == 0

    inv = Inverted()
    inv.truth = data.truth
    m = task.evaluate(data, task.apply(inv, data, None))
    assert m["roc_auc"] == 0.0 and m["f1"] == 0.0
    assert m["faithfulness"] < 0.5

    own = OwnSelection()
    own.truth = data.truth
    m = task.evaluate(data, task.apply(own, data, None))
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(1 / 3)


def test_task_build_is_deterministic(ioi_data, tmp_path):
    task, data = ioi_data
    again = task.build(task.resolve_config({"n_fit": 16, "n_eval": 64}), ctx(tmp_path, 0))
    assert torch.equal(again.fit.clean, data.fit.clean) and torch.equal(again.eval.corrupted, data.eval.corrupted)
    other = task.build(task.resolve_config({"n_fit": 16, "n_eval": 64}), ctx(tmp_path, 1))
    assert not torch.equal(other.fit.clean, data.fit.clean)


@pytest.mark.parametrize(
    "output, selection, message",
    [
        (None, None, "numpy array"),
        (np.zeros((4, 3)), None, "shape"),
        (np.full((3, 4), np.nan), None, "NaN"),
        (np.array([["a"] * 4] * 3), None, "real numbers"),
        (np.zeros((3, 4)), np.zeros((3, 3), dtype=bool), "shape"),
        (np.zeros((3, 4)), np.full((3, 4), 0.5), "bool"),
        (np.zeros((3, 4)), [[True] * 4] * 3, "bool array"),
    ],
)
def test_invalid_method_outputs_are_rejected(ioi_data, output, selection, message):
    task, data = ioi_data
    with pytest.raises(InvalidOutputError, match=message):
        task.apply(Bad(output, selection), data, None)


def test_torch_scores_and_int_selection_accepted(ioi_data):
    task, data = ioi_data
    out = task.apply(Bad(torch.arange(12.0).view(3, 4), np.ones((3, 4), dtype=np.int64)), data, None)
    assert out.scores.dtype == np.float64 and out.selection.dtype == bool and out.selection.all()


def test_greater_than_task_on_planted_model(tmp_path):
    task = registry.get_task("circuits/greater_than").create()
    data = task.build(task.resolve_config({"n_fit": 8, "n_eval": 32}), ctx(tmp_path, 0))
    assert data.fit.clean.shape == (8, 12) and data.dropped_candidates == 0
    with torch.no_grad():
        assert float(data.fit.metric.from_logits(data.model.logits(data.fit.clean))) > 0.5
    oracle = Oracle()
    oracle.truth = data.truth
    m = task.check_metrics(task.evaluate(data, task.apply(oracle, data, None)))
    assert m["roc_auc"] == 1.0 and m["faithfulness"] > 0.8


def test_unknown_model_and_missing_ground_truth(tmp_path):
    task = registry.get_task("circuits/ioi").create()
    with pytest.raises(HarnessError, match="does not exist"):
        task.build(task.resolve_config({"model": str(tmp_path / "nope")}), ctx(tmp_path, 0))
    with pytest.raises(HarnessError, match="not a planted model|unknown planted|not in the local Hugging Face cache"):
        task.build(task.resolve_config({"model": "planted-nonexistent"}), ctx(tmp_path, 0))


# ------------------------------------------------------- bring your own model
OMITTED_NAMES = ("Mary", "Tom", "Kevin")


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A randomly initialised tiny GPT-2 and a word-level tokenizer that lacks three names."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["[UNK]"]
    for template in P.IOI_TEMPLATES + (P.GT_TEMPLATE,):
        words += [s.strip() for s in template if not s.startswith("{")]
    words += [n for n in P.IOI_NAMES if n not in OMITTED_NAMES] + list(P.IOI_PLACES) + list(P.IOI_OBJECTS)
    words += list(P.GT_NOUNS) + [f"{v:02d}" for v in range(100) if v != 50]  # "50" missing too
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    # words, then two-digit groups ("1705" -> "17" "05"), then punctuation: like GPT-2's year split
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"\d\d"), "isolated"), pre_tokenizers.Punctuation()]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    d = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(config).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.mark.parametrize("task_name, n_dropped", [("circuits/ioi", 3), ("circuits/greater_than", 1)])
def test_bring_your_own_model(tiny_gpt2_dir, tmp_path, task_name, n_dropped):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps([[0, 1], [1, 2], [1, 3]]))
    task = registry.get_task(task_name).create()
    config = task.resolve_config({"model": str(tiny_gpt2_dir), "ground_truth": str(gt), "n_fit": 8, "n_eval": 16})
    data = task.build(config, ctx(tmp_path, 0))
    assert data.truth.shape == (2, 4) and data.truth.sum() == 3
    assert data.ground_truth_source.startswith("file:")
    assert data.dropped_candidates == n_dropped
    if task_name == "circuits/ioi":
        assert data.dropped == {"names": list(OMITTED_NAMES)}
        assert not any(n in t for t in data.fit_split.texts + data.eval.texts for n in OMITTED_NAMES)
    else:  # "50" is missing as an answer token and as a year YY
        assert data.dropped == {"two_digit": ["50"]}
        years = {re.search(r"year \d\d(\d\d) to", t).group(1) for t in data.fit_split.texts + data.eval.texts}
        assert "50" not in years and len(years) > 10
    oracle = Oracle()
    oracle.truth = data.truth
    metrics = task.check_metrics(task.evaluate(data, task.apply(oracle, data, None)))
    assert all(np.isfinite(v) for v in metrics.values())
    assert metrics["dropped_candidates"] == n_dropped and metrics["roc_auc"] == 1.0


def test_user_model_without_ground_truth_is_refused(tiny_gpt2_dir, tmp_path):
    task = registry.get_task("circuits/ioi").create()
    with pytest.raises(HarnessError, match=r"--set ground_truth=FILE"):
        task.build(task.resolve_config({"model": str(tiny_gpt2_dir)}), ctx(tmp_path, 0))


def test_models_are_cached_per_process(tmp_path):
    a = get_model("planted-ioi", "cpu", tmp_path / "models")
    assert get_model("planted-ioi", "cpu", tmp_path / "models") is a
    clear_model_cache()
    assert get_model("planted-ioi", "cpu", tmp_path / "models") is not a


def test_tasks_registered():
    names = {e.name for e in registry.tasks("circuits")}
    assert {"circuits/ioi", "circuits/greater_than"} <= names
    task = registry.get_task("circuits/ioi").create()
    assert task.main_metric == "roc_auc"
    assert task.default_config().model == "planted-ioi"
    assert registry.get_task("circuits/greater_than").create().default_config().model == "planted-greater-than"
    assert not task.metric_spec("forward_passes").gated and task.metric_spec("roc_auc").abs_tol == 0.05
    for trap in ("negative", "redundant", "busy", "saturated", "saturated-sharp", "cancel", "opposing"):  # in the default suite
        entry = registry.get_task(f"circuits/ioi-{trap}")
        assert entry.in_default_suite and entry.create().default_config().model == f"planted-ioi-{trap}"
        assert entry.create().task_key == "ioi"


def test_bring_your_own_model_from_the_cli(tiny_gpt2_dir, tmp_path, capsys):
    from harness.cli import main

    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps([[0, 1], [1, 2], [1, 3]]))
    results = tmp_path / "results"
    code = main(["run", "--tasks", "circuits/ioi", "--methods", "eap", "random", "--seeds", "0",
                 "--model", str(tiny_gpt2_dir), "--ground-truth", str(gt), "--set", "n_fit=8", "--set", "n_eval=16",
                 "--no-progress", "--results-dir", str(results)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 cells: 2 run" in out and f"model {tiny_gpt2_dir}" in out


def test_records_keep_head_scores_and_the_roc_plot_reads_them(tmp_path):
    from harness.core.records import Store
    from harness.core.cell import RunSpec
    from harness.core.runner import run
    from harness.tasks.circuits.plots import plot_circuit_rocs

    spec = RunSpec(tasks=["circuits/ioi"], methods=["random", "act-patch-mean"], seeds=[0, 1],
                   results_dir=tmp_path / "res", cache_dir=tmp_path / "cache", progress=False,
                   task_overrides={"n_fit": 16, "n_eval": 32})
    summary = run(spec)
    assert not summary.failed
    records = Store(tmp_path / "res").load_all()
    for r in records:
        assert np.asarray(r["artifacts"]["head_scores"]).shape == (3, 4)
        assert np.asarray(r["artifacts"]["truth"]).sum() == 3
    paths = plot_circuit_rocs(records, tmp_path / "plots")
    assert [p.name for p in paths] == ["circuits-roc-ioi-planted-ioi.png"] and paths[0].stat().st_size > 10_000
    assert plot_circuit_rocs([{**r, "artifacts": {}} for r in records], tmp_path / "none") == []
