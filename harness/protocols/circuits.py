"""Circuits protocol: ``score_heads(model, data) -> array[n_layers, n_heads]``, optional ``select_heads``.

A circuit task hands every method a :class:`CircuitData`: the hooked model,
a *fit* split of clean and corrupted prompts (same length, position ``-1`` is
where the answer is read), and the task metric.  Methods never see the
ground truth nor the task's held-out evaluation prompts.  A method may also score
the edges of the model's computational graph (``score_edges``, the optional edge
half of the protocol: :mod:`harness.protocols.edges`) and the MLPs as nodes
(``score_mlps(model, data) -> array[n_layers]``, optional, on the scale of its head
scores: :func:`has_mlp_scores`, :func:`validate_mlp_scores`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from harness.core.method import Method
from harness.errors import InvalidOutputError
from harness.models.base import HookedModel


@dataclass
class LastTokenMetric:
    """A task metric read from the logits at the last position.

    ``token_ids``: LongTensor ``[k]`` of the unembedding columns the metric
    needs, or None when it needs the full vocabulary (e.g. probabilities).
    ``per_prompt_fn``: maps last-position logits ``[..., batch, k]`` (columns
    in the order of ``token_ids``; the whole vocabulary when None) to the
    metric of each prompt, ``[..., batch]``.  Higher means the model does the
    task better (logit difference, probability difference).  The task metric
    is the mean over prompts.
    """

    token_ids: torch.Tensor | None
    per_prompt_fn: Callable[[torch.Tensor], torch.Tensor]
    name: str = "metric"

    def _last(self, logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1]
        return last if self.token_ids is None else last[:, self.token_ids.to(last.device)]

    def from_last(self, last_logits: torch.Tensor) -> torch.Tensor:
        """Mean metric from last-position logits: ``[..., batch, k]`` -> ``[...]``."""
        return self.per_prompt_fn(last_logits).mean(dim=-1)

    def from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Mean metric from full logits ``[batch, seq, vocab]``: a scalar tensor (differentiable)."""
        return self.from_last(self._last(logits))

    def per_prompt(self, logits: torch.Tensor) -> torch.Tensor:
        """Metric of each prompt from full logits ``[batch, seq, vocab]``: ``[batch]``."""
        return self.per_prompt_fn(self._last(logits))


@dataclass
class CircuitData:
    """What a circuit method gets.

    ``clean`` / ``corrupted``: LongTensor ``[n_prompts, seq]`` (pairs: row i of
    ``corrupted`` is the corrupted version of row i of ``clean``);
    ``metric``: the task metric (clean - corrupted difference is the effect a
    circuit carries); ``task``: the task name.
    """

    model: HookedModel
    clean: torch.Tensor
    corrupted: torch.Tensor
    metric: LastTokenMetric
    task: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return (self.model.n_layers, self.model.n_heads)


#: The kinds of replacement ``z`` :func:`patch_replacement` gives a patched or ablated head.
REPLACEMENTS = ("mean", "resample")


@torch.no_grad()
def patch_replacement(model: HookedModel, data: CircuitData, kind: str) -> torch.Tensor:
    """The ``z`` a patched head gets: ``"mean"``: :meth:`~HookedModel.mean_z` over the clean and
    corrupted fit prompts, ``[seq, L, H, d_head]``; ``"resample"``: the ``z`` of the corrupted
    run, ``[batch, seq, L, H, d_head]`` (row i patched from corrupted row i)."""
    if kind == "mean":
        return model.mean_z(torch.cat([data.clean, data.corrupted], dim=0))
    if kind == "resample":
        return model.run_with_cache(data.corrupted, return_logits=False)[1]
    raise ValueError(f"unknown replacement {kind!r}; use one of {REPLACEMENTS}")


class CircuitMethod(Method):
    """A circuit-finding method: scores every attention head.

    :meth:`score_heads` returns a float array ``[n_layers, n_heads]``, higher =
    more likely part of the circuit.  :meth:`select_heads` may return a bool
    array of the same shape (the method's own circuit); the default None makes
    the task take the top-|ground truth| heads by score.
    """

    family = "circuits"

    def score_heads(self, model: HookedModel, data: CircuitData) -> np.ndarray:
        raise NotImplementedError

    def select_heads(self, model: HookedModel, data: CircuitData, scores: np.ndarray) -> np.ndarray | None:
        return None


#: Model operations a :class:`PassCounter` counts: name -> (forward passes, backward passes) per call.
COUNTED_CALLS: dict[str, tuple[int, int]] = {
    "logits": (1, 0),
    "run_with_cache": (1, 0),
    "run_with_hooks": (1, 0),
    "run_from": (1, 0),
    "run_with_heads_replaced": (1, 0),
    "run_with_heads_mixed": (1, 0),
    "mean_z": (1, 0),
    "head_gradients": (1, 1),
    "replacement_gradient": (1, 1),
    "mix_gradient": (1, 1),
    "edge_run": (1, 0),
    "edge_gradients": (1, 1),
    "mlp_outputs": (1, 0),
    "run_with_mlp_replaced": (1, 0),
    "mlp_gradients": (1, 1),
    "mlp_replacement_gradient": (1, 1),
}


class PassCounter:
    """Proxy around a :class:`HookedModel` that counts the model passes a method uses.

    ``forward`` counts runs of the model over the whole prompt batch (an
    ``ablate_many`` call counts one per head set plus the clean run, even
    though it reuses cached layers; a ``run_with_edges`` call one per edge
    set, its clean run being an ``edge_run`` or ``edge_gradients`` call
    counted apart); ``backward`` counts backward passes
    (:data:`COUNTED_CALLS`).  Everything else is delegated unchanged.
    """

    def __init__(self, model: HookedModel):
        self._model = model
        self.forward = 0
        self.backward = 0

    def __getattr__(self, name: str):
        attr = getattr(self._model, name)
        if name not in COUNTED_CALLS:
            return attr
        n_forward, n_backward = COUNTED_CALLS[name]

        def counted(*args, **kwargs):
            self.forward += n_forward
            self.backward += n_backward
            return attr(*args, **kwargs)

        return counted

    def ablate_many(self, tokens, masks, *a, **k):
        self.forward += 1 + int(masks.shape[0])
        return self._model.ablate_many(tokens, masks, *a, **k)

    def run_with_edges(self, clean, keep, *a, **k):
        self.forward += int(keep.shape[0])  # one per edge set (the clean run it resumes from is counted apart)
        return self._model.run_with_edges(clean, keep, *a, **k)


# ------------------------------------------------------------ output validation
def _to_numpy(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return x


def _head_array(x: Any, shape: tuple[int, int], method: str, fn: str, kind: str, dims: str = "") -> np.ndarray:
    """``x`` as a numpy array of ``shape`` (a torch tensor is converted), else a named error."""
    x = _to_numpy(x)
    if not isinstance(x, np.ndarray):
        raise InvalidOutputError(f"{method}: {fn} must return {kind} of shape {list(shape)}, got {type(x).__name__}")
    if x.shape != tuple(shape):
        raise InvalidOutputError(f"{method}: {fn} must return shape {list(shape)}{dims}, got {list(x.shape)}")
    return x


def validate_scores(scores: Any, shape: tuple[int, int], method: str = "method") -> np.ndarray:
    """Head scores must be a real numeric array ``[n_layers, n_heads]`` of finite values; returns float64."""
    scores = _head_array(scores, shape, method, "score_heads", "a numpy array (or torch tensor)", " [n_layers, n_heads]")
    if not (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)
            or scores.dtype == np.bool_):
        raise InvalidOutputError(f"{method}: head scores must be real numbers, got dtype {scores.dtype}")
    scores = scores.astype(np.float64)
    if not np.isfinite(scores).all():
        bad = np.argwhere(~np.isfinite(scores))[:3].tolist()
        raise InvalidOutputError(f"{method}: head scores contain NaN or infinite values (e.g. at [layer, head] {bad})")
    return scores


def validate_selection(selection: Any, shape: tuple[int, int], method: str = "method") -> np.ndarray:
    """A selected head set must be a bool (or 0/1 integer) array ``[n_layers, n_heads]``; returns bool."""
    selection = _head_array(selection, shape, method, "select_heads", "None or a bool array")
    if selection.dtype != np.bool_:
        if not np.issubdtype(selection.dtype, np.integer) or not np.isin(selection, (0, 1)).all():
            raise InvalidOutputError(f"{method}: select_heads must return a bool array (or 0/1 integers), got dtype {selection.dtype}")
        selection = selection.astype(bool)
    return selection.copy()


def has_mlp_scores(method: Any) -> bool:
    """Whether ``method`` scores MLP nodes (a callable ``score_mlps``)."""
    return callable(getattr(method, "score_mlps", None))


def validate_mlp_scores(scores: Any, n_layers: int, method: str = "method") -> np.ndarray:
    """MLP scores must be a finite real array ``[n_layers]`` (one per block's MLP); returns float64."""
    return validate_vector(scores, n_layers, method, "score_mlps", "one score per layer's MLP", "MLP", "layers")


def validate_vector(scores: Any, n: int, method: str, fn: str, per: str, kind: str, where: str) -> np.ndarray:
    """The output of ``fn`` must be a finite real array ``[n]`` (``per``: what each entry scores; ``kind`` names
    the scores and ``where`` their indices in the errors); returns float64."""
    x = _to_numpy(scores)
    if not isinstance(x, np.ndarray):
        raise InvalidOutputError(f"{method}: {fn} must return a numpy array (or torch tensor) of shape [{n}], "
                                 f"got {type(x).__name__}")
    if x.shape != (n,):
        raise InvalidOutputError(f"{method}: {fn} must return shape [{n}] ({per}), got {list(x.shape)}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
        raise InvalidOutputError(f"{method}: {kind} scores must be real numbers, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise InvalidOutputError(f"{method}: {kind} scores contain NaN or infinite values (e.g. at {where} "
                                 f"{np.flatnonzero(~np.isfinite(x))[:3].tolist()})")
    return x
