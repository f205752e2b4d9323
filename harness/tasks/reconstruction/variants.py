"""The registered reconstruction tasks, one registration per variant: ``reconstruction/<source>-<hook>``.

| task | activations | main metric |
|---|---|---|
| ``reconstruction/embedded-resid`` | docstring-gpt, residual stream after block 1 (of 3), d = 96 | loss_recovered |
| ``reconstruction/embedded-z`` | docstring-gpt, block 1's heads' outputs concatenated, d = 96 | loss_recovered |
| ``reconstruction/minilm-resid`` | all-MiniLM-L6-v2, hidden state after layer 3 (of 6), d = 384 | explained_variance |
| ``reconstruction/minilm-z`` | all-MiniLM-L6-v2, layer 3's heads' outputs concatenated, d = 384 | explained_variance |
| ``reconstruction/gpt2-resid`` | GPT-2 small (local HF cache), residual after block 6, d = 768 | loss_recovered |
| ``reconstruction/gpt2-z`` | GPT-2 small, block 6's heads' outputs concatenated, d = 768 | loss_recovered |

The GPT-2 tasks are not in the default suite (``GPT2Task.in_default_suite = False``):
they run when named, and fail with a clear message when GPT-2 is not cached. They read any
Hugging Face causal LM of a supported family given with ``--model`` (a hub id in the local
cache or a ``save_pretrained`` directory; ``--set layer=L`` picks the block), through the same
adapter as the circuits tasks.
"""

from __future__ import annotations

from harness.core.registry import add_task
from harness.tasks.reconstruction.task import EmbeddedLMTask, GPT2Task, MiniLMTask

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
