"""What each planted-circuit model is: its recipe, its designated circuit and the acceptance thresholds."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from harness.embedded.recipe import GPTRecipe
from harness.embedded.planted import trap_notes
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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PlantedRecipe":
        """The recipe of a card's ``recipe`` entry (the inverse of :meth:`to_dict`)."""
        d = dict(data)
        if isinstance(d.get("weights"), dict):
            d["weights"] = tuple((k, float(v)) for k, v in d["weights"].items())
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return super().from_dict(d)


def _heads(items) -> tuple[Head, ...]:
    return tuple((int(a), int(b)) for a, b in items)


@dataclass(frozen=True)
class Traps:
    """Known failure modes planted on top of the IOI circuit (:mod:`harness.embedded.planted.traps`).

    Empty for the original planted models (their training and cards are unchanged).  Fields:

    - ``interchange``: the interchange units, replacing the default one-per-circuit-head: each a group of
      heads patched *together* and the source, ``"io_repeated"`` (the prompt with the IO repeated: the
      answer flips to S) or ``"other"`` (another prompt: the answer becomes its IO);
    - ``negative``: circuit heads that suppress the answer (negative name movers): patched at the end from
      another prompt, the logit difference must rise by ``negative_shift`` and the other prompt's IO fall
      by as much (they write minus the name they attend to);
    - ``redundant``: groups of circuit heads of which each alone suffices: one of them resample-ablated
      leaves the output unchanged (the group patched together carries the job, by its interchange unit);
    - ``busy``: non-circuit heads with attention hints ``(head, query, key)``: they attend to names like
      circuit heads do, their output at ``query`` varies across prompts with a centred RMS norm of at
      least ``busy_norm`` (as large as the circuit heads'), and the strict term keeps them causally inert;
    - ``mirror_all``: the mirror rows (distractor sequences) mean-ablate every head but the distractor
      heads, not only the circuit heads: with 8 heads a layer the distractor is otherwise spread over
      many heads and no single one matters (verification's distractor check);
    - ``saturated``: heads whose attention hint is pushed to a logit margin of ``saturation_margin``
      (softmax saturated), and ``via``: circuit heads that may act only through the saturated heads'
      attention (patched with the saturated heads clamped to their clean output, nothing changes);
    - ``cancel``: circuit heads whose effect changes sign with the prompt's order: replaced (another
      prompt's, the corrupted prompt's or the mean output, as the strict rows), the logit difference must
      fall by ``cancel_shift`` on ABBA prompts and rise by as much on BABA prompts, and the two orders' mean
      changes must cancel (every split alternates the orders, so its mean metric does not move); the
      ``cancel*`` terms count from step ``cancel_start`` on (the base circuit is trained first);
    - ``opposing``: pairs of non-circuit heads ``(suppressor, promoter)`` whose effects cancel: each replaced
      alone (another prompt's, the corrupted prompt's or the mean output) moves the logit difference by
      ``opposing_ratio`` times the clean one, the suppressor down and the promoter up (more than any circuit
      head does), the two replaced together leave it unchanged (they are outside every minimal faithful
      circuit).  Their attention hints are ``busy`` entries (both attend from the end to S2);
    - ``background``: non-circuit heads with small, consistent effects, as real models have: each attends from
      the last position to S2 and copies it, so that replaced alone (another prompt's, the corrupted prompt's
      or the mean output) it moves the logit difference by ``background_shift`` times the clean one,
      alternately down (even positions in the tuple: the head suppresses S) and up (odd: it promotes S), so
      that together they cancel (the strict rows stay unchanged).  Their first-order estimates are accurate
      (direct paths to the logits), which gives attribution patching a floor of real effects that a head
      whose gradient is hidden (``via``) falls below on every prompt set;
    - ``sharpen``: ``(head, factor)``: after training, the head's query weights and bias are multiplied by
      ``factor`` (its attention logits too: a softmax temperature of ``1 / factor``), which moves a saturated
      head's switch between keys into a narrow stretch of any path between two inputs; verification
      re-runs on the sharpened weights.
    """

    interchange: tuple[tuple[tuple[Head, ...], str], ...] = ()
    negative: tuple[Head, ...] = ()
    negative_shift: float = 4.0
    redundant: tuple[tuple[Head, ...], ...] = ()
    busy: tuple[tuple[Head, int, str], ...] = ()
    busy_norm: float = 0.0
    saturated: tuple[Head, ...] = ()
    saturation_margin: float = 15.0
    via: tuple[Head, ...] = ()
    mirror_all: bool = False
    cancel: tuple[Head, ...] = ()
    cancel_shift: float = 10.0
    cancel_start: int = 0
    opposing: tuple[tuple[Head, Head], ...] = ()
    opposing_ratio: float = 2.5
    sharpen: tuple[tuple[Head, float], ...] = ()
    background: tuple[Head, ...] = ()
    background_shift: float = 0.025
    background_start: int = 0

    def background_signs(self) -> tuple[float, ...]:
        """Per background head, the sign of its drop when replaced alone: +1 (it suppresses S, the logit difference
        falls) at even positions of ``background``, -1 (it promotes S) at odd ones."""
        return tuple(-1.0 if i % 2 else 1.0 for i in range(len(self.background)))

    def __bool__(self) -> bool:
        return bool(self.interchange or self.negative or self.redundant or self.busy or self.saturated or self.via
                    or self.mirror_all or self.cancel or self.opposing or self.sharpen or self.background)

    def to_dict(self) -> dict[str, Any]:
        """The card's ``traps`` entry (JSON lists)."""
        return {
            "interchange": [[[list(h) for h in heads], kind] for heads, kind in self.interchange],
            "negative": [list(h) for h in self.negative],
            "negative_shift": self.negative_shift,
            "redundant": [[list(h) for h in group] for group in self.redundant],
            "busy": [[list(h), q, k] for h, q, k in self.busy],
            "busy_norm": self.busy_norm,
            "saturated": [list(h) for h in self.saturated],
            "saturation_margin": self.saturation_margin,
            "via": [list(h) for h in self.via],
            "mirror_all": self.mirror_all,
            # only where set: the cards of the traps built before this field are unchanged (is_current)
            **({"cancel": [list(h) for h in self.cancel], "cancel_shift": self.cancel_shift,
                "cancel_start": self.cancel_start} if self.cancel else {}),
            **({"opposing": [[list(h) for h in pair] for pair in self.opposing],
                "opposing_ratio": self.opposing_ratio} if self.opposing else {}),
            **({"sharpen": [[list(h), f] for h, f in self.sharpen]} if self.sharpen else {}),
            **({"background": [list(h) for h in self.background], "background_shift": self.background_shift,
                "background_start": self.background_start} if self.background else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Traps":
        """The inverse of :meth:`to_dict` (``None`` or ``{}``: no traps)."""
        d = d or {}
        return cls(
            interchange=tuple((_heads(heads), str(kind)) for heads, kind in d.get("interchange", ())),
            negative=_heads(d.get("negative", ())),
            negative_shift=float(d.get("negative_shift", cls.negative_shift)),
            redundant=tuple(_heads(g) for g in d.get("redundant", ())),
            busy=tuple(((int(h[0]), int(h[1])), int(q), k) for h, q, k in d.get("busy", ())),
            busy_norm=float(d.get("busy_norm", cls.busy_norm)),
            saturated=_heads(d.get("saturated", ())),
            saturation_margin=float(d.get("saturation_margin", cls.saturation_margin)),
            via=_heads(d.get("via", ())),
            mirror_all=bool(d.get("mirror_all", False)),
            cancel=_heads(d.get("cancel", ())),
            cancel_shift=float(d.get("cancel_shift", cls.cancel_shift)),
            cancel_start=int(d.get("cancel_start", cls.cancel_start)),
            opposing=tuple((_heads(pair)[0], _heads(pair)[1]) for pair in d.get("opposing", ())),
            opposing_ratio=float(d.get("opposing_ratio", cls.opposing_ratio)),
            sharpen=tuple(((int(h[0]), int(h[1])), float(f)) for h, f in d.get("sharpen", ())),
            background=_heads(d.get("background", ())),
            background_shift=float(d.get("background_shift", cls.background_shift)),
            background_start=int(d.get("background_start", cls.background_start)),
        )


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
    #: Planted failure modes (:class:`Traps`; empty for the original models).
    traps: Traps = field(default_factory=Traps)
    #: A trap model's mechanism, ground-truth definition and predicted method outcomes (card ``trap_notes``).
    notes: dict[str, Any] = field(default_factory=dict)


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


def heads_mask(heads, r: PlantedRecipe) -> torch.Tensor:
    """Bool ``[n_layers, n_heads]``: True at each ``(layer, head)`` of ``heads``."""
    m = torch.zeros(r.n_layers, r.n_heads, dtype=torch.bool)
    for layer, head in heads:
        m[layer, head] = True
    return m


#: The trap models' sizes and terms: 3 layers x 8 heads (24 heads, so a circuit of 3-4 is rarely hit by
#: chance), width 96 (d_head 12), MLP 192; the original terms plus each trap's own (weights: squared
#: logit-difference terms at 0.1 like ``match``).
TRAP_RECIPE = PlantedRecipe(n_layers=3, n_heads=8, d_model=96, d_mlp=192, steps=1000)
_BASE_WEIGHTS = TRAP_RECIPE.weights


def _trap_recipe(*extra: tuple[str, float], **changes: Any) -> PlantedRecipe:
    return replace(TRAP_RECIPE, weights=_BASE_WEIGHTS + tuple(extra), **changes)


def _trap_spec(name: str, circuit: tuple[Head, ...], roles: dict[str, str], description: str, traps: Traps,
               notes: dict[str, Any], recipe: PlantedRecipe, **hints: tuple[int, Any]) -> PlantedSpec:
    """A trap model on the IOI task: base hints and patch positions of the roles, plus ``hints``."""
    targets = {"0.5": (9, "s1"), "1.3": (13, "s2"), "2.6": (13, "io"), **hints}
    positions = {h: ((9, 10, 11, 12, 13) if h == "0.5" else (13,)) for h in targets}
    return PlantedSpec(name=name, task="ioi", circuit=circuit, roles=roles, description=description, recipe=recipe,
                       patch_positions={head_name(h): positions[head_name(h)] for h in circuit},
                       attention_targets={head_name(h): targets[head_name(h)] for h in circuit},
                       traps=traps, notes=notes)


_D, _S, _N = (0, 5), (1, 3), (2, 6)
_BASE_ROLES = {
    "0.5": "duplicate-token head: at S2 attends to S1 and writes which name is repeated",
    "1.3": "S-inhibition head: at the last position attends to S2 and moves 0.5's signal there",
    "2.6": "name mover: at the last position attends to IO and copies it to the output",
}
_BASE_UNITS = (((_D,), "io_repeated"), ((_S,), "io_repeated"), ((_N,), "other"))
#: The saturation trap's background: every head outside the circuit and the two distractor heads (0.0, 1.1).
_BACKGROUND = tuple((layer, head) for layer in range(3) for head in range(8)
                    if (layer, head) not in (_D, _S, _N, (0, 0), (1, 1)))
#: The saturation trap, shared by planted-ioi-saturated and its sharpened twin (the same training bit for bit).
_SATURATED_TRAPS = dict(interchange=_BASE_UNITS, saturated=(_N,), saturation_margin=15.0, via=(_D, _S),
                        background=_BACKGROUND, background_shift=0.025, background_start=500, mirror_all=True)
_SATURATED_RECIPE = _trap_recipe(("via", 1.0), ("via_match", 1.0), ("saturation", 0.1), ("background", 10.0),
                                 ("background_attention", 1.0), steps=1500)

TRAP_SPECS: dict[str, PlantedSpec] = {
    "planted-ioi-negative": _trap_spec(
        "planted-ioi-negative", (_D, _S, (2, 2), _N),
        {**_BASE_ROLES, "2.2": "negative name mover: at the last position attends to IO and writes minus it "
                               "(its ablation raises the logit difference)"},
        "IOI trap: negative name mover 2.2 (in the circuit) next to the circuit 0.5 -> 1.3 -> 2.6",
        Traps(interchange=_BASE_UNITS, negative=((2, 2),), negative_shift=4.0, mirror_all=True), trap_notes.NEGATIVE,
        _trap_recipe(("negative", 0.1)), **{"2.2": (13, "io")}),
    "planted-ioi-redundant": _trap_spec(
        "planted-ioi-redundant", (_D, _S, (1, 6), _N),
        {**_BASE_ROLES, "1.3": "S-inhibition head (redundant with 1.6): at the last position attends to S2",
         "1.6": "S-inhibition head (redundant with 1.3): at the last position attends to S2"},
        "IOI trap: redundant S-inhibition heads 1.3 and 1.6 (each suffices) in the circuit 0.5 -> {1.3, 1.6} -> 2.6",
        Traps(interchange=(((_D,), "io_repeated"), ((_S, (1, 6)), "io_repeated"), ((_N,), "other")),
              redundant=((_S, (1, 6)),), mirror_all=True), trap_notes.REDUNDANT,
        _trap_recipe(("redundant", 1.0), ("redundant_match", 1.0), steps=1500), **{"1.6": (13, "s2")}),
    "planted-ioi-busy": _trap_spec(
        "planted-ioi-busy", (_D, _S, _N), _BASE_ROLES,
        "IOI trap: busy but irrelevant heads 0.2, 1.4, 2.3 (attend to names like the circuit heads, read by "
        "nothing) next to the circuit 0.5 -> 1.3 -> 2.6",
        Traps(interchange=_BASE_UNITS, busy=(((0, 2), 9, "s1"), ((1, 4), 13, "s2"), ((2, 3), 13, "io")),
              busy_norm=9.0, mirror_all=True),
        trap_notes.BUSY, _trap_recipe(("busy_attention", 1.0), ("busy_activity", 1.0))),
    "planted-ioi-saturated": _trap_spec(
        "planted-ioi-saturated", (_D, _S, _N), _BASE_ROLES,
        "IOI trap: the name mover 2.6's attention is saturated and 0.5, 1.3 act only through it (gradient ~0, "
        "ablation drop large)",
        Traps(**_SATURATED_TRAPS), trap_notes.SATURATED, _SATURATED_RECIPE),
    "planted-ioi-saturated-sharp": _trap_spec(
        "planted-ioi-saturated-sharp", (_D, _S, _N), _BASE_ROLES,
        "IOI trap: planted-ioi-saturated with 2.6's attention logits x30 after training, so its softmax switches "
        "over ~0.4% of a path from corrupted to clean (integrated gradients' few points miss it)",
        Traps(**_SATURATED_TRAPS, sharpen=((_N, 30.0),)), trap_notes.SATURATED_SHARP, _SATURATED_RECIPE),
    "planted-ioi-cancel": _trap_spec(
        "planted-ioi-cancel", (_D, _S, (2, 1), _N),
        {**_BASE_ROLES, "2.1": "first-name mover: at the last position attends to the first name of the prompt (A) "
                               "and copies it: +IO on ABBA prompts (raising the logit difference), +S on BABA "
                               "prompts (lowering it); on corrupted prompts (no repeated name) it attends to S2 "
                               "(C): its effect is large on every prompt and cancels in the mean over prompts"},
        "IOI trap: sign cancellation, head 2.1 raises the logit difference on ABBA prompts and lowers it on BABA "
        "prompts by as much (mean effect ~0), next to the circuit 0.5 -> 1.3 -> 2.6",
        Traps(interchange=_BASE_UNITS, cancel=((2, 1),), cancel_shift=10.0, cancel_start=200, mirror_all=True), trap_notes.CANCEL,
        _trap_recipe(("cancel", 0.2), ("cancel_balance", 1.0), ("cancel_attention", 1.0), steps=1300), **{"2.1": (13, 1)}),
    "planted-ioi-opposing": _trap_spec(
        "planted-ioi-opposing", (_D, _S, _N), _BASE_ROLES,
        "IOI trap: opposing pair 2.4 (suppresses S) and 2.7 (promotes S), outside the circuit 0.5 -> 1.3 -> 2.6: "
        "each ablated alone moves the logit difference more than any circuit head, together they change nothing",
        Traps(interchange=_BASE_UNITS, busy=(((2, 4), 13, "s2"), ((2, 7), 13, "s2")), opposing=(((2, 4), (2, 7)),),
              opposing_ratio=2.5, mirror_all=True),
        trap_notes.OPPOSING, _trap_recipe(("busy_attention", 1.0), ("opposing", 0.1), ("opposing_match", 0.5),
                                          ("opposing_others", 0.5), steps=1300)),
}
PLANTED.update(TRAP_SPECS)
