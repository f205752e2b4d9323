"""icl family: what algorithm does a small transformer's in-context regression implement?

- :mod:`harness.tasks.icl.model` -- the in-context learner (our GPT blocks, linear read-in / read-out), its
  deterministic training, committed weights and cache;
- :mod:`harness.tasks.icl.task` / :mod:`harness.tasks.icl.variants` -- the tasks ``icl/linear-d5``, ``icl/linear-d8-noisy`` (predictors)
  and ``icl/probe-d5``, ``icl/probe-d8-noisy`` (probes);
- :mod:`harness.tasks.icl.plots` -- error curves and probe R^2 by layer from result records.
"""

from harness.report.plots import register_plotter
from harness.tasks.icl import variants  # noqa: F401  (registers the tasks)
from harness.tasks.icl.plots import plot_icl

# error curves and probe R^2 by layer, written next to the leaderboard (results/plots/)
register_plotter("icl", plot_icl)
register_plotter("icl-probe", plot_icl)


def _register_builder() -> None:
    from harness.embedded.registry import ModelBuilder, register_model_builder
    from harness.tasks.icl import model

    register_model_builder(ModelBuilder(
        family="icl", names=lambda: list(model.ICL_MODEL_SPECS),
        build=lambda names, out, force: model.build_icl_models(out, names, force=force),
        check=lambda names: model.verify_icl_models(names),
        description="in-context linear regressors (6-layer GPT blocks, width 64), trained by the harness, ~4 min each",
    ))


_register_builder()
