"""icl protocols: in-context regression predictors and hidden-state probes.

Two families, one small protocol each (plain numpy arrays in and out):

- ``icl`` -- :class:`ICLPredictor`.  The task first calls
  ``prepare(problem)`` with the :class:`ICLProblem` (dimension, noise level,
  prior, and the task's trained in-context learner), then
  ``predict_prefixes(xs [B, n, d], ys [B, n], x_query [B, m, d])`` which
  returns ``y_hat [B, n + 1, m]``: for every context ``b``, every prefix
  length ``k = 0..n`` (the first ``k`` examples) and every query ``j``, the
  prediction of ``y`` at ``x_query[b, j]``.  Predictors that answer one
  prefix at a time implement ``predict(xs [B, k, d], ys [B, k], x_query [B,
  m, d]) -> [B, m]`` and inherit ``predict_prefixes`` (a loop over ``k``).
- ``icl-probe`` -- :class:`ICLProbe`: ``fit(H [N, d_hidden], T [N, t]) ->
  self`` (scikit-learn semantics: every call starts afresh), ``predict(H) ->
  T_hat [N, t]``.

The closed-form reference predictors (OLS, ridge, gradient descent, k-NN,
averaging, zero) are defined here once, as functions of plain arrays: the
baselines wrap them, and the tasks use them as the references that SPD and
ILWD are measured against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from harness.core.method import Method
from harness.errors import InvalidOutputError


# ---------------------------------------------------------------- data types
class InContextLearner(Protocol):
    """What a task hands predictors as its trained model (e.g. a small GPT).

    ``predict_prefixes`` has the signature and output of
    :meth:`ICLPredictor.predict_prefixes`; ``model_id`` names the model.
    """

    model_id: str
    d: int
    n_points: int

    def predict_prefixes(self, xs: np.ndarray, ys: np.ndarray, x_query: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ICLProblem:
    """The regression problem of an icl task: ``y = w . x + N(0, noise_std^2)``.

    ``w ~ N(0, prior_std^2 I_d)``, ``x ~ N(0, I_d)``, contexts of up to
    ``n_points`` examples.  ``learner``: the task's trained in-context learner
    (None when the task has none).
    """

    d: int
    n_points: int
    noise_std: float = 0.0
    prior_std: float = 1.0
    learner: Any = None

    @property
    def bayes_ridge_lambda(self) -> float:
        """The ridge penalty of the posterior mean: ``noise_std^2 / prior_std^2`` (0 = min-norm OLS)."""
        return float(self.noise_std**2 / self.prior_std**2)


# ---------------------------------------------------------------- protocols
class ICLPredictor(Method):
    """An in-context regression predictor (see the module docstring)."""

    family = "icl"
    problem: ICLProblem | None = None

    def prepare(self, problem: ICLProblem) -> "ICLPredictor":
        """Receive the task's problem description (and learner) before predicting."""
        self.problem = problem
        return self

    def predict(self, xs: np.ndarray, ys: np.ndarray, x_query: np.ndarray) -> np.ndarray:
        """Predictions ``[B, m]`` at ``x_query [B, m, d]`` from the ``k`` examples ``xs [B, k, d]``, ``ys [B, k]``."""
        raise NotImplementedError

    def predict_prefixes(self, xs: np.ndarray, ys: np.ndarray, x_query: np.ndarray) -> np.ndarray:
        """Predictions ``[B, n + 1, m]`` for every prefix ``k = 0..n`` (default: :meth:`predict` per ``k``)."""
        n = xs.shape[1]
        return np.stack([np.asarray(self.predict(xs[:, :k], ys[:, :k], x_query)) for k in range(n + 1)], axis=1)


class ICLProbe(Method):
    """A probe decoding a target from hidden states (see the module docstring)."""

    family = "icl-probe"

    def fit(self, H: np.ndarray, T: np.ndarray) -> "ICLProbe":
        raise NotImplementedError

    def predict(self, H: np.ndarray) -> np.ndarray:
        raise NotImplementedError


# ---------------------------------------------------------------- reference predictors
# Weight functions: xs [B, k, d], ys [B, k] -> w [B, d] (float64); k = 0 gives w = 0.

def ols_weights(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Minimum-norm least squares ``w = X^+ y`` (the Bayes predictor of noiseless data for k < d)."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    if xs.shape[1] == 0:
        return np.zeros((xs.shape[0], xs.shape[2]))
    return np.einsum("bdk,bk->bd", np.linalg.pinv(xs), ys)


def ridge_weights(xs: np.ndarray, ys: np.ndarray, lam: float) -> np.ndarray:
    """Ridge ``w = (X^T X + lam I)^{-1} X^T y``; ``lam = 0`` is :func:`ols_weights` (min-norm)."""
    if lam < 0:
        raise ValueError(f"ridge penalty must be >= 0, got {lam}")
    if lam == 0:
        return ols_weights(xs, ys)
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    d = xs.shape[2]
    A = np.einsum("bkd,bke->bde", xs, xs) + lam * np.eye(d)
    b = np.einsum("bkd,bk->bd", xs, ys)
    return np.linalg.solve(A, b[..., None])[..., 0]


def gd_step_size(k: int, d: int, noise_var: float = 0.0) -> float:
    """Risk-minimising step of one GD step from 0 on ``L(w) = 1/2 ||X w - y||^2``.

    For ``x ~ N(0, I_d)``, ``w ~ N(0, I_d)`` and noise variance ``s^2``:
    ``E ||eta X^T y - w||^2`` is minimised by ``eta = 1 / (k + d + 1 + s^2)``
    (uses ``E[(X^T X)^2] = k (k + d + 1) I``).
    """
    return 1.0 / (k + d + 1 + noise_var)


def gd_weights(xs: np.ndarray, ys: np.ndarray, n_steps: int = 1, lr: float | str = "risk-optimal",
               noise_var: float = 0.0) -> np.ndarray:
    """``n_steps`` of full-batch gradient descent from ``w = 0`` on ``1/2 ||X w - y||^2``.

    ``lr``: a number; ``"risk-optimal"``: :func:`gd_step_size` for the
    current ``k`` (the best single step on average; not stable for many
    steps); ``"lipschitz"``: ``1 / lambda_max(X^T X)`` per context (the
    textbook 1/L step: monotone, converges to the min-norm OLS solution).
    One step gives ``w = lr X^T y``.
    """
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    B, k, d = xs.shape
    A = np.einsum("bkd,bke->bde", xs, xs)
    b = np.einsum("bkd,bk->bd", xs, ys)
    if lr == "risk-optimal":
        eta = np.full((B, 1), gd_step_size(k, d, noise_var))
    elif lr == "lipschitz":
        lam_max = np.linalg.eigvalsh(A)[:, -1] if k else np.ones(B)
        eta = 1.0 / np.maximum(lam_max, 1e-12)[:, None]
    elif isinstance(lr, str):
        raise ValueError(f"unknown step size {lr!r}; use a number, 'risk-optimal' or 'lipschitz'")
    else:
        eta = np.full((B, 1), float(lr))
    w = np.zeros((B, d))
    for _ in range(n_steps):
        w = w - eta * (np.einsum("bde,be->bd", A, w) - b)
    return w


def averaging_weights(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Garg et al.'s averaging estimator ``w = (1/k) sum_i y_i x_i`` (0 for ``k = 0``)."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    k = xs.shape[1]
    return np.einsum("bkd,bk->bd", xs, ys) / max(k, 1)


def linear_predict(w: np.ndarray, x_query: np.ndarray) -> np.ndarray:
    """``[B, d]``, ``[B, m, d]`` -> ``[B, m]``."""
    return np.einsum("bmd,bd->bm", np.asarray(x_query, np.float64), w)


def knn_predict(xs: np.ndarray, ys: np.ndarray, x_query: np.ndarray, n_neighbors: int = 3) -> np.ndarray:
    """Uniform k-NN: mean ``y`` of the ``n_neighbors`` nearest (Euclidean) examples; all when fewer; 0 when none."""
    xs, ys, x_query = (np.asarray(a, np.float64) for a in (xs, ys, x_query))
    B, k, _ = xs.shape
    if k == 0:
        return np.zeros(x_query.shape[:2])
    nn = min(n_neighbors, k)
    dist = ((x_query[:, :, None, :] - xs[:, None, :, :]) ** 2).sum(-1)  # [B, m, k]
    idx = np.argsort(dist, axis=-1, kind="stable")[..., :nn]
    return np.take_along_axis(np.broadcast_to(ys[:, None, :], dist.shape), idx, axis=-1).mean(-1)


def zero_predict(xs: np.ndarray, ys: np.ndarray, x_query: np.ndarray) -> np.ndarray:
    return np.zeros(np.asarray(x_query).shape[:2])


def linear_prefix_predict(weight_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], xs: np.ndarray,
                          ys: np.ndarray, x_query: np.ndarray) -> np.ndarray:
    """``[B, n + 1, m]`` predictions of a linear predictor ``weight_fn(xs_k, ys_k) -> w`` for every prefix."""
    n = xs.shape[1]
    return np.stack([linear_predict(weight_fn(xs[:, :k], ys[:, :k]), x_query) for k in range(n + 1)], axis=1)


def reference_predictions(name: str, problem: ICLProblem, xs: np.ndarray, ys: np.ndarray,
                          x_query: np.ndarray) -> np.ndarray:
    """Predictions ``[B, n + 1, m]`` of the reference predictor ``name`` (one of :data:`REFERENCE_PREDICTORS`)."""
    s2 = problem.noise_std**2
    weight_fns: dict[str, Callable] = {
        "ols": ols_weights,
        "ridge_bayes": lambda X, y: ridge_weights(X, y, problem.bayes_ridge_lambda),
        "ridge": lambda X, y: ridge_weights(X, y, DEFAULT_RIDGE_LAMBDA),
        "gd_1step": lambda X, y: gd_weights(X, y, 1, "risk-optimal", s2),
        "gd_multistep": lambda X, y: gd_weights(X, y, DEFAULT_GD_STEPS, "lipschitz"),
        "averaging": averaging_weights,
    }
    if name in weight_fns:
        return linear_prefix_predict(weight_fns[name], xs, ys, x_query)
    n = xs.shape[1]
    if name == "knn3":
        return np.stack([knn_predict(xs[:, :k], ys[:, :k], x_query, 3) for k in range(n + 1)], axis=1)
    if name == "zero":
        return np.zeros((xs.shape[0], n + 1, x_query.shape[1]))
    raise KeyError(f"unknown reference predictor {name!r}; known: {', '.join(REFERENCE_PREDICTORS)}")


#: Fixed ridge penalty of the plain ``ridge`` reference (Akyurek et al.'s Ridge(0.5)).
DEFAULT_RIDGE_LAMBDA = 0.5
#: Steps of the ``gd_multistep`` reference.
DEFAULT_GD_STEPS = 10
#: The classical references every icl predictor is compared with (SPD / ILWD).
REFERENCE_PREDICTORS = ("ols", "ridge_bayes", "ridge", "gd_1step", "gd_multistep", "knn3", "averaging", "zero")


# ---------------------------------------------------------------- output validation
def validate_array(out: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A method's output: a numpy float array of ``shape`` with finite entries (float64 copy)."""
    if not isinstance(out, np.ndarray):
        raise InvalidOutputError(f"{what} must return a numpy array, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise InvalidOutputError(f"{what} must return shape {tuple(shape)}, got {out.shape}")
    if not (np.issubdtype(out.dtype, np.floating) or np.issubdtype(out.dtype, np.integer)):
        raise InvalidOutputError(f"{what} must return real numbers, got dtype {out.dtype}")
    out = out.astype(np.float64)
    if not np.isfinite(out).all():
        bad = int((~np.isfinite(out)).sum())
        raise InvalidOutputError(f"{what} returned {bad} non-finite values (NaN or inf)")
    return out
