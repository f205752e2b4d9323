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
they run when named, and fail with a clear message when GPT-2 is not cached.
"""

from __future__ import annotations

from harness.core.registry import add_task
from harness.tasks.reconstruction.task import EmbeddedLMTask, GPT2Task, MiniLMTask

add_task("reconstruction/embedded-resid", EmbeddedLMTask, version="1", hook="resid",
         description="SAE fidelity on docstring-gpt's residual stream after block 1 (d=96)")
add_task("reconstruction/embedded-z", EmbeddedLMTask, version="1", hook="z",
         description="SAE fidelity on docstring-gpt's concatenated head outputs z of block 1 (d=96)")
add_task("reconstruction/minilm-resid", MiniLMTask, version="1", hook="resid",
         description="SAE fidelity on all-MiniLM-L6-v2's hidden state after layer 3 (d=384), real sentences")
add_task("reconstruction/minilm-z", MiniLMTask, version="1", hook="z",
         description="SAE fidelity on all-MiniLM-L6-v2's concatenated head outputs of layer 3 (d=384)")
add_task("reconstruction/gpt2-resid", GPT2Task, version="1", hook="resid",
         description="SAE fidelity on GPT-2 small's residual stream after block 6 (needs GPT-2 cached)")
add_task("reconstruction/gpt2-z", GPT2Task, version="1", hook="z",
         description="SAE fidelity on GPT-2 small's concatenated head outputs of block 6 (needs GPT-2 cached)")
