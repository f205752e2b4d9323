"""icl family: what algorithm does a small transformer's in-context regression implement?

- :mod:`harness.tasks.icl.task` / :mod:`harness.tasks.icl.variants` -- the tasks ``icl/linear-d5``, ``icl/linear-d8-noisy`` (predictors)
  and ``icl/probe-d5``, ``icl/probe-d8-noisy`` (probes);
- :mod:`harness.tasks.icl.plots` -- error curves and probe R^2 by layer from result records.

The in-context learner the tasks evaluate (our GPT blocks, linear read-in / read-out), its deterministic
training and committed weights live in :mod:`harness.embedded.icl_learner`.
"""

from harness.report.plots import register_plotter
from harness.tasks.icl import variants  # noqa: F401  (registers the tasks)
from harness.tasks.icl.plots import plot_icl

# error curves and probe R^2 by layer, written next to the leaderboard (results/plots/)
register_plotter("icl", plot_icl, per_task=True)
register_plotter("icl-probe", plot_icl, per_task=True)
