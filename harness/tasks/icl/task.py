"""The icl tasks: in-context linear regression predictors (family ``icl``) and probes (family ``icl-probe``).

Predictor tasks (``icl/linear-d5``, ``icl/linear-d8-noisy``) draw ``n_contexts``
fresh regression tasks (seeded), each with ``n = n_points`` examples and
``n_queries`` query inputs, and ask a predictor for its prediction at every
query after every prefix ``k = 0..n`` of the examples.  The task's trained
in-context learner (:mod:`harness.embedded.icl_learner`) and the classical references of
:mod:`harness.protocols.icl` are evaluated on the same data in ``build``, so
every row reports its distance (SPD, ILWD) to the transformer and to each
reference.

Probe tasks (``icl/probe-d5``, ``icl/probe-d8-noisy``) read the residual stream
after all ``n`` examples at every layer of the trained learner *and* of its
untrained control (the same network at its initialisation, before any
training), and ask a probe to decode ``w`` and ``X^T y`` from it; scored by
held-out R^2.  ``position`` picks the token: ``"query"`` (default), the
query token after all ``n`` examples; ``"example"``, the token of the last
example ``(x_n, y_n)`` (where Akyurek et al., Fig. 4, decode from in their
interleaved model); or ``"mean"``, the mean over the example tokens.  On the
last two even the untrained control decodes part of the targets from the raw
``(x_n, y_n)`` inputs, so their selectivity is low (measured: see
``harness/tasks/icl/README.md``).  The control is baked into every
cell's metrics (``*_control``): a probe's score on the trained model means
little without the same probe's score on the untrained one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from harness.core.context import RunContext
from harness.errors import InvalidOutputError
from harness.metrics.icl import ilwd, implied_weights, normalized_squared_error, r2_score, spd
from harness.protocols.icl import REFERENCE_PREDICTORS, ICLProblem, reference_predictions, ridge_weights, validate_array
from harness.core.task import MetricSpec, Task
from harness.embedded.icl_learner import TransformerLearner, control_model, get_spec, load_icl_model

#: Names of the references every predictor is compared with: the task's transformer, then the classical ones.
REFERENCES = ("transformer",) + REFERENCE_PREDICTORS


def _rng(seed: int, salt: str) -> np.random.Generator:
    """A generator that depends on the seed and the task (never on anything else)."""
    return np.random.default_rng([int(seed), *salt.encode()])


# ---------------------------------------------------------------- predictor tasks
@dataclass
class ICLPredictorData:
    """One predictor cell's inputs and the references it is scored against.

    ``xs [B, n, d]``, ``ys [B, n]`` (the examples), ``w [B, d]``,
    ``x_query [B, m, d]``, ``y_query [B, m]`` (noisy labels of the queries);
    ``refs[name]`` ``[B, n + 1, m]``: predictions of each reference;
    ``ref_weights[name]`` ``[B, n + 1, d]`` their implied weights;
    ``pinv_query [B, d, m]`` the pseudo-inverse of each context's queries.
    """

    problem: ICLProblem
    xs: np.ndarray
    ys: np.ndarray
    w: np.ndarray
    x_query: np.ndarray
    y_query: np.ndarray
    pinv_query: np.ndarray
    refs: dict[str, np.ndarray] = field(default_factory=dict)
    ref_weights: dict[str, np.ndarray] = field(default_factory=dict)

    def implied(self, preds: np.ndarray) -> np.ndarray:
        """Implied weights ``[B, n + 1, d]`` of predictions ``[B, n + 1, m]`` (with the cached pseudo-inverse)."""
        return implied_weights(self.x_query, preds, pinv=self.pinv_query)


def problem_of(model_name: str, learner: TransformerLearner | None = None) -> ICLProblem:
    """The regression problem a named learner was trained on (w ~ N(0, I): prior std 1)."""
    spec = get_spec(model_name)
    return ICLProblem(d=spec.arch.d, n_points=spec.arch.n_points, noise_std=spec.recipe.noise_std,
                      prior_std=1.0, learner=learner)


def sample_contexts(rng: np.random.Generator, n_contexts: int, n: int, m: int, d: int, noise_std: float):
    """``xs [B, n, d]``, ``ys [B, n]``, ``w [B, d]``, ``x_query [B, m, d]``, ``y_query [B, m]`` (float64)."""
    w = rng.standard_normal((n_contexts, d))
    xs = rng.standard_normal((n_contexts, n, d))
    x_query = rng.standard_normal((n_contexts, m, d))
    ys = np.einsum("bnd,bd->bn", xs, w) + noise_std * rng.standard_normal((n_contexts, n))
    y_query = np.einsum("bmd,bd->bm", x_query, w) + noise_std * rng.standard_normal((n_contexts, m))
    return xs, ys, w, x_query, y_query


def predictor_metrics(n: int) -> tuple[MetricSpec, ...]:
    specs = [
        MetricSpec("err_final", False, f"squared error / d against the noisy label after all n = {n} examples",
                   abs_tol=0.005, rel_tol=0.1),
        MetricSpec("err_mean", False, "squared error / d averaged over k = 1..n examples", abs_tol=0.005, rel_tol=0.1),
    ]
    specs += [MetricSpec(f"err_k{k}", False, f"squared error / d with k = {k} in-context examples",
                         abs_tol=0.005, rel_tol=0.1) for k in range(n + 1)]
    for ref in REFERENCES:
        specs.append(MetricSpec(f"spd_{ref}", False, f"normalised SPD to {ref}, mean over k = 1..n",
                                abs_tol=0.005, rel_tol=0.15))
        specs.append(MetricSpec(f"ilwd_{ref}", False, f"normalised ILWD to {ref}, mean over k = 1..n",
                                abs_tol=0.005, rel_tol=0.15))
    specs += [MetricSpec(f"spd_transformer_k{k}", False, f"normalised SPD to the transformer at k = {k}",
                         abs_tol=0.005, rel_tol=0.15) for k in range(n + 1)]
    return tuple(specs)


@dataclass(frozen=True)
class ICLPredictorConfig:
    """``model``: the in-context learner; ``n_contexts`` fresh regression tasks, ``n_queries`` queries each."""

    model: str = ""
    n_contexts: int = 500
    n_queries: int = 10


class ICLPredictorTask(Task):
    """The predictor tasks; a variant sets ``metrics`` (they depend on the number of examples) and defaults."""

    family: ClassVar[str] = "icl"
    Config: ClassVar[type] = ICLPredictorConfig
    input_keys = ()  # the models are named embedded models
    selftest = {"n_contexts": 20}
    main_metric = "err_final"
    leaderboard_metrics = ("err_mean", "spd_transformer", "ilwd_transformer", "spd_ols", "spd_ridge")

    def build(self, config: ICLPredictorConfig, ctx: RunContext) -> ICLPredictorData:
        model, card, _ = load_icl_model(config.model, ctx.cache_dir)
        learner = TransformerLearner(model, card, model_id=config.model)
        problem = problem_of(config.model, learner)
        d, n, m = problem.d, problem.n_points, int(config.n_queries)
        if m < d:
            raise ValueError(f"n_queries must be >= d = {d} (ILWD fits d implied weights), got {m}")
        xs, ys, w, xq, yq = sample_contexts(_rng(ctx.seed, self.name), int(config.n_contexts), n, m, d,
                                            problem.noise_std)
        data = ICLPredictorData(problem, xs, ys, w, xq, yq, np.linalg.pinv(xq))
        data.refs["transformer"] = learner.predict_prefixes(xs, ys, xq)
        for name in REFERENCE_PREDICTORS:
            data.refs[name] = reference_predictions(name, problem, xs, ys, xq)
        data.ref_weights = {name: data.implied(p) for name, p in data.refs.items()}
        return data

    def apply(self, method: Any, data: ICLPredictorData, ctx: RunContext) -> np.ndarray:
        if not hasattr(method, "predict_prefixes"):
            raise InvalidOutputError(f"method {method.name!r} has no predict_prefixes(xs, ys, x_query)")
        if hasattr(method, "prepare"):
            method.prepare(data.problem)
        out = method.predict_prefixes(data.xs.copy(), data.ys.copy(), data.x_query.copy())
        B, n, _ = data.xs.shape
        return validate_array(out, (B, n + 1, data.x_query.shape[1]), f"{method.name}.predict_prefixes")

    def evaluate(self, data: ICLPredictorData, output: np.ndarray) -> dict[str, float]:
        d, n = data.problem.d, data.xs.shape[1]
        curve = normalized_squared_error(output, np.broadcast_to(data.y_query[:, None, :], output.shape), d,
                                         axis=(0, 2))
        metrics = {f"err_k{k}": float(curve[k]) for k in range(n + 1)}
        metrics["err_final"] = float(curve[n])
        metrics["err_mean"] = float(curve[1:].mean())
        w_hat = data.implied(output)
        for ref in REFERENCES:
            spd_curve = spd(output, data.refs[ref], d, axis=(0, 2))
            metrics[f"spd_{ref}"] = float(spd_curve[1:].mean())
            metrics[f"ilwd_{ref}"] = float(ilwd(w_hat[:, 1:], data.ref_weights[ref][:, 1:], d))
            if ref == "transformer":
                metrics.update({f"spd_transformer_k{k}": float(spd_curve[k]) for k in range(n + 1)})
        return metrics


# ---------------------------------------------------------------- probe tasks
PROBE_TARGETS = ("w", "xty")
PROBE_MODELS = ("trained", "control")


@dataclass
class ICLProbeData:
    """Hidden states after all examples and the targets, split into train / test contexts.

    ``H[model]`` ``[L + 1, N, d_model]`` for model in ("trained", "control")
    (layer 0 = after the read-in, layer l = after block l); ``targets[t]``
    ``[N, d]`` for t in ("w", "xty"); the first ``n_train`` contexts train the
    probe, the rest test it.  ``r2_w_bayes``: R^2 of the Bayes posterior mean
    of ``w`` on the test contexts (the ceiling of any probe for ``w``).
    """

    H: dict[str, np.ndarray]
    targets: dict[str, np.ndarray]
    n_train: int
    n_layers: int
    r2_w_bayes: float


@dataclass(frozen=True)
class ICLProbeConfig:
    """``model``: the learner; ``n_train`` / ``n_test`` contexts; ``position``: query, example or mean."""

    model: str = ""
    n_train: int = 1500
    n_test: int = 500
    position: str = "query"


class ICLProbeTask(Task):
    """The probe tasks; a variant sets ``metrics`` (they depend on the number of layers) and defaults."""

    family: ClassVar[str] = "icl-probe"
    input_keys = ()  # the models are named embedded models
    Config: ClassVar[type] = ICLProbeConfig
    selftest = {"n_train": 60, "n_test": 20}

    main_metric = "r2_w_best"
    leaderboard_metrics = ("r2_xty_best", "r2_w_best_control", "r2_xty_best_control", "selectivity_w",
                           "selectivity_xty", "best_layer_w", "r2_w_bayes")

    def build(self, config: ICLProbeConfig, ctx: RunContext) -> ICLProbeData:
        name = config.model
        spec = get_spec(name)
        model, card, _ = load_icl_model(name, ctx.cache_dir)
        trained = TransformerLearner(model, card, model_id=name)
        control = TransformerLearner(control_model(name), model_id=name + ":untrained")
        d, n = spec.arch.d, spec.arch.n_points
        n_train, n_test = int(config.n_train), int(config.n_test)
        N = n_train + n_test
        xs, ys, w, xq, _ = sample_contexts(_rng(ctx.seed, self.name), N, n, 1, d, spec.recipe.noise_std)
        pos = config.position
        H = {"trained": trained.hidden(xs, ys, xq[:, 0], pos), "control": control.hidden(xs, ys, xq[:, 0], pos)}
        targets = {"w": w, "xty": np.einsum("bnd,bn->bd", xs, ys)}
        bayes = ridge_weights(xs[n_train:], ys[n_train:], problem_of(name).bayes_ridge_lambda)
        return ICLProbeData(H=H, targets=targets, n_train=n_train, n_layers=spec.arch.n_layers,
                            r2_w_bayes=r2_score(w[n_train:], bayes))

    def apply(self, method: Any, data: ICLProbeData, ctx: RunContext) -> dict[tuple[str, int, str], np.ndarray]:
        for attr in ("fit", "predict"):
            if not hasattr(method, attr):
                raise InvalidOutputError(f"method {method.name!r} has no {attr}()")
        tr = slice(0, data.n_train)
        te = slice(data.n_train, None)
        out = {}
        for model in PROBE_MODELS:
            for layer in range(data.n_layers + 1):
                H = data.H[model][layer]
                for target in PROBE_TARGETS:
                    T = data.targets[target]
                    fitted = method.fit(H[tr].copy(), T[tr].copy())
                    probe = method if fitted is None else fitted
                    pred = probe.predict(H[te].copy())
                    out[(model, layer, target)] = validate_array(
                        pred, T[te].shape, f"{method.name}.predict ({model} model, layer {layer}, target {target})")
        return out

    def evaluate(self, data: ICLProbeData, output: dict) -> dict[str, float]:
        te = slice(data.n_train, None)
        metrics: dict[str, float] = {"r2_w_bayes": data.r2_w_bayes}
        for model in PROBE_MODELS:
            suffix = "" if model == "trained" else "_control"
            for target in PROBE_TARGETS:
                r2 = [r2_score(data.targets[target][te], output[(model, layer, target)])
                      for layer in range(data.n_layers + 1)]
                for layer, value in enumerate(r2):
                    metrics[f"r2_{target}_layer{layer}{suffix}"] = value
                metrics[f"r2_{target}_best{suffix}"] = max(r2)
                metrics[f"best_layer_{target}{suffix}"] = float(int(np.argmax(r2)))
        for target in PROBE_TARGETS:
            metrics[f"selectivity_{target}"] = metrics[f"r2_{target}_best"] - metrics[f"r2_{target}_best_control"]
        return metrics


def probe_metrics(n_layers: int) -> tuple[MetricSpec, ...]:
    specs = [
        MetricSpec("r2_w_best", True, "held-out R^2 (pooled over dims) decoding w, best layer, trained model",
                   abs_tol=0.03),
        MetricSpec("r2_xty_best", True, "held-out R^2 decoding X^T y, best layer, trained model", abs_tol=0.03),
        MetricSpec("r2_w_best_control", False, "the same on the untrained control (lower = more selective probe)",
                   abs_tol=0.03, gated=False),
        MetricSpec("r2_xty_best_control", False, "the same for X^T y on the untrained control", abs_tol=0.03,
                   gated=False),
        MetricSpec("selectivity_w", True, "r2_w_best - r2_w_best_control", abs_tol=0.03),
        MetricSpec("selectivity_xty", True, "r2_xty_best - r2_xty_best_control", abs_tol=0.03),
        MetricSpec("r2_w_bayes", True, "R^2 of the Bayes posterior mean of w (ceiling for any probe)",
                   abs_tol=0.01, gated=False),
    ]
    for target in PROBE_TARGETS:
        specs.append(MetricSpec(f"best_layer_{target}", True, f"layer of the best {target} probe (0 = read-in)",
                                gated=False))
        specs.append(MetricSpec(f"best_layer_{target}_control", True, "the same on the control", gated=False))
        for layer in range(n_layers + 1):
            specs.append(MetricSpec(f"r2_{target}_layer{layer}", True, f"held-out R^2 for {target} at layer {layer}",
                                    abs_tol=0.03))
            specs.append(MetricSpec(f"r2_{target}_layer{layer}_control", False,
                                    f"held-out R^2 for {target} at layer {layer}, untrained control",
                                    abs_tol=0.03, gated=False))
    return tuple(specs)
