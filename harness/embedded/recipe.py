"""The training recipe every embedded model shares: :class:`Recipe` and its optimiser steps.

A recipe is a frozen dataclass recorded whole in the model card (``to_dict``),
so a card says exactly how its weights were made.  The base holds what every
embedded model's training has: ``steps``, the peak ``lr`` and ``warmup`` of
:func:`harness.embedded.schedule.warmup_cosine`, AdamW's ``weight_decay`` (on
matrices only) and the CPU ``threads`` the build runs on.  Each family's recipe
(:class:`harness.embedded.icl_learner.ICLRecipe`; through :class:`GPTRecipe`, which
adds a GPT's sizes, :class:`harness.embedded.planted.PlantedRecipe` and
:class:`harness.embedded.docstring_lm.DocstringLMRecipe`) subclasses it and says
how its own fields map to the schedule's floor, Adam's betas and the clipping
norm; the field names are those of the committed cards and do not change.

The training loops then read::

    opt = recipe.adamw(model)
    for step in range(recipe.steps):
        recipe.set_lr(opt, step)
        loss = ...
        recipe.update(opt, model, loss)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Mapping, TypeVar

import torch
from torch import nn

from harness.embedded.schedule import warmup_cosine

#: Where builds report progress: a function taking one line (``print``), or None for silence.
Log = Callable[[str], None] | None

T = TypeVar("T")
R = TypeVar("R", bound="Recipe")


def from_known_fields(cls: type[T], data: Mapping[str, Any]) -> T:
    """``cls(**data)`` keeping only the keys that are fields of the dataclass ``cls`` (cards may carry more)."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in known})


def decays_matrices(name: str, p: nn.Parameter) -> bool:
    """Default weight-decay rule: every parameter with two or more dimensions."""
    return p.dim() >= 2


def _lists(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Recipe:
    """Sizes and hyper-parameters of one embedded model's training (all recorded in the card)."""

    steps: int = 1000
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.0
    threads: int = 1

    # ---------------------------------------------------------------- what a family maps
    def lr_at(self, step: int) -> float:
        """Learning rate at ``step`` (families override to pass their floor)."""
        return warmup_cosine(step, steps=self.steps, lr=self.lr, warmup=self.warmup)

    def adam_betas(self) -> tuple[float, float]:
        """AdamW's ``(beta1, beta2)``."""
        return (0.9, 0.999)

    def clip_norm(self) -> float:
        """Gradient-norm clipping (0: none)."""
        return 0.0

    # ---------------------------------------------------------------- shared
    def to_dict(self) -> dict[str, Any]:
        """The card's ``recipe`` entry: the fields, tuples written as JSON lists."""
        return _lists(asdict(self))

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        """The recipe of a card's ``recipe`` entry (unknown keys ignored)."""
        return from_known_fields(cls, data)

    def adamw(self, model: nn.Module,
              decays: Callable[[str, nn.Parameter], bool] = decays_matrices) -> torch.optim.AdamW:
        """AdamW at ``lr`` with ``weight_decay`` on the parameters ``decays`` selects (in ``named_parameters`` order)."""
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, p in model.named_parameters():
            (decay if decays(name, p) else no_decay).append(p)
        return torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}],
                                 lr=self.lr, betas=self.adam_betas())

    def set_lr(self, opt: torch.optim.Optimizer, step: int) -> float:
        """Set every parameter group's learning rate to :meth:`lr_at` ``(step)``; returns it."""
        lr = self.lr_at(step)
        for group in opt.param_groups:
            group["lr"] = lr
        return lr

    def update(self, opt: torch.optim.Optimizer, model: nn.Module, loss: torch.Tensor) -> None:
        """One optimiser step on ``loss``: clear gradients, backward, clip to :meth:`clip_norm` (if > 0), step."""
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.clip_norm()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()


@dataclass(frozen=True)
class GPTRecipe(Recipe):
    """A recipe that also sizes a :class:`harness.models.gpt.GPT` (layers, heads, widths, context in tokens)
    and gives Adam's ``betas`` and the gradient-norm clip ``grad_clip`` by name."""

    n_layers: int = 3
    n_heads: int = 4
    d_model: int = 64  # residual stream width
    d_mlp: int = 256  # MLP hidden width (0: attention only)
    n_ctx: int = 16  # positions
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0

    def adam_betas(self) -> tuple[float, float]:
        return self.betas

    def clip_norm(self) -> float:
        return self.grad_clip
