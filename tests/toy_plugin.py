"""A toy task family used by the core tests: predict a vector, scored by squared error.

Methods include deliberate failures (exception, NaN metric, wrong shape,
wrong type) so the runner's isolation can be tested.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.errors import InvalidOutputError
from harness.core.method import Method
from harness.core.registry import register_method, register_task
from harness.core.task import MetricSpec, Task


@dataclass(frozen=True)
class ToyConfig:
    n: int = 16
    noise: float = 0.0


@register_task("toy/vector", family="toy", version="1", description="copy a random vector")
class ToyTask(Task):
    metrics = (
        MetricSpec("err", False, "mean squared error", abs_tol=0.01),
        MetricSpec("score", True, "1 - err", abs_tol=0.01),
    )
    main_metric = "err"
    Config = ToyConfig

    def build(self, config, ctx):
        return np.random.default_rng(ctx.seed).normal(size=config.n)

    def apply(self, method, data, ctx):
        out = method.predict(data.copy())
        if not isinstance(out, np.ndarray):
            raise InvalidOutputError(f"predict must return a numpy array, got {type(out).__name__}")
        if out.shape != data.shape:
            raise InvalidOutputError(f"predict must return shape {data.shape}, got {out.shape}")
        return out

    def evaluate(self, data, output):
        err = float(np.mean((output - data) ** 2))
        return {"err": err, "score": 1.0 - err}


@register_method("toy-good", family="toy", version="1", description="adds seeded noise")
class Good(Method):
    def __init__(self, scale: float = 0.1):
        self.scale = scale

    def predict(self, x):
        return x + self.scale * np.random.default_rng(self.seed + 100).normal(size=x.shape)


@register_method("toy-zero", family="toy", version="1", description="predicts zeros", baseline=True)
class Zero(Method):
    def predict(self, x):
        return np.zeros_like(x)


@register_method("toy-fail", family="toy", version="1", description="raises")
class Fail(Method):
    def predict(self, x):
        raise RuntimeError("deliberate failure")


@register_method("toy-nan", family="toy", version="1", description="returns NaN")
class NaN(Method):
    def predict(self, x):
        return np.full_like(x, np.nan)


@register_method("toy-shape", family="toy", version="1", description="wrong shape")
class BadShape(Method):
    def predict(self, x):
        return x[:-1]


@register_method("toy-type", family="toy", version="1", description="wrong type")
class BadType(Method):
    def predict(self, x):
        return x.tolist()


def toy_spec(results_dir, methods, seeds=(0, 1, 2), **kw):
    """A run spec of the toy task on the CPU, no progress bar."""
    from harness.core.cell import RunSpec

    return RunSpec(tasks=["toy/vector"], methods=methods, seeds=list(seeds), results_dir=results_dir,
                   device="cpu", progress=False, **kw)
