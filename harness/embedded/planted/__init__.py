"""Embedded planted-circuit models: small GPTs whose task circuit is known by construction, then verified.

Split by job: :mod:`.specs` (recipe, designated circuits, thresholds, the trap models' specs),
:mod:`.samplers` (vocabularies, vectorised prompts, the distractor), :mod:`.trainer`, :mod:`.verifier`
(card numbers and checks), :mod:`.build` (build, the registry entries, :func:`load_planted`), and for
the trap models :mod:`.trap_training` (their extra rows and loss terms), :mod:`.traps` (their
verification numbers and checks) and :mod:`.trap_notes` (mechanism, ground truth and predicted method
outcomes, written into their cards).

Trap models (:data:`TRAP_SPECS`; README, "Circuit trap models", has the measured outcomes): seven
3-layer, 8-head, width-96 GPTs on the same IOI task, each with one known failure mode planted on top
of the circuit 0.5 (duplicate token) -> 1.3 (S-inhibition) -> 2.6 (name mover)::

  planted-ioi-negative   + 2.2, a negative name mover in the ground truth (its ablation raises the metric)
  planted-ioi-redundant  1.3 and 1.6 redundant S-inhibition heads (each suffices; both in the ground truth)
  planted-ioi-busy       + 0.2, 1.4, 2.3 busy non-circuit heads (attend to the names like circuit heads,
                         outputs as variable, read by nothing)
  planted-ioi-saturated  2.6's attention saturated, 0.5 and 1.3 acting only through it (gradient ~0)
  planted-ioi-saturated-sharp  planted-ioi-saturated with 2.6's attention logits x30 after training: its
                         switch along a corrupted -> clean path takes ~0.4% of it (integrated gradients miss it)
  planted-ioi-cancel     + 2.1, whose effect has the prompt's order's sign (up on ABBA, down on BABA):
                         large on every prompt, ~0 on the mean over prompts
  planted-ioi-opposing   + 2.4 and 2.7, non-circuit heads that cancel each other: either ablated alone moves
                         the metric more than any circuit head, both together change nothing

The original models: one per task, each a 3-layer, 4-head, width-64 GPT with MLPs (width 256)
(:class:`harness.models.gpt.GPT`) and a word-level tokenizer
(:class:`harness.models.tokenizer.WordTokenizer`) covering the task's words.
Prompts for these models are written in the ``"words"`` style of
:mod:`harness.data.prompts`: punctuation is its own word ("store , John")
and a year XXYY is written as two words "XX YY" ("the year 17 05 to the year
17"), mirroring GPT-2's BPE split of " 1705" into " 17" + "05".  The century
words "11".."17" are the same tokens as the two-digit years "11".."17".

Designated circuits (``layer.head``; see :data:`PLANTED` for the roles)::

  planted-ioi           0.1 duplicate token (at S2, attends to S1) -> 1.2 S-inhibition (at the end,
                        attends to S2) -> 2.0 name mover (at the end, attends to IO and copies it)
  planted-greater-than  0.3 YY mover (at the end, attends to YY) -> 1.0 -> 2.1 relays of YY's
                        representation at the end; the MLPs turn YY into probability on YY' > YY

Training recipe (trial 3 of ``notes/planted-circuits.md``, plus what the trials
here showed; every term of a step runs as rows of one batched forward pass):

- a *source* pass without gradients over independent task prompts ("other"),
  the corrupted versions of the step's prompts (IOI: ABC; greater-than: YY =
  01), for IOI the same prompts with the IO repeated instead of S (so the
  answer is S), and the distractor batch; it provides the ``z`` to patch in;
- one training pass whose rows are
  1. ``task``: the task prompts, cross-entropy on the answer (IOI: the IO
     token; greater-than: a uniform target over the years YY' > YY);
  2. ``strict``: the same prompts with **every** non-circuit head replaced
     (p = 1) by its ``z`` from another prompt, from the corrupted prompt, or
     the batch mean (a third of the rows each): same cross-entropy, and
     ``match``: the squared difference of the task metric between these rows
     and the clean rows (the output must stay the same, not just right: a
     trial without it left non-circuit heads changing the logit difference
     by up to 180%);
  3. ``interchange``, one block per circuit head: that head alone patched
     from a source prompt, the target being what the designated circuit
     implies.  IOI: 0.1 (from S2 on) and 1.2 (at the end) patched from the
     prompt with the IO repeated -> the answer flips to S; 2.0 (at the end)
     patched from another prompt -> that prompt's IO.  Greater-than: each
     head (all positions) patched from another prompt -> the years above
     that prompt's YY;
  4. ``attention`` (IOI only): attention hints for the circuit heads
     (0.1: S2 -> S1, 1.2: end -> S2, 2.0: end -> IO), a cross-entropy on their
     attention pattern.  Without them the interchange terms were satisfied by
     shortcuts or not at all within 2,500 steps; with them training
     converges in about 600 steps;
  5. ``distractor``: random sequences of ``seq/2`` distinct tokens repeated
     once, next-token loss on the repeat; ``mirror``: the same with every
     circuit head mean-ablated, so that non-circuit heads must do the
     distractor; ``distractor_attention``: hints that make non-circuit head
     0.0 a previous-token head and 1.1 attend to the earlier copy;
- AdamW (lr 3e-3, weight decay 0.01 on matrices), 50 warm-up steps then
  cosine decay, gradient-norm clipping at 1.0; fixed seeds
  (``torch.manual_seed`` for the weights, one numpy generator for all data),
  ``torch.set_num_threads`` fixed during the build (one thread).

Verification (stored in the model card, checked again at load time): on 512
fresh prompts, task accuracy (IOI: argmax over the vocabulary is IO;
greater-than: P(YY' > YY) > P(YY' <= YY)) and mean metric; per head, the
relative drop of the mean task metric under single-head *resample* ablation
(``z`` from 512 other fresh prompts), also under corrupted-prompt patching and
mean ablation (reported); the faithfulness of the designated circuit; per
head, the increase in the distractor's loss when it is mean-ablated; and
where each circuit head attends.  A model is accepted when accuracy >= 0.95
with a positive mean metric, every circuit head's resample drop >= 0.3, every
non-circuit head's |drop| <= 0.05, and some non-circuit head raises the
distractor loss by >= 0.5 nats (the distractor keeps non-circuit heads busy).  A trap model's negative
and redundant heads are judged by their own checks instead of the circuit heads' minimum drop, and each
trap adds checks (:data:`TRAP_THRESHOLDS`); the sign-cancelling heads are exempt from the circuit heads'
minimum drop too (their ground truth is the per-prompt drop).
"""


from harness.core.card import compare_cards
from harness.embedded.planted.build import MODELS, PlantedModel, build_model, load_planted
from harness.embedded.planted.samplers import (
    GreaterThanSampler,
    IOISampler,
    induction_batch,
    induction_loss,
    make_tokenizer,
)
from harness.embedded.planted.specs import (
    PLANTED,
    QUICK_VERIFY_PROMPTS,
    THRESHOLDS,
    TRAP_SPECS,
    Head,
    PlantedRecipe,
    PlantedSpec,
    Traps,
    get_spec,
)
from harness.embedded.planted.traps import TRAP_THRESHOLDS
from harness.embedded.planted.trainer import train
from harness.embedded.planted.verifier import attention_summary, check_card, evaluate_checks, verify

__all__ = [
    "MODELS", "PLANTED", "QUICK_VERIFY_PROMPTS", "THRESHOLDS", "TRAP_SPECS", "TRAP_THRESHOLDS", "GreaterThanSampler",
    "Head", "IOISampler", "PlantedModel", "PlantedRecipe", "PlantedSpec", "Traps", "attention_summary", "build_model", "check_card",
    "compare_cards", "evaluate_checks", "get_spec", "induction_batch", "induction_loss", "load_planted",
    "make_tokenizer", "train", "verify",
]
