"""The in-context learner of the icl family: a small GPT that regresses in context.

Split by job: :mod:`.model` (the network, :class:`InContextRegressor`), :mod:`.train`
(recipe, regression tasks, error curve, deterministic training), :mod:`.build`
(saved form, the named models in the embedded-model registry, :func:`load_icl_model`)
and :mod:`.learner` (:class:`TransformerLearner`, what predictors and probes are handed).
Models are trained deterministically (fixed seeds, one CPU thread), committed under
``harness/embedded/weights/<name>/`` and rebuilt with ``harness models build --name NAME``;
the GPU learners (:data:`GPU_MODEL_SPECS`) train on CUDA, and their check recomputes the
card's numbers from the committed weights within a stated tolerance.
"""

from harness.embedded.icl_learner.build import (
    GPU_MODEL_SPECS,
    ICL_CARD,
    ICL_JSON,
    ICL_MODEL_SPECS,
    MODELS,
    ICLModel,
    control_model,
    get_spec,
    load_icl_dir,
    load_icl_model,
    save_icl_model,
    spec_hash,
    untrained_model,
    verify_card_numbers,
)
from harness.embedded.icl_learner.learner import TransformerLearner
from harness.embedded.icl_learner.model import ICLArch, InContextRegressor
from harness.embedded.icl_learner.train import ICLModelSpec, ICLRecipe, error_curve, sample_regression, train_icl_model

__all__ = [
    "GPU_MODEL_SPECS", "ICL_CARD", "ICL_JSON", "ICL_MODEL_SPECS", "MODELS", "ICLArch", "ICLModel", "ICLModelSpec", "ICLRecipe",
    "InContextRegressor", "TransformerLearner", "control_model", "error_curve", "get_spec", "load_icl_dir",
    "load_icl_model", "sample_regression", "save_icl_model", "spec_hash", "train_icl_model", "untrained_model",
    "verify_card_numbers",
]
