"""The registered reconstruction tasks, one registration per variant: ``reconstruction/<source>-<hook>``.

| task | activations | main metric |
|---|---|---|
| ``reconstruction/embedded-resid`` | docstring-gpt, residual stream after block 1 (of 3), d = 96 | loss_recovered |
| ``reconstruction/embedded-z`` | docstring-gpt, block 1's heads' outputs concatenated, d = 96 | loss_recovered |
| ``reconstruction/minilm-resid`` | all-MiniLM-L6-v2, hidden state after layer 3 (of 6), d = 384 | explained_variance |
| ``reconstruction/minilm-z`` | all-MiniLM-L6-v2, layer 3's heads' outputs concatenated, d = 384 | explained_variance |
| ``reconstruction/gpt2-resid`` | GPT-2 small (local HF cache), residual after block 6, d = 768 | loss_recovered |
| ``reconstruction/gpt2-z`` | GPT-2 small, block 6's heads' outputs concatenated, d = 768 | loss_recovered |
| ``reconstruction/synthetic-64`` | 256 known features in 64 dims (:mod:`.synthetic`), 5 active on average | mmcs |
| ``reconstruction/synthetic-128`` | 512 known features in 128 dims, 10 active on average, Gaussian noise | mmcs |

The GPT-2 tasks are not in the default suite (``GPT2Task.in_default_suite = False``):
they run when named, and fail with a clear message when GPT-2 is not cached. They read any
Hugging Face causal LM of a supported family given with ``--model`` (a hub id in the local
cache or a ``save_pretrained`` directory; ``--set layer=L`` picks the block), through the same
adapter as the circuits tasks.
"""

from __future__ import annotations

from harness.core.registry import add_task
from harness.tasks.reconstruction.task import EmbeddedLMTask, GPT2Task, MiniLMTask, SyntheticTask

HOOKS = {"resid": "residual stream after", "z": "concatenated head outputs z of"}
SOURCES = (  # (task prefix, task class, what the activations are, where)
    ("embedded", EmbeddedLMTask, "docstring-gpt's {what} block 1 (d=96)"),
    ("minilm", MiniLMTask, "all-MiniLM-L6-v2's {what} layer 3 (d=384), real sentences"),
    ("gpt2", GPT2Task, "GPT-2 small's {what} block 6 (d=768; needs GPT-2 cached; or any HF causal LM via --model)"),
)

for prefix, task_cls, where in SOURCES:
    for hook, what in HOOKS.items():
        add_task(f"reconstruction/{prefix}-{hook}", task_cls, version="2", hook=hook,
                 description="SAE fidelity on " + where.format(what=what))

#: the known-truth tasks: every generator parameter is a config value (SyntheticConfig), so it enters the
#: cells' identity; the mean number of active features is d / 12 rounded down (the TopK family's default k);
#: n_train sets the SAEs' training steps (6 epochs of 512-row batches: 768 and 576 steps), sized so that the
#: family's new cells stay within a few minutes on 2 cores
SYNTHETIC = {
    "synthetic-64": dict(d=64, n_features=256, mean_active=5.0, n_groups=16, group_size=4, noise_std=0.0),
    "synthetic-128": dict(d=128, n_features=512, mean_active=10.0, n_groups=32, group_size=4, noise_std=0.05,
                          n_train=49152),
}
for name, values in SYNTHETIC.items():
    add_task(f"reconstruction/{name}", SyntheticTask, version="1", defaults=values,
             description=f"known truth: {values['n_features']} features in superposition in {values['d']} dims "
                         f"(power-law frequencies, correlated groups); MMCS, recovery, active-set precision/recall")
