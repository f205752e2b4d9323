"""The circuits tasks: ``circuits/ioi`` and ``circuits/greater_than``.

Per cell (DESIGN.md section 2, "circuits"):

- :meth:`CircuitTask.build` loads the model (cached per process), generates a
  *fit* split (``n_fit`` clean / corrupted prompt pairs, handed to the method
  as a :class:`~harness.protocols.circuits.CircuitData`) and a held-out *eval*
  split (``n_eval`` pairs, for faithfulness), and the ground-truth head mask.
  Fit prompts come from seed ``2 * seed``, eval prompts from ``2 * seed + 1``.
- :meth:`CircuitTask.apply` wraps the model in a
  :class:`~harness.protocols.circuits.PassCounter`, calls ``score_heads`` and
  ``select_heads`` and validates their outputs.
- :meth:`CircuitTask.evaluate` scores the head scores against the ground
  truth (ROC-AUC, PR-AUC), the selected set (the method's own, else the
  top-|ground truth| heads by score: precision, recall, F1), and the selected
  circuit's faithfulness on the eval split: every head *not* in the circuit
  is mean-ablated (mean ``z`` over the eval split's corrupted prompts, per
  position), ``f = (m(C) - m(empty)) / (m(model) - m(empty))`` with
  ``m(empty)`` = every head mean-ablated and ``m`` the mean task metric over
  the eval prompts; and MIB's faithfulness curve of the head scores on the
  same prompts (:mod:`harness.tasks.circuits.curves`: ``f(k)`` of the top-k%
  heads, k = 0.1 ... 100%, the others resample-ablated from the paired
  corrupted prompt by default) with its areas ``cpr`` and ``cmd``.  A method that also scores edges
  (``score_edges``, :mod:`harness.protocols.edges`) gets the edge-level metrics of
  :mod:`harness.tasks.circuits.edges` (``edge_roc_auc`` / ``edge_pr_auc`` against the planted models'
  path-patched edges, ``edge_cpr`` / ``edge_cmd``); other methods record none of them.

Models (config ``model``): the embedded planted-circuit model of the task
(``planted-ioi`` / ``planted-greater-than``, see :mod:`harness.embedded.planted`),
``gpt2`` (from the local Hugging Face cache), or a local directory (a harness
GPT written by ``save_gpt`` or a GPT-2-family ``save_pretrained`` directory).
Ground truth: a JSON file of ``[layer, head]`` pairs when ``ground_truth`` is
set, else the planted model's card, else GPT-2 small's published heads for
``gpt2``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import numpy as np
import torch

from harness.core.context import RunContext
from harness.core.inputs import content_hash
from harness.errors import ConfigError, HarnessError, InvalidOutputError
from harness.metrics.circuits import faithfulness, pr_auc, roc_auc, set_metrics, top_k_mask
from harness.models.base import HookedModel
from harness.protocols.circuits import (
    CircuitData, PassCounter, has_mlp_scores, validate_mlp_scores, validate_scores, validate_selection,
)
from harness.protocols.edges import has_edge_scores, validate_edge_scores
from harness.core.task import MetricSpec, Task
from harness.data import circuits as D
from harness.embedded import planted
from harness.tasks.circuits.curves import ABLATIONS, CurveEvaluator, FaithfulnessCurve
from harness.tasks.circuits.edge_truth import mlp_ground_truth
from harness.tasks.circuits.edges import edge_artifacts, edge_metrics
from harness.tasks.circuits.ground_truth import GPT2_HEADS, GPT2_SMALL_SHAPE, heads_to_mask, load_ground_truth_file


# ------------------------------------------------------------------ model cache
_MODELS: dict[tuple[str, str, str], HookedModel] = {}
_LOCK = threading.Lock()


def get_model(spec: str, device: torch.device | str = "cpu", cache_dir: Path | None = None,
              allow_pickle_weights: bool = False) -> HookedModel:
    """Load (once per process) the model named by ``spec``: a planted model name, ``gpt2``, or a directory (held
    per content: a directory whose files changed is loaded again)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"config 'model' must be a model name or directory, got {spec!r}")
    device = torch.device(device)
    path = Path(spec).expanduser()
    local = spec not in planted.PLANTED and path.exists()
    resolved = f"{path.resolve()}@{content_hash(path)}" if local else spec
    key = (resolved, str(device), str(cache_dir) if spec in planted.PLANTED else "")
    with _LOCK:
        model = _MODELS.get(key)
        if model is None:
            if spec in planted.PLANTED:
                model = planted.load_planted(spec, cache_dir=cache_dir, device=device)
            else:
                from harness.models.loading import load_model

                model = load_model(spec, device, allow_pickle_weights=allow_pickle_weights)
                card = getattr(model, "card", None)
                if isinstance(card, dict) and "verification" in card:
                    planted.check_card(card, where=spec)  # a planted model saved elsewhere: refuse if it failed
            inner = getattr(model, "model", None)
            if isinstance(inner, torch.nn.Module):  # analysis only: no parameter gradients (as HFCausalLM does)
                inner.eval()
                inner.requires_grad_(False)
            _MODELS[key] = model
    return model


def clear_model_cache() -> None:
    with _LOCK:
        _MODELS.clear()


# ----------------------------------------------------------------- data objects
@dataclass
class CircuitTaskData:
    """Everything one circuits cell needs; methods only ever see :attr:`fit`."""

    fit: CircuitData  # what the method gets (model, fit prompts, metric)
    eval: D.Split  # held-out prompts for faithfulness
    fit_split: D.Split
    truth: np.ndarray  # bool [n_layers, n_heads]
    model: HookedModel
    dropped_candidates: int
    dropped: dict[str, list[str]] = field(default_factory=dict)  # group -> candidate words not single tokens
    ground_truth_source: str = ""
    dropped_templates: dict[int, str] = field(default_factory=dict)  # template index -> why it was dropped
    prompt_style: str = ""  # the rendering the model's tokenizer reads ("text" or "words")
    _faith_cache: dict[str, float] = field(default_factory=dict, repr=False)
    _curve_cache: dict[str, Any] = field(default_factory=dict, repr=False)  # curve evaluators and curves
    _edge_cache: dict[str, Any] = field(default_factory=dict, repr=False)  # edge truth, evaluator and curves
    mlp_truth: np.ndarray | None = None  # bool [n_layers]: MLPs in the ground-truth circuit (planted models)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.model.n_layers, self.model.n_heads)


@dataclass
class CircuitOutput:
    """A method's validated output and the passes it used."""

    scores: np.ndarray  # float64 [L, H]
    selection: np.ndarray | None  # bool [L, H] or None (then the task takes the top-|truth| heads)
    forward_passes: int
    backward_passes: int
    edge_scores: np.ndarray | None = None  # float64 [n_edges] from methods that score edges (score_edges)
    mlp_scores: np.ndarray | None = None  # float64 [n_layers] from methods that score MLPs, where truth exists


# --------------------------------------------------------------------- the task
@dataclass(frozen=True)
class CircuitConfig:
    """``model``: a planted model name, ``gpt2`` or a directory; ``ground_truth``: a JSON file of
    ``[layer, head]`` pairs (None: the model card's or GPT-2's published heads); ``n_fit`` / ``n_eval``:
    prompt pairs handed to the method / held out for faithfulness."""

    model: str = ""
    ground_truth: Optional[str] = None
    n_fit: int = 32
    n_eval: int = 128


class CircuitTask(Task):
    """Build / apply / evaluate of every circuit task; a variant sets ``task_key``, ``vocabulary``, ``split``
    and the default model."""

    family: ClassVar[str] = "circuits"
    Config: ClassVar[type] = CircuitConfig
    selftest = {"n_fit": 4, "n_eval": 8}
    task_key: str = ""  # "ioi" or "greater_than": the key of the ground truth in model cards and GPT2_HEADS
    #: ``vocabulary(model) -> Vocabulary`` of the task's candidate words that are single tokens of the model
    vocabulary: Callable[[HookedModel], D.Vocabulary] | None = None
    #: ``split(model, n, seed, vocab) -> Split``: ``n`` clean / corrupted prompt pairs
    split: Callable[..., D.Split] | None = None
    #: How the faithfulness curve (cpr, cmd) ablates the heads outside the circuit: "resample" (MIB's
    #: counterfactual default) or "mean".  A class attribute, not a Config field, so that it stays out of
    #: the cell identity: a variant sets it (``add_task(..., faithfulness_ablation="mean")``) under its own name.
    faithfulness_ablation: str = "resample"
    metrics = (
        MetricSpec("roc_auc", True, "ROC-AUC of head scores against the ground-truth heads", abs_tol=0.05),
        MetricSpec("pr_auc", True, "average precision of head scores against the ground-truth heads", abs_tol=0.05),
        MetricSpec("precision", True, "precision of the selected heads (own selection, else top-|truth|)", abs_tol=0.1),
        MetricSpec("recall", True, "recall of the selected heads", abs_tol=0.1),
        MetricSpec("f1", True, "F1 of the selected heads", abs_tol=0.1),
        MetricSpec(
            "faithfulness", True,
            "(m(C) - m(empty)) / (m(model) - m(empty)) on the eval prompts, heads outside C mean-ablated",
            abs_tol=0.1,
        ),
        MetricSpec(
            "cpr", True,
            "MIB CPR: trapezoid area under f(k) = (m(C_k) - m(empty)) / (m(model) - m(empty)) of the top-k% heads by "
            "score, k = 0.1 ... 100%, over x = k/100 (linear, 0.001 to 1); others resample-ablated by default",
            abs_tol=0.1,
        ),
        MetricSpec("cmd", False, "MIB CMD: trapezoid area under |1 - f(k)|, same curve and axis as cpr", abs_tol=0.1),
        MetricSpec("node_roc_auc", True, "ROC-AUC of head and MLP scores together against the ground-truth heads and "
                   "MLPs (methods that score MLPs, planted models)", abs_tol=0.05, optional=True),
        MetricSpec("node_pr_auc", True, "average precision of head and MLP scores together against the ground-truth "
                   "heads and MLPs", abs_tol=0.05, optional=True),
        MetricSpec("edge_roc_auc", True, "ROC-AUC of edge scores against the model's ground-truth edges (methods "
                   "that score edges, models with edge ground truth)", abs_tol=0.05, optional=True),
        MetricSpec("edge_pr_auc", True, "average precision of edge scores against the ground-truth edges",
                   abs_tol=0.05, optional=True),
        MetricSpec("edge_cpr", True, "MIB CPR at edge level: area under f(k) of the top-k% edges, every other edge "
                   "patched from the corrupted prompt (methods that score edges)", abs_tol=0.1, optional=True),
        MetricSpec("edge_cmd", False, "MIB CMD at edge level: area under |1 - f(k)|, same curve as edge_cpr",
                   abs_tol=0.1, optional=True),
        MetricSpec("forward_passes", False, "model passes over the fit batch used by the method", gated=False),
        MetricSpec("backward_passes", False, "backward passes used by the method", gated=False),
        MetricSpec(
            "dropped_candidates", False,
            "task candidate words (names, places, objects / nouns, years) that are not single tokens of the model",
            gated=False,
        ),
        MetricSpec(
            "dropped_templates", False,
            "prompt templates the model's tokenizer cannot use (an unknown word, or another token layout)", gated=False,
        ),
    )
    main_metric = "roc_auc"
    leaderboard_metrics = (
        "cpr", "cmd", "node_roc_auc", "edge_roc_auc", "edge_cpr", "edge_cmd", "pr_auc", "faithfulness", "precision", "recall", "f1", "forward_passes", "backward_passes",
        "dropped_candidates", "dropped_templates",
    )

    # config -----------------------------------------------------------------
    input_keys = ("model", "ground_truth")

    def input_paths(self, config: CircuitConfig) -> dict[str, str]:
        """A model directory and a ground-truth file (a planted model's name is no path, even where a
        directory of that name exists: the harness loads it from its registry)."""
        paths = super().input_paths(config)
        if str(config.model) in planted.PLANTED:
            paths.pop("model", None)
        return paths

    def _check_config(self, config: CircuitConfig) -> None:
        for key in ("n_fit", "n_eval"):
            value = getattr(config, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ConfigError(f"task {self.name!r}: {key} must be an integer >= 2, got {value!r}")

    def ground_truth(self, config: CircuitConfig, model: HookedModel) -> tuple[np.ndarray, str]:
        shape = (model.n_layers, model.n_heads)
        spec = str(config.model)
        if config.ground_truth:
            path = str(config.ground_truth)
            return load_ground_truth_file(path, shape), f"file:{path}"
        card = getattr(model, "card", None)
        if isinstance(card, dict) and card.get("task") == self.task_key and card.get("circuit_heads"):
            return heads_to_mask(card["circuit_heads"], shape, where=f"model card of {spec}"), "model card"
        if spec == "gpt2":
            if shape != GPT2_SMALL_SHAPE:
                raise HarnessError(f"model 'gpt2' has shape {shape}, not GPT-2 small's {GPT2_SMALL_SHAPE}")
            return heads_to_mask(GPT2_HEADS[self.task_key], shape), "GPT-2 small published heads"
        raise HarnessError(
            f"task {self.name!r} knows no ground-truth circuit for model {spec!r}; pass one with "
            f"--set ground_truth=FILE (a JSON list of [layer, head] pairs, e.g. [[0, 1], [2, 0]])"
        )

    def preflight(self, config: CircuitConfig, ctx: RunContext) -> None:
        """A model the user brings (a directory or a Hugging Face id) loads, and its ground truth (the file given,
        the card's or GPT-2's) is in range for it: checked once, before any cell runs."""
        if str(config.model) in planted.PLANTED and not config.ground_truth:
            return
        self._check_config(config)
        model = get_model(str(config.model), ctx.device, Path(ctx.cache_dir) / "models", ctx.allow_pickle_weights)
        self.ground_truth(config, model)

    # the three steps ----------------------------------------------------------
    def build(self, config: CircuitConfig, ctx: RunContext) -> CircuitTaskData:
        self._check_config(config)
        model = get_model(str(config.model), ctx.device, Path(ctx.cache_dir) / "models", ctx.allow_pickle_weights)
        truth, source = self.ground_truth(config, model)
        vocab = self.vocabulary(model)
        fit = self.split(model, int(config.n_fit), 2 * int(ctx.seed), vocab)
        ev = self.split(model, int(config.n_eval), 2 * int(ctx.seed) + 1, vocab)
        circuit_data = CircuitData(model=model, clean=fit.clean, corrupted=fit.corrupted, metric=fit.metric, task=self.name)
        return CircuitTaskData(
            fit=circuit_data, eval=ev, fit_split=fit, truth=truth, model=model,
            dropped_candidates=vocab.dropped_candidates, dropped=vocab.dropped_summary(), ground_truth_source=source,
            dropped_templates=dict(vocab.dropped_templates), prompt_style=vocab.style,
            mlp_truth=None if config.ground_truth else mlp_ground_truth(model),
        )

    def apply(self, method: Any, data: CircuitTaskData, ctx: RunContext) -> CircuitOutput:
        name = getattr(method, "name", type(method).__name__)
        if not callable(getattr(method, "score_heads", None)):
            raise InvalidOutputError(f"method {name!r} has no score_heads(model, data); it does not speak the circuits protocol")
        counter = PassCounter(data.model)
        fit = CircuitData(
            model=counter, clean=data.fit.clean.clone(), corrupted=data.fit.corrupted.clone(),
            metric=data.fit.metric, task=data.fit.task,
        )
        scores = validate_scores(method.score_heads(counter, fit), data.shape, name)
        selection = None
        select = getattr(method, "select_heads", None)
        if callable(select):
            selection = select(counter, fit, scores.copy())
            if selection is not None:
                selection = validate_selection(selection, data.shape, name)
        edges = None
        if has_edge_scores(method):
            n_edges = data.model.edge_graph().n_edges
            edges = validate_edge_scores(method.score_edges(counter, fit), n_edges, name)
        mlps = None
        if has_mlp_scores(method) and data.mlp_truth is not None:
            mlps = validate_mlp_scores(method.score_mlps(counter, fit), data.model.n_layers, name)
        return CircuitOutput(scores, selection, int(counter.forward), int(counter.backward), edges, mlps)

    def evaluate(self, data: CircuitTaskData, output: CircuitOutput) -> dict[str, float]:
        truth = data.truth
        selected = output.selection if output.selection is not None else top_k_mask(output.scores, int(truth.sum()))
        out = {"roc_auc": roc_auc(output.scores, truth), "pr_auc": pr_auc(output.scores, truth)}
        out.update(set_metrics(selected, truth))
        out["faithfulness"] = circuit_faithfulness(data, selected)
        curve = score_curve(data, output.scores, self.faithfulness_ablation)
        out["cpr"], out["cmd"] = curve.cpr, curve.cmd
        out["forward_passes"] = float(output.forward_passes)
        out["backward_passes"] = float(output.backward_passes)
        out["dropped_candidates"] = float(data.dropped_candidates)
        out["dropped_templates"] = float(len(data.dropped_templates))
        if output.mlp_scores is not None:
            nodes, node_truth = node_arrays(output.scores, output.mlp_scores, truth, data.mlp_truth)
            out["node_roc_auc"], out["node_pr_auc"] = roc_auc(nodes, node_truth), pr_auc(nodes, node_truth)
        if output.edge_scores is not None:
            try:
                out.update(edge_metrics(data.model, data.eval, output.edge_scores, data._edge_cache))
            except ValueError as e:
                raise HarnessError(f"edge faithfulness curve on the eval prompts: {e}") from None
        return out

    def artifacts(self, data: CircuitTaskData, output: CircuitOutput) -> dict[str, Any]:
        """Head scores and the ground truth ``[L, H]`` (for the ROC curves next to the leaderboard), the
        faithfulness curve behind ``cpr`` / ``cmd`` (ks, sizes, f), and the prompts' rendering with what the
        model's tokenizer could not express (dropped words and templates)."""
        prompts = {
            "style": data.prompt_style, "dropped": data.dropped,
            "dropped_templates": {str(t): why for t, why in data.dropped_templates.items()},
        }
        curve = score_curve(data, output.scores, self.faithfulness_ablation).artifact()
        out = {"head_scores": output.scores.tolist(), "truth": data.truth.astype(int).tolist(), "prompts": prompts,
               "faithfulness_curve": curve}
        if output.mlp_scores is not None:
            out.update({"mlp_scores": output.mlp_scores.tolist(), "mlp_truth": data.mlp_truth.astype(int).tolist()})
        if output.edge_scores is not None:
            out.update(edge_artifacts(data.model, data.eval, output.edge_scores, data._edge_cache))
        return out


def node_arrays(head_scores: np.ndarray, mlp_scores: np.ndarray, head_truth: np.ndarray,
                mlp_truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, truth)`` of every node, ``[L * H + L]``: the heads (row-major) then the MLPs by layer."""
    return (np.concatenate([np.ravel(head_scores), np.ravel(mlp_scores)]),
            np.concatenate([np.ravel(head_truth), np.ravel(mlp_truth)]).astype(bool))


# ----------------------------------------------------------------- faithfulness
@torch.no_grad()
def circuit_metrics(model: HookedModel, split: D.Split, circuit: np.ndarray) -> tuple[float, float, float]:
    """``(m(C), m(empty), m(model))`` on ``split``: heads outside ``circuit`` mean-ablated (corrupted-prompt mean)."""
    c = torch.as_tensor(np.asarray(circuit, dtype=bool), device=model.device)
    masks = torch.stack([~c, torch.ones_like(c), torch.zeros_like(c)])
    mean = model.mean_z(split.corrupted)
    out = model.ablate_many(split.clean, masks, mean, token_ids=split.metric.token_ids)
    m = split.metric.per_prompt_fn(out).mean(dim=-1)
    return float(m[0]), float(m[1]), float(m[2])


def circuit_faithfulness(data: CircuitTaskData, selected: np.ndarray) -> float:
    key = np.asarray(selected, dtype=bool).tobytes().hex()
    if key not in data._faith_cache:
        m_c, m_e, m_f = circuit_metrics(data.model, data.eval, selected)
        try:
            data._faith_cache[key] = faithfulness(m_c, m_e, m_f)
        except ValueError as e:
            raise HarnessError(f"faithfulness on the eval prompts: {e}") from None
    return data._faith_cache[key]


def score_curve(data: CircuitTaskData, scores: np.ndarray, ablation: str) -> FaithfulnessCurve:
    """The faithfulness curve of head ``scores`` on the eval prompts, cached per scores and ablation; one
    :class:`~harness.tasks.circuits.curves.CurveEvaluator` per task data and ablation (its replacement ``z``,
    anchors and measured circuits) is shared by every method of the seed."""
    if ablation not in ABLATIONS:
        raise ConfigError(f"faithfulness_ablation must be one of {ABLATIONS}, got {ablation!r}")
    scores = np.asarray(scores, dtype=np.float64)
    key = f"curve:{ablation}:{scores.shape}:{scores.tobytes().hex()}"
    if key not in data._curve_cache:
        try:
            evaluator = data._curve_cache.get(ablation) or CurveEvaluator(data.model, data.eval, ablation)
            data._curve_cache[ablation] = evaluator
            data._curve_cache[key] = evaluator.curve(scores)
        except ValueError as e:
            raise HarnessError(f"faithfulness curve on the eval prompts: {e}") from None
    return data._curve_cache[key]
