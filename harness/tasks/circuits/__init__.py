"""Circuits family: find the attention heads of a known circuit (IOI, greater-than).

- :mod:`harness.data.prompts`: prompt generators (pure, deterministic in the seed);
- :mod:`harness.data.circuits`: task metrics and tokenised splits for any hooked model;
- :mod:`harness.tasks.circuits.ground_truth`: GPT-2 small's published heads, user JSON files;
- :mod:`harness.tasks.circuits.task`: the circuit task (build, apply, evaluate) and its config;
- :mod:`harness.tasks.circuits.curves`: MIB's faithfulness curves f(k) of head scores (CPR, CMD);
- :mod:`harness.tasks.circuits.plots`: ROC and faithfulness-curve figures from the records;
- :mod:`harness.tasks.circuits.variants`: the registered tasks ``circuits/ioi`` and ``circuits/greater_than``.

The embedded planted-circuit models these tasks use by default are trained, verified and loaded by
:mod:`harness.embedded.planted`.
"""

from harness.tasks.circuits import variants  # noqa: F401  (registers the tasks)


def _register_plotter() -> None:
    from harness.report.plots import register_plotter
    from harness.tasks.circuits.plots import plot_circuits

    register_plotter("circuits", plot_circuits, per_task=True)


_register_plotter()
