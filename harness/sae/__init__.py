"""Shared sparse-autoencoder code: kernels (TopK encode, embedding-bag sparse decode),
a sparse-backward TopK autograd function, SAE weights with encode / decode, training
loops, and the on-disk format of a user's SAE."""

from harness.sae.autograd import topk_sae_forward
from harness.sae.kernels import (
    LatentPattern,
    dense_decode,
    sparse_decode,
    sparse_rowdot,
    sparse_transpose_matmul,
    topk_encode,
    topk_select,
)
from harness.sae.model import SAE, TrainStats, load_sae, train_relu_sae, train_topk_sae

__all__ = [
    "SAE",
    "LatentPattern",
    "TrainStats",
    "dense_decode",
    "load_sae",
    "sparse_decode",
    "sparse_rowdot",
    "sparse_transpose_matmul",
    "topk_encode",
    "topk_sae_forward",
    "topk_select",
    "train_relu_sae",
    "train_topk_sae",
]
