"""Build, register and load the planted-circuit models (:class:`PlantedModel`, :func:`load_planted`)."""

from __future__ import annotations

import time
from pathlib import Path
import torch

from harness.embedded import registry
from harness.embedded.planted.specs import CARD_FORMAT, PLANTED, QUICK_VERIFY_PROMPTS, PlantedRecipe, get_spec
from harness.embedded.planted.trainer import train
from harness.embedded.planted.verifier import check_card, verify
from harness.embedded.recipe import Log
from harness.models.gpt import GPT_CARD, HookedGPT, load_gpt, save_gpt


def build_model(name: str, recipe: PlantedRecipe | None = None, log: Log = print) -> HookedGPT:
    """Train and verify one planted model; the card records recipe, training and verification."""
    spec = get_spec(name)
    r = recipe or spec.recipe
    t0 = time.perf_counter()
    model, training = train(spec, r, log=log)
    sharpen_heads(model, spec.traps.sharpen)
    verification = verify(model, spec, r)
    total = time.perf_counter() - t0
    model.card = {
        "card_format": CARD_FORMAT,
        "name": spec.name,
        "task": spec.task,
        "description": spec.description,
        "circuit_heads": [list(h) for h in spec.circuit],
        "roles": dict(spec.roles),
        "interchange_patch_positions": {k: list(v) for k, v in spec.patch_positions.items()},
        "attention_hints": {k: [q, kk] for k, (q, kk) in spec.attention_targets.items()},
        "distractor_heads": {k: list(v) for k, v in spec.distractor_heads.items()},
        "prompt_style": "words",
        "prompt_note": "punctuation is its own word; a year XXYY is written 'XX YY' (century and two-digit tokens)",
        "recipe": r.to_dict(),
        "training": {**training, "build_seconds": round(total, 1), "torch_version": torch.__version__},
        "verification": verification,
    }
    if spec.traps:  # only trap models carry these (the original cards are unchanged)
        model.card["traps"] = spec.traps.to_dict()
        model.card["trap_notes"] = spec.notes
    if log:
        log(f"[{name}] built in {total:.1f}s; verification " + ("passed" if verification["passed"] else "FAILED"))
        for c in verification["checks"].values():
            log(f"[{name}]   {'ok  ' if c['passed'] else 'FAIL'} {c['detail']}")
    return model


@torch.no_grad()
def sharpen_heads(model: HookedGPT, sharpen) -> None:
    """Multiply each ``(head, factor)``'s query weights and bias by ``factor`` in place (attention logits x factor)."""
    dh = model.d_head
    for (layer, head), factor in sharpen:
        qkv = model.model.blocks[layer].attn.qkv
        qkv.weight[head * dh:(head + 1) * dh] *= factor
        qkv.bias[head * dh:(head + 1) * dh] *= factor


class PlantedModel(registry.EmbeddedModel):
    """A planted-circuit GPT in the embedded-model registry (saved as a harness GPT directory)."""

    card_format = GPT_CARD
    atol = 1e-5

    def __init__(self, name: str):
        spec = get_spec(name)
        super().__init__(name, "circuits", spec.description)
        self.spec = spec

    def build(self, directory: Path, log: Log = print) -> Path:
        """Train and verify; a model that fails verification raises ``HarnessError`` and is not written."""
        model = build_model(self.name, log=log)
        check_card(model.card, where=f"freshly built {self.name}")
        return save_gpt(model, directory)

    def is_current(self, directory: Path) -> bool:
        """A saved GPT whose card names this model, its circuit and its current recipe."""
        card = self.card_format.card(directory)
        return (card is not None and card.get("name") == self.name
                and card.get("circuit_heads") == [list(h) for h in self.spec.circuit]
                and card.get("recipe") == self.spec.recipe.to_dict()
                and card.get("traps", {}) == (self.spec.traps.to_dict() if self.spec.traps else {}))

    def accept(self, model: HookedGPT, where: str, reverify: bool = True) -> None:
        """Refuse (``HarnessError``) a model whose card fails a check, or, with ``reverify``, whose weights
        fail a quick verification (:data:`QUICK_VERIFY_PROMPTS` prompts: 2-4 s for a trap model on
        two CPU threads, the sharpened one the slowest)."""
        check_card(model.card, where=where)
        if reverify:
            fresh = verify(model, self.spec, n_prompts=QUICK_VERIFY_PROMPTS)
            check_card({**model.card, "verification": fresh}, where=f"{where} (re-verified)")

    def verify(self, directory: Path) -> None:
        """The card's checks and a quick re-verification of the saved weights."""
        super().verify(directory)
        self.accept(load_gpt(directory), where=f"planted model {self.name!r} ({directory})")


MODELS = {name: registry.register(PlantedModel(name)) for name in PLANTED}


def load_planted(
    name: str, cache_dir: str | Path | None = None, device: torch.device | str = "cpu", reverify: bool = True,
    log: Log = None,
) -> HookedGPT:
    """Load a planted model: the committed directory, else ``cache_dir/<name>``, else built into ``cache_dir``.

    The card's verification numbers are checked (a failed model is refused);
    with ``reverify`` a quick verification is also recomputed on the loaded weights.
    """
    get_spec(name)
    entry = MODELS[name]
    path = entry.locate(cache_dir, log)
    model = load_gpt(path, device)
    entry.accept(model, where=f"planted model {name!r} ({path})", reverify=reverify)
    return model
