"""``check_method(family, MethodClass)``: does a method honour its family's contract?

What scikit-learn's ``check_estimator`` is to an estimator, this is to a method of the harness: a
plugin author calls it in a test (``check_method("clustering", MyMethod)``) and gets either a
:class:`ConformanceReport` or an :class:`~harness.errors.InvalidOutputError` naming the first broken rule.

Checked, in order:

1. metadata: the class derives from :class:`~harness.core.method.Method`, declares the family asked for,
   and (once registered) has a name, a version and a description;
2. parameters, scikit-learn style: every ``__init__`` argument has a default (or is given in ``params``),
   ``get_params()`` returns them unchanged, ``create(get_params())`` rebuilds an equal method, and an
   unknown parameter is a :class:`~harness.errors.ConfigError`;
3. the protocol: the method runs on a tiny seeded input of its family (clustering: 3 blobs; reconstruction:
   random activations; circuits: a 2-layer random GPT with clean / corrupted prompts, edge scores too where
   the method has ``score_edges``; icl: linear-regression contexts with an OLS learner; icl-probe: random
   hidden states) and its output passes the same validator the family's tasks use;
4. determinism: a second run with the same seed gives an identical output.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from harness.core.context import RunContext
from harness.core.method import Method
from harness.core.seeding import seed_everything
from harness.errors import ConfigError, InvalidOutputError


@dataclass
class ConformanceReport:
    """What :func:`check_method` checked and the output of the protocol run (plain arrays)."""

    family: str
    method: str
    params: dict[str, Any]
    checks: list[str] = field(default_factory=list)
    output: Any = None


# ------------------------------------------------------------------ family fixtures
def _run_clustering(method: Any, seed: int) -> np.ndarray:
    from harness.protocols.clustering import validate_labels

    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0, 0.0], [4.0, 4.0, 0.0, 0.0], [0.0, 4.0, 4.0, 4.0]])
    X = np.concatenate([c + rng.normal(size=(20, 4)) for c in centres]).astype(np.float32)
    return validate_labels(method.fit_predict(X.copy(), 3), len(X), 3)


def _run_reconstruction(method: Any, seed: int) -> np.ndarray:
    from harness.protocols.reconstruction import validate_codes, validate_reconstruction

    g = torch.Generator().manual_seed(seed)
    train, test = torch.randn(256, 16, generator=g), torch.randn(64, 16, generator=g)
    kw: dict[str, Any] = {}
    if getattr(method, "uses_gradients", False):
        kw = {"grads": torch.randn(256, 16, generator=g)}
    method.fit(train.clone(), **kw)
    if kw:
        kw = {"grads": torch.randn(64, 16, generator=g)}
    codes = validate_codes(method.encode(test.clone(), **kw), 64)
    return validate_reconstruction(method.decode(codes), (64, 16)).numpy()


def _run_circuits(method: Any, seed: int) -> np.ndarray:
    from harness.models.gpt import GPT, GPTConfig, HookedGPT
    from harness.models.tokenizer import WordTokenizer
    from harness.protocols.circuits import CircuitData, LastTokenMetric, validate_scores, validate_selection

    torch.manual_seed(seed)
    cfg = GPTConfig(n_layers=2, n_heads=2, d_model=16, d_mlp=32, vocab_size=12, n_ctx=6)
    model = HookedGPT(GPT(cfg).eval(), WordTokenizer([f"w{i}" for i in range(12)]), model_id="conformance")
    g = torch.Generator().manual_seed(seed + 1)
    clean = torch.randint(0, 12, (8, 6), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1:3] = torch.randint(0, 12, (8, 2), generator=g)
    metric = LastTokenMetric(torch.tensor([1, 2]), lambda last: last[..., 0] - last[..., 1], "logit_diff")
    data = CircuitData(model, clean, corrupted, metric, "conformance")
    scores = validate_scores(method.score_heads(model, data), (2, 2), method.name)
    selection = method.select_heads(model, data, scores.copy()) if hasattr(method, "select_heads") else None
    if selection is not None:
        validate_selection(selection, (2, 2), method.name)
    if callable(getattr(method, "score_edges", None)):  # the optional edge half of the protocol
        from harness.protocols.edges import validate_edge_scores

        edges = validate_edge_scores(method.score_edges(model, data), model.edge_graph().n_edges, method.name)
        return np.concatenate([scores.ravel(), edges])
    return scores


class _OLSLearner:
    """A stand-in for a trained in-context learner: OLS on every prefix (the icl fixture's ``learner``)."""

    model_id, d, n_points = "ols", 3, 5

    def predict_prefixes(self, xs: np.ndarray, ys: np.ndarray, x_query: np.ndarray) -> np.ndarray:
        from harness.protocols.icl import ICLProblem, reference_predictions

        return reference_predictions("ols", ICLProblem(d=3, n_points=5), xs, ys, x_query)


def _run_icl(method: Any, seed: int) -> np.ndarray:
    from harness.protocols.icl import ICLProblem, validate_array

    rng = np.random.default_rng(seed)
    xs, xq = rng.normal(size=(4, 5, 3)), rng.normal(size=(4, 2, 3))
    ys = np.einsum("bnd,bd->bn", xs, rng.normal(size=(4, 3)))
    if hasattr(method, "prepare"):
        method.prepare(ICLProblem(d=3, n_points=5, learner=_OLSLearner()))
    return validate_array(method.predict_prefixes(xs, ys, xq), (4, 6, 2), f"{method.name}.predict_prefixes")


def _run_icl_probe(method: Any, seed: int) -> np.ndarray:
    from harness.protocols.icl import validate_array

    rng = np.random.default_rng(seed)
    H = rng.normal(size=(80, 8))
    T = H[:, :3] @ rng.normal(size=(3, 2)) + 0.1 * rng.normal(size=(80, 2))
    fitted = method.fit(H[:60].copy(), T[:60].copy())
    probe = method if fitted is None else fitted
    return validate_array(probe.predict(H[60:].copy()), (20, 2), f"{method.name}.predict")


FIXTURES: dict[str, Callable[[Any, int], np.ndarray]] = {
    "clustering": _run_clustering,
    "reconstruction": _run_reconstruction,
    "circuits": _run_circuits,
    "icl": _run_icl,
    "icl-probe": _run_icl_probe,
}


# ------------------------------------------------------------------ the checks
def _check_metadata(family: str, cls: type, report: ConformanceReport) -> None:
    if not (inspect.isclass(cls) and issubclass(cls, Method)):
        raise InvalidOutputError(f"{cls!r} is not a subclass of harness.core.method.Method")
    if cls.family != family:
        raise InvalidOutputError(f"{cls.__qualname__} declares family {cls.family!r}, not {family!r}: derive from "
                                 f"the {family} protocol's base class")
    if cls.name and not (cls.version and cls.description):
        raise InvalidOutputError(f"method {cls.name!r} is registered without a version or a description")
    report.checks.append("metadata")


def _check_params(cls: type, params: Mapping[str, Any], report: ConformanceReport) -> None:
    missing = [p for p in cls.param_names() if p not in cls.default_params() and p not in params]
    if missing:
        raise InvalidOutputError(f"{cls.__qualname__}: __init__ arguments without a default: {', '.join(missing)} "
                                 "(give every hyper-parameter a default, as scikit-learn estimators do)")
    method = cls.create(dict(params))
    got = method.get_params()
    expected = {**cls.default_params(), **params}
    if set(got) != set(cls.param_names()) or any(got[k] is not expected[k] and got[k] != expected[k] for k in got):
        raise InvalidOutputError(f"{cls.__qualname__}: get_params() returned {got}, expected {expected} "
                                 "(store each __init__ argument unchanged under its own name)")
    if cls.create(got).get_params() != got:
        raise InvalidOutputError(f"{cls.__qualname__}: create(get_params()) does not rebuild the same parameters")
    try:
        cls.create({"__no_such_parameter__": 1})
    except ConfigError:
        pass
    else:
        raise InvalidOutputError(f"{cls.__qualname__}: an unknown parameter was accepted")
    report.checks.append("parameters")


def _run_once(cls: type, params: Mapping[str, Any], family: str, seed: int) -> np.ndarray:
    method = cls.create(dict(params))
    seed_everything(seed)
    method.setup(RunContext(seed=seed, device=torch.device("cpu"), cache_dir=Path(".")))
    return np.asarray(FIXTURES[family](method, seed))


def check_method(family: str, method_cls: type, params: Mapping[str, Any] | None = None,
                 seed: int = 0) -> ConformanceReport:
    """Check ``method_cls`` against the contract of ``family`` (see the module docstring).

    ``params``: hyper-parameters to use (e.g. fewer epochs, or a required path); the defaults otherwise.
    Raises :class:`InvalidOutputError` (or the method's own exception) at the first broken rule.
    """
    if family not in FIXTURES:
        raise ConfigError(f"unknown family {family!r}; check_method knows {', '.join(sorted(FIXTURES))}")
    params = dict(params or {})
    report = ConformanceReport(family, getattr(method_cls, "name", "") or method_cls.__qualname__, params)
    _check_metadata(family, method_cls, report)
    _check_params(method_cls, params, report)
    first = _run_once(method_cls, params, family, seed)
    report.checks.append("protocol")
    second = _run_once(method_cls, params, family, seed)
    if first.shape != second.shape or not np.array_equal(first, second):
        raise InvalidOutputError(f"{report.method}: two runs with seed {seed} gave different outputs "
                                 "(seed every random generator from self.seed)")
    report.checks.append("determinism")
    report.output = first
    return report
