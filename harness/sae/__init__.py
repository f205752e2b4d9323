"""Sparse autoencoders: the architecture registry, weights, training, on-disk format and kernels.

- :mod:`.registry`: :func:`register_architecture` (an architecture and its config
  dataclass, registered together) and the lookups; nothing branches on a name.
- :mod:`.model`: :class:`SAE`, weights + config; encode / decode through the architecture.
- :mod:`.training`: the training loop every architecture shares (:class:`Trainer`)
  and the normalised-units recipe of the harness's own SAEs.
- the architectures: :mod:`.topk` (``topk``: TopK + AuxK, g-SAE), :mod:`.relu`
  (``relu``, ``argmax``), :mod:`.discrete` (``discrete``: O'Neill & Bui's SAE),
  :mod:`.jumprelu` (``jumprelu``: Rajamanoharan et al. 2024), :mod:`.batchtopk`
  (``batchtopk``: Bussmann et al. 2024), :mod:`.matryoshka` (``matryoshka``: Bussmann et al. 2025).
- :mod:`.io`: ``sae.safetensors`` + ``sae.json`` (:func:`load_sae`).
- :mod:`.kernels`, :mod:`.autograd`: TopK / BatchTopK selection, threshold encode, sparse decode,
  the sparse-backward TopK forward and sparse encode; :mod:`.bf16_select`: the exact TopK selection
  through a bf16 matmul and a proven error bound (the TopK trainer's default on CPUs with AMX).
"""

from harness.sae.autograd import sparse_encode, topk_sae_forward
from harness.sae.kernels import (
    LatentPattern,
    Workspace,
    batch_topk_relu,
    dense_decode,
    sparse_decode,
    sparse_rowdot,
    sparse_transpose_matmul,
    threshold_encode,
    topk_encode,
    topk_select,
)
from harness.sae.model import SAE
from harness.sae.registry import (
    Architecture,
    SAEConfig,
    architecture_names,
    architecture_of,
    get_architecture,
    register_architecture,
)
from harness.sae.training import Trainer, TrainStats
from harness.sae.topk import TopKConfig, train_topk_sae
from harness.sae.relu import ArgmaxConfig, ReLUConfig, train_relu_sae
from harness.sae.discrete import DiscreteConfig, train_discrete_sae
from harness.sae.jumprelu import JumpReLUConfig, train_jumprelu_sae
from harness.sae.batchtopk import BatchTopKConfig, train_batchtopk_sae
from harness.sae.matryoshka import MatryoshkaConfig, prefix_sizes, train_matryoshka_sae
from harness.sae.io import load_sae, save_sae

__all__ = [
    "SAE",
    "Architecture",
    "ArgmaxConfig",
    "BatchTopKConfig",
    "DiscreteConfig",
    "JumpReLUConfig",
    "LatentPattern",
    "MatryoshkaConfig",
    "ReLUConfig",
    "SAEConfig",
    "TopKConfig",
    "TrainStats",
    "Trainer",
    "Workspace",
    "architecture_names",
    "architecture_of",
    "batch_topk_relu",
    "dense_decode",
    "get_architecture",
    "load_sae",
    "prefix_sizes",
    "register_architecture",
    "save_sae",
    "sparse_decode",
    "sparse_encode",
    "sparse_rowdot",
    "sparse_transpose_matmul",
    "threshold_encode",
    "topk_encode",
    "topk_sae_forward",
    "topk_select",
    "train_batchtopk_sae",
    "train_discrete_sae",
    "train_jumprelu_sae",
    "train_matryoshka_sae",
    "train_relu_sae",
    "train_topk_sae",
]
