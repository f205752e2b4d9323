"""The registered circuit tasks, one registration per variant: IOI and greater-than."""

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
