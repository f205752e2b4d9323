"""The registered circuit tasks, one registration per variant: IOI, greater-than, and the IOI trap models.

The trap variants (``circuits/ioi-negative``, ``-redundant``, ``-busy``, ``-saturated``, ``-saturated-sharp``,
``-cancel``, ``-opposing``) score heads on
the planted models of :data:`harness.embedded.planted.specs.TRAP_SPECS`: the IOI task on a model with a
known failure mode planted (its card says which methods it should defeat and why).  They are in the
default suite: the family's 9 tasks x every circuits method x seeds 0 1 2 (354 cells) ran in 154-182 s from a
cold cache on an otherwise idle 2-core machine (README, "Circuit trap models").
"""

from __future__ import annotations

from harness.core.registry import add_task
from harness.data import circuits as D
from harness.tasks.circuits.task import CircuitTask

add_task(
    "circuits/ioi", CircuitTask, version="1",
    description=(
        "indirect object identification (Wang et al.): 'When A and B went to the PLACE, B gave a OBJECT to' -> A; "
        "ABBA/BABA, corrupted = ABC; metric logit(IO) - logit(S); heads scored against the planted or published circuit"
    ),
    task_key="ioi", vocabulary=D.ioi_vocabulary, split=D.ioi_split, defaults={"model": "planted-ioi"},
)
add_task(
    "circuits/greater_than", CircuitTask, version="1",
    description=(
        "greater-than (Hanna et al.): 'The NOUN lasted from the year XXYY to the year XX' -> any YY' > YY; "
        "corrupted YY = 01; metric P(YY' > YY) - P(YY' <= YY); heads scored against the planted or published circuit"
    ),
    task_key="greater_than", vocabulary=D.greater_than_vocabulary, split=D.greater_than_split,
    defaults={"model": "planted-greater-than"},
)


_TRAPS = {
    "negative": "a negative name mover (its ablation raises the metric) is part of the ground truth",
    "redundant": "two redundant S-inhibition heads (each alone suffices; both resample-ablated break the task) are both "
                 "in the ground truth",
    "busy": "busy but irrelevant heads attend to and copy the names like circuit heads but nothing reads them",
    "saturated": "upstream circuit heads act only through a saturated attention pattern (gradient ~0, ablation "
                 "drop large)",
    "saturated-sharp": "as ioi-saturated with the saturated head's attention logits x30 after training: its switch "
                       "between keys takes ~0.4% of a path from corrupted to clean, which integrated gradients' few "
                       "points miss",
    "cancel": "a circuit head changes every prompt's logit difference, up on ABBA and down on BABA prompts, so its "
              "effect on the mean over prompts cancels (ground truth by per-prompt effect)",
    "opposing": "two non-circuit heads that cancel each other: either ablated alone moves the logit difference more "
                "than any circuit head, both together change nothing (ground truth: minimal faithful circuits)",
}
for _trap, _what in _TRAPS.items():
    add_task(
        f"circuits/ioi-{_trap}", CircuitTask, version="1",
        description=f"IOI on the planted trap model planted-ioi-{_trap}: {_what}; heads scored against its card",
        task_key="ioi", vocabulary=D.ioi_vocabulary, split=D.ioi_split, defaults={"model": f"planted-ioi-{_trap}"},
    )
