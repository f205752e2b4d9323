"""Baselines of the icl families (DESIGN.md, "icl").

Predictors (family ``icl``): the classical in-context regressors the
transformer is compared with -- every one a thin wrapper of the closed forms
in :mod:`harness.protocols.icl` (the same functions the tasks use as SPD /
ILWD references, so a baseline's distance to its own reference is exactly 0).

Probes (family ``icl-probe``): ``mean-probe`` predicts the training mean of
the target (held-out R^2 <= 0 up to sampling): the floor every probe must
clear.  The other control of the probe family -- the same probe on the
untrained network -- is part of every probe cell's metrics (``*_control``).
"""

from __future__ import annotations

import numpy as np

from harness.protocols.icl import (
    DEFAULT_GD_STEPS,
    DEFAULT_RIDGE_LAMBDA,
    ICLPredictor,
    ICLProbe,
    averaging_weights,
    gd_weights,
    knn_predict,
    linear_predict,
    ols_weights,
    ridge_weights,
    zero_predict,
)
from harness.core.registry import register_method


def _noise_var(method: ICLPredictor) -> float:
    return 0.0 if method.problem is None else float(method.problem.noise_std**2)


@register_method("ols", version="1", baseline=True,
                 description="ordinary least squares, minimum-norm when under-determined (X^+ y)")
class OLS(ICLPredictor):
    def predict(self, xs, ys, x_query):
        return linear_predict(ols_weights(xs, ys), x_query)


@register_method("ridge", version="1", baseline=True,
                 description=f"ridge regression with a fixed penalty (default lam = {DEFAULT_RIDGE_LAMBDA})")
class Ridge(ICLPredictor):
    def __init__(self, lam: float = DEFAULT_RIDGE_LAMBDA):
        self.lam = lam

    def predict(self, xs, ys, x_query):
        return linear_predict(ridge_weights(xs, ys, self.lam), x_query)


@register_method("ridge-bayes", version="1", baseline=True,
                 description="ridge with the Bayes-optimal penalty noise_var / prior_var (posterior mean; OLS when noiseless)")
class RidgeBayes(ICLPredictor):
    def predict(self, xs, ys, x_query):
        if self.problem is None:
            raise RuntimeError("ridge-bayes needs the task's problem: call prepare(problem) first")
        return linear_predict(ridge_weights(xs, ys, self.problem.bayes_ridge_lambda), x_query)


@register_method("gd-1step", version="1", baseline=True,
                 description="one gradient-descent step from w = 0 (w = eta X^T y), eta risk-optimal per k unless given")
class GDOneStep(ICLPredictor):
    input_keys = ()  # lr names a rule

    def __init__(self, lr: float | str = "risk-optimal"):
        self.lr = lr

    def predict(self, xs, ys, x_query):
        return linear_predict(gd_weights(xs, ys, 1, self.lr, _noise_var(self)), x_query)


@register_method("gd-multistep", version="1", baseline=True,
                 description=f"{DEFAULT_GD_STEPS} full-batch gradient-descent steps from w = 0, step 1 / lambda_max(X^T X)")
class GDMultiStep(ICLPredictor):
    input_keys = ()  # lr names a rule

    def __init__(self, n_steps: int = DEFAULT_GD_STEPS, lr: float | str = "lipschitz"):
        self.n_steps, self.lr = n_steps, lr

    def predict(self, xs, ys, x_query):
        return linear_predict(gd_weights(xs, ys, self.n_steps, self.lr, _noise_var(self)), x_query)


@register_method("knn-3", version="1", baseline=True,
                 description="uniform 3-nearest-neighbour average of the in-context labels")
class KNN3(ICLPredictor):
    def __init__(self, n_neighbors: int = 3):
        self.n_neighbors = n_neighbors

    def predict(self, xs, ys, x_query):
        return knn_predict(xs, ys, x_query, self.n_neighbors)


@register_method("averaging", version="1", baseline=True,
                 description="Garg et al.'s averaging estimator w = mean_i y_i x_i")
class Averaging(ICLPredictor):
    def predict(self, xs, ys, x_query):
        return linear_predict(averaging_weights(xs, ys), x_query)


@register_method("zero", version="1", baseline=True, description="predicts 0 (the prior mean)")
class Zero(ICLPredictor):
    def predict(self, xs, ys, x_query):
        return zero_predict(xs, ys, x_query)


@register_method("mean-probe", version="1", baseline=True,
                 description="predicts the training mean of the target (R^2 floor)")
class MeanProbe(ICLProbe):
    def fit(self, H, T):
        self.mean_ = np.asarray(T, dtype=np.float64).mean(axis=0)
        return self

    def predict(self, H):
        return np.broadcast_to(self.mean_, (np.asarray(H).shape[0], self.mean_.shape[0])).copy()
