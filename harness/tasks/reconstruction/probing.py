"""Sparse probing of a method's codes in the reconstruction tasks (SAEBench's judge-free probe metric).

Labels, per activation row (one row is one token): the class of the token at that row
(:func:`token_class`), one of :data:`CLASSES`:

- ``word``: letters only, not a Python keyword;
- ``keyword``: a Python keyword, case-folded (the docstring LM's vocabulary is lower case:
  ``if``, ``for``, ``in``, ``return``, ``none``, ...);
- ``number``: ASCII digits only;
- ``punctuation``: no letter, digit or space (``.``, ``-``, ``(``, ``>``, ...).

Other tokens are left unlabelled: ``<doc>``, ``<unk>``, ``[CLS]`` / ``[SEP]``, word pieces
(``##ing``), mixed tokens (``x2``).  The labels come from the token ids the activations were
gathered from, so they exist for every source (the embedded LM, MiniLM, GPT-2); the
windows of the embedded LM do not say which module a docstring came from, so document
labels are not used.

Each class is one binary task against the other three (one-vs-rest, as SAEBench), balanced
by sampling: ``min(#class, #others, MAX_TRAIN)`` rows of the class and as many of the others
(drawn uniformly, not stratified by class) from the train split, likewise from the test split
with ``MAX_TEST``.  The draw depends only on the labels (a fixed generator per class and split),
so every method and seed of a task is probed on the same rows; a class with fewer than
``MIN_ITEMS`` rows on either side of either split is skipped.

Features: the method's codes of those rows.  The train rows are encoded by the fitted method
after the held-out reconstruction (the SAE was fitted on these activations without their labels);
the test rows are the held-out codes the task scores anyway.  The probe is
:func:`harness.metrics.probing.sparse_probe_accuracies` at each ``k`` in :data:`KS` and on every
code dimension; the metrics are the means over the binary tasks.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from harness.core.task import MetricSpec
from harness.errors import ConfigError
from harness.metrics.probing import sparse_probe_accuracies
from harness.protocols.reconstruction import Codes, SparseCodes

CLASSES = ("word", "keyword", "number", "punctuation")
KS = (1, 2, 5, 10, 20)
MAX_TRAIN = 1000  # rows of the class (and as many of the others) per binary task, train split
MAX_TEST = 500  # the same, test split
MIN_ITEMS = 10  # a class needs this many rows, and the others as many, in each split
SAMPLE_SEED = 0
_KEYWORDS = frozenset(k.lower() for k in keyword.kwlist)


def metric_name(k: int | None) -> str:
    """``sparse_probe_acc_k{k}``, or ``sparse_probe_acc_full`` for every code dimension (``k = None``)."""
    return "sparse_probe_acc_full" if k is None else f"sparse_probe_acc_k{k}"


PROBE_METRICS = tuple(
    MetricSpec(metric_name(k), True,
               f"test accuracy of a logistic-regression probe on the {k} code dimension{'s' if k > 1 else ''} whose "
               "class means differ most on the train split; mean over one-vs-rest token-class tasks (SAEBench "
               "sparse probing)", abs_tol=0.03)
    for k in KS
) + (MetricSpec(metric_name(None), True, "the same probe on every code dimension (for identity: the full "
                "raw-activation probe)", abs_tol=0.03),)


def token_class(token: str) -> int:
    """The index in :data:`CLASSES` of a token string (surrounding whitespace ignored), or -1 (unlabelled)."""
    t = token.strip()
    if not t or not t.isascii():
        return -1
    if t.isdigit():
        return CLASSES.index("number")
    if t.isalpha():
        return CLASSES.index("keyword" if t.lower() in _KEYWORDS else "word")
    if not any(c.isalnum() or c.isspace() for c in t):
        return CLASSES.index("punctuation")
    return -1


def token_labels(tokens: Sequence[str]) -> np.ndarray:
    """``[N]`` int64 class index of each token string (-1: unlabelled)."""
    return np.fromiter((token_class(t) for t in tokens), dtype=np.int64, count=len(tokens))


@dataclass(frozen=True)
class BinaryTask:
    """One class against the others: rows of the train and test splits and their labels (True: the class)."""

    name: str
    train_rows: np.ndarray  # [n_train] int64, rows of the train split
    train_y: np.ndarray  # [n_train] bool
    test_rows: np.ndarray  # [n_test] int64, rows of the test split
    test_y: np.ndarray  # [n_test] bool


@dataclass(frozen=True)
class ProbePlan:
    """The binary tasks of a cell's data and the train rows their probes need (sorted, unique)."""

    tasks: tuple[BinaryTask, ...]
    train_rows: torch.Tensor  # [R] int64: the rows of the train split the method encodes for the probes


def _balanced(labels: np.ndarray, cls: int, cap: int, split: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(rows, y)``: ``n`` rows of class ``cls`` then ``n`` of the other classes, ``n = min(both, cap)``."""
    pos = np.flatnonzero(labels == cls)
    neg = np.flatnonzero((labels >= 0) & (labels != cls))
    n = min(len(pos), len(neg), cap)
    if n < MIN_ITEMS:
        return None
    rng = np.random.default_rng([SAMPLE_SEED, cls, split])
    rows = np.concatenate([np.sort(rng.choice(pos, n, replace=False)), np.sort(rng.choice(neg, n, replace=False))])
    return rows.astype(np.int64), np.arange(2 * n) < n


def plan_probes(train_labels: np.ndarray, test_labels: np.ndarray) -> ProbePlan:
    """The one-vs-rest tasks of :data:`CLASSES` from per-row class labels of the two splits (see the module doc)."""
    tasks = []
    for cls, name in enumerate(CLASSES):
        train = _balanced(np.asarray(train_labels), cls, MAX_TRAIN, 0)
        test = _balanced(np.asarray(test_labels), cls, MAX_TEST, 1)
        if train is not None and test is not None:
            tasks.append(BinaryTask(name, *train, *test))
    if not tasks:
        raise ConfigError(f"too few labelled tokens to probe any of {', '.join(CLASSES)} (need {MIN_ITEMS} of a "
                           "class and of the others in each split); raise n_train / n_test")
    rows = np.unique(np.concatenate([t.train_rows for t in tasks]))
    return ProbePlan(tuple(tasks), torch.from_numpy(rows))


def dense_rows(codes: Codes, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of codes (dense or :class:`SparseCodes`) as a float64 array ``[len(rows), n_latents]``."""
    idx = torch.as_tensor(rows, dtype=torch.long)
    if isinstance(codes, SparseCodes):
        picked = SparseCodes(codes.indices[idx], codes.values[idx], codes.n_latents).to_dense()
    else:
        picked = torch.as_tensor(codes)[idx]
    return picked.double().cpu().numpy()


def probe_metrics(plan: ProbePlan, train_codes: Codes, test_codes: Codes) -> dict[str, float]:
    """The :data:`PROBE_METRICS`: ``train_codes`` are the codes of ``plan.train_rows`` (in that order),
    ``test_codes`` those of every test row."""
    encoded = plan.train_rows.numpy()
    ks = (*KS, None)
    accs: dict[int | None, list[float]] = {k: [] for k in ks}
    for task in plan.tasks:
        X_train = dense_rows(train_codes, np.searchsorted(encoded, task.train_rows))
        X_test = dense_rows(test_codes, task.test_rows)
        for k, acc in sparse_probe_accuracies(X_train, task.train_y, X_test, task.test_y, ks).items():
            accs[k].append(acc)
    return {metric_name(k): float(np.mean(v)) for k, v in accs.items()}
