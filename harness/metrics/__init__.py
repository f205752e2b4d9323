"""Every metric of the harness, defined once; tasks call these."""

from harness.metrics.circuits import (
    MIB_KS,
    cmd,
    cpr,
    faithfulness,
    faithfulness_curve_sizes,
    pr_auc,
    roc_auc,
    roc_curve,
    set_metrics,
    top_k_mask,
    top_k_masks,
)
from harness.metrics.clustering import adjusted_rand_index, clustering_accuracy, normalized_mutual_info

__all__ = [
    "MIB_KS",
    "adjusted_rand_index",
    "clustering_accuracy",
    "cmd",
    "cpr",
    "faithfulness",
    "faithfulness_curve_sizes",
    "normalized_mutual_info",
    "pr_auc",
    "roc_auc",
    "roc_curve",
    "set_metrics",
    "top_k_mask",
    "top_k_masks",
]

from harness.metrics.reconstruction import (  # noqa: E402
    dead_latent_fraction,
    explained_variance,
    fvu,
    kl_per_position,
    kl_recovered,
    l0,
    loss_recovered,
    mean_cosine_similarity,
    mean_kl_divergence,
    next_token_cross_entropy,
    next_token_log_probs,
    normalized_mse,
    tokens_per_second,
)

__all__ += [
    "dead_latent_fraction",
    "explained_variance",
    "fvu",
    "kl_per_position",
    "kl_recovered",
    "l0",
    "loss_recovered",
    "mean_cosine_similarity",
    "mean_kl_divergence",
    "next_token_cross_entropy",
    "next_token_log_probs",
    "normalized_mse",
    "tokens_per_second",
]

from harness.metrics.icl import ilwd, implied_weights, normalized_squared_error, r2_score, spd  # noqa: E402

__all__ += ["ilwd", "implied_weights", "normalized_squared_error", "r2_score", "spd"]

from harness.metrics.dictionary import (  # noqa: E402
    abs_cosine_matrix,
    active_set_precision_recall,
    match_latents,
    max_cosines,
    mmcs,
    recovered_fraction,
)

__all__ += ["abs_cosine_matrix", "active_set_precision_recall", "match_latents", "max_cosines", "mmcs",
            "recovered_fraction"]
