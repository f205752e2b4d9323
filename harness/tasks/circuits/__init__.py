"""Circuits family: find the attention heads of a known circuit (IOI, greater-than).

- :mod:`harness.tasks.circuits.prompts`: prompt generators (pure, deterministic in the seed);
- :mod:`harness.tasks.circuits.data`: task metrics and tokenised splits for any hooked model;
- :mod:`harness.tasks.circuits.ground_truth`: GPT-2 small's published heads, user JSON files;
- :mod:`harness.tasks.circuits.planted`: the embedded planted-circuit models (build, verify, load);
- :mod:`harness.tasks.circuits.task`: the circuit task (build, apply, evaluate) and its config;
- :mod:`harness.tasks.circuits.variants`: the registered tasks ``circuits/ioi`` and ``circuits/greater_than``.
"""

from harness.tasks.circuits import variants  # noqa: F401  (registers the tasks)


def _register_builder() -> None:
    from harness.embedded.registry import ModelBuilder, register_model_builder
    from harness.tasks.circuits import cli_hooks

    register_model_builder(ModelBuilder(
        family="circuits", names=cli_hooks.model_names,
        build=lambda names, out, force: cli_hooks.models_build(names, out, force),
        check=lambda names: cli_hooks.models_check(names),
        description="planted-circuit GPTs (3 layers x 4 heads, width 64), trained and verified by the harness",
    ))


_register_builder()


def _register_plotter() -> None:
    from harness.report.plots import register_plotter
    from harness.tasks.circuits.plots import plot_circuit_rocs

    register_plotter("circuits", plot_circuit_rocs)


_register_plotter()
