"""The registered icl tasks, one registration per variant: predictors and probes on the d = 5 and d = 8 learners.

The default suite has the predictor tasks of all four learners and the probes of the two long-trained ones
(``icl/probe-d5-long``, ``icl/probe-d8-noisy-long``): with the short learners' probes too (8 tasks, 144 cells)
it took 141 s cold on an idle 2-core machine, over the family's 2-minute budget; those two (``icl/probe-d5``,
``icl/probe-d8-noisy``: the same finding, nothing linear) run by name.
"""

from __future__ import annotations

from harness.core.registry import add_task
from harness.embedded.icl_learner import get_spec
from harness.tasks.icl.task import ICLPredictorTask, ICLProbeTask, predictor_metrics, probe_metrics


def _predictor(name: str, model: str, description: str) -> None:
    arch = get_spec(model).arch
    add_task(name, ICLPredictorTask, version="1", description=description, metrics=predictor_metrics(arch.n_points),
             defaults={"model": model, "n_queries": 2 * arch.d})


def _probe(name: str, model: str, description: str, in_default_suite: bool = True) -> None:
    add_task(name, ICLProbeTask, version="1", description=description,
             metrics=probe_metrics(get_spec(model).arch.n_layers), defaults={"model": model},
             in_default_suite=in_default_suite)


_predictor("icl/linear-d5", "icl-d5",
           "in-context linear regression, d = 5, noiseless, up to 11 examples: error curve, SPD / ILWD to the "
           "trained transformer and to OLS, ridge, GD, 3-NN, averaging, zero")
_predictor("icl/linear-d8-noisy", "icl-d8-noisy",
           "in-context linear regression, d = 8, noise std 0.5 (Bayes: ridge lambda 0.25), up to 17 examples: "
           "error curve, SPD / ILWD to the trained transformer and classical predictors")
_predictor("icl/linear-d5-long", "icl-d5-long",
           "in-context linear regression, d = 5, noiseless, up to 11 examples, on icl-d5's architecture trained "
           "~6x longer (mean SPD to OLS < 0.01): error curve, SPD / ILWD to the transformer and classical predictors")
_predictor("icl/linear-d8-noisy-long", "icl-d8-noisy-long",
           "in-context linear regression, d = 8, noise std 0.5 (Bayes: ridge lambda 0.25), up to 17 examples, on "
           "icl-d8-noisy's architecture trained ~8x longer: error curve, SPD / ILWD to the transformer and "
           "classical predictors")
_probe("icl/probe-d5", "icl-d5",
       "per-layer probes decoding w and X^T y from the query token of the d = 5 learner (held-out R^2), "
       "trained model vs its untrained initialisation", in_default_suite=False)
_probe("icl/probe-d5-long", "icl-d5-long",
       "per-layer probes decoding w and X^T y from the query token of the longer-trained d = 5 learner "
       "(icl-d5-long), trained model vs its untrained initialisation")
_probe("icl/probe-d8-noisy", "icl-d8-noisy",
       "per-layer probes decoding w and X^T y from the query token of the d = 8 noisy learner, "
       "trained model vs its untrained initialisation", in_default_suite=False)
_probe("icl/probe-d8-noisy-long", "icl-d8-noisy-long",
       "per-layer probes decoding w and X^T y from the query token of the longer-trained d = 8 noisy learner "
       "(icl-d8-noisy-long), trained model vs its untrained initialisation")
