"""What each planted-circuit model is: its recipe, its designated circuit and the acceptance thresholds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from harness.embedded.recipe import GPTRecipe
from harness.embedded.schedule import warmup_cosine
from harness.errors import HarnessError

Head = tuple[int, int]

CARD_FORMAT = 1

#: Prompts of the quick re-verification done when a planted model is loaded.
QUICK_VERIFY_PROMPTS = 128

#: Acceptance thresholds (in code, not in the card, so a card cannot lower them).
THRESHOLDS = {
    "accuracy": 0.95,
    "circuit_min_drop": 0.3,
    "noncircuit_max_abs_drop": 0.05,
    "distractor_min_effect": 0.5,
}


@dataclass(frozen=True)
class PlantedRecipe(GPTRecipe):
    """Sizes and training hyper-parameters of one planted model (all recorded in the card).

    Schedule: ``warmup`` steps of linear warm-up, then cosine decay from ``lr`` to ``min_lr``.
    The sizes, betas and clip are :class:`~harness.embedded.recipe.GPTRecipe`'s defaults.
    """

    steps: int = 800
    batch: int = 32  # task prompts per block (clean, strict, each interchange)
    distractor_batch: int = 16  # distractor sequences per block (clean, mirror)
    lr: float = 3e-3
    min_lr: float = 3e-5
    warmup: int = 50
    weight_decay: float = 0.01
    #: weight of each loss term ("interchange" weighs every circuit head's interchange block)
    weights: tuple[tuple[str, float], ...] = (
        ("task", 1.0), ("strict", 1.0), ("match", 0.1), ("interchange", 1.0), ("attention", 1.0),
        ("distractor", 1.0), ("mirror", 1.0), ("distractor_attention", 1.0),
    )
    init_seed: int = 1234  # torch.manual_seed before the weights are initialised
    data_seed: int = 5678  # the one numpy generator of all training data
    # One thread: bitwise reproducible, and on this shared 2-core machine two threads were
    # 3.5x slower whenever other processes ran (OpenMP threads wait on each other).
    threads: int = 1
    verify_prompts: int = 512
    verify_seed: int = 987_654
    log_every: int = 100  # steps between training-history entries

    def lr_at(self, step: int) -> float:
        return warmup_cosine(step, steps=self.steps, lr=self.lr, warmup=self.warmup, min_lr=self.min_lr)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["weights"] = {k: v for k, v in self.weights}
        return d


@dataclass(frozen=True)
class PlantedSpec:
    """A planted model: its task, designated circuit (``(layer, head)`` pairs), head roles and recipe."""

    name: str
    task: str  # "ioi" or "greater_than"
    circuit: tuple[Head, ...]
    roles: dict[str, str]
    description: str
    recipe: PlantedRecipe = field(default_factory=PlantedRecipe)
    #: Positions at which each circuit head is patched in its interchange term (absent: every position).
    patch_positions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: Attention hint per circuit head: (query position, key position or a name the sampler resolves).
    attention_targets: dict[str, tuple[int, Any]] = field(default_factory=dict)
    #: Non-circuit heads given distractor jobs by attention hints: a previous-token head, and a head
    #: that attends, inside the repeat, to the token after the earlier occurrence of the current one.
    distractor_heads: dict[str, Head] = field(default_factory=lambda: {"previous_token": (0, 0), "induction": (1, 1)})


PLANTED: dict[str, PlantedSpec] = {
    "planted-ioi": PlantedSpec(
        name="planted-ioi",
        task="ioi",
        circuit=((0, 1), (1, 2), (2, 0)),
        roles={
            "0.1": "duplicate-token head: at S2 attends to S1 (the earlier occurrence of the repeated name) "
                   "and writes which name is repeated",
            "1.2": "S-inhibition head: at the last position attends to S2 and moves 0.1's signal there",
            "2.0": "name mover: at the last position attends to the name that is not inhibited (IO) and "
                   "copies it to the output",
        },
        description="IOI planted circuit 0.1 (duplicate token) -> 1.2 (S-inhibition) -> 2.0 (name mover)",
        recipe=PlantedRecipe(steps=800),
        # 0.1 is patched from S2 on (positions 9-13), 1.2 and 2.0 at the last position (13): patching
        # earlier positions too would let the model detect the patch (there the source's z encodes
        # other names) instead of using the signal; a trial did exactly that.
        patch_positions={"0.1": (9, 10, 11, 12, 13), "1.2": (13,), "2.0": (13,)},
        attention_targets={"0.1": (9, "s1"), "1.2": (13, "s2"), "2.0": (13, "io")},
    ),
    "planted-greater-than": PlantedSpec(
        name="planted-greater-than",
        task="greater_than",
        circuit=((0, 3), (1, 0), (2, 1)),
        roles={
            "0.3": "YY mover: from the last position attends to the two-digit year YY (attention ~1.0) "
                   "and writes it there",
            "1.0": "YY relay: at the last position reads the YY representation 0.3 wrote (diffuse attention, "
                   "largest on the last position itself) and passes it on",
            "2.1": "YY relay: at the last position passes YY's representation on (diffuse attention); the MLPs "
                   "then put probability on the years above YY",
        },
        description="greater-than planted circuit 0.3 -> 1.0 -> 2.1 (YY moved to the last position, then "
                    "relayed; each head necessary) + MLPs",
        # No attention hints here: hinting a relay through the ' to' and ' year' positions made
        # training stall (three small OV maps in series); the interchange terms alone give each
        # head its job and verification checks it.  Attention measured after training is in the card.
        recipe=PlantedRecipe(steps=1000, weights=(
            ("task", 1.0), ("strict", 1.0), ("match", 1.0), ("interchange", 1.0), ("attention", 0.0),
            ("distractor", 1.0), ("mirror", 1.0), ("distractor_attention", 1.0),
        )),
    ),
}



def head_name(h: Head) -> str:
    """``"layer.head"``, the key of a head in specs and cards."""
    return f"{h[0]}.{h[1]}"


def get_spec(name: str) -> PlantedSpec:
    """The spec of planted model ``name`` (``HarnessError`` naming the known ones otherwise)."""
    if name not in PLANTED:
        raise HarnessError(f"unknown planted model {name!r}; known: {', '.join(PLANTED)}")
    return PLANTED[name]


def circuit_mask(spec: PlantedSpec, r: PlantedRecipe) -> torch.Tensor:
    """Bool ``[n_layers, n_heads]``: True at the designated circuit's heads."""
    m = torch.zeros(r.n_layers, r.n_heads, dtype=torch.bool)
    for layer, head in spec.circuit:
        m[layer, head] = True
    return m


def single_head_mask(layer: int, head: int, r: PlantedRecipe) -> torch.Tensor:
    """Bool ``[n_layers, n_heads]``: True at ``layer.head`` only."""
    m = torch.zeros(r.n_layers, r.n_heads, dtype=torch.bool)
    m[layer, head] = True
    return m
