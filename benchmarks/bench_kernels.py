"""asv ``time_*`` / ``peakmem_*`` benchmarks of the kernels in :mod:`benchmarks.kernels`.

One class per kernel, parametrised over its sizes; torch runs on one thread
(the notes' convention: the numbers then do not depend on the machine's core
count, and a shared machine disturbs them less).  ``version`` is pinned per
kernel: bump it when the kernel's inputs change, never for a change to the
code under test (that is what the history is for).
"""

from __future__ import annotations

from typing import Any

from benchmarks.kernels import KERNELS, Kernel

#: Pinned asv versions, one per kernel (bump when the benchmark's inputs change).
VERSIONS = {
    "sae_encode": "1",
    "sae_sparse_decode": "1",
    "sae_train_step": "1",
    "ablate_many": "1",
    "eap": "1",
    "hungarian": "1",
    "kmeans_digits": "1",
}


def _bench_class(kernel: Kernel) -> type:
    class Bench:
        params = list(kernel.params)
        param_names = [kernel.param_name]
        version = VERSIONS[kernel.name]
        timeout = 300.0

        def setup(self, param: Any) -> None:
            import torch

            torch.set_num_threads(1)
            self.fn = kernel.setup(param)
            self.fn()  # warm-up: allocator, lazy imports

        def time(self, param: Any) -> None:
            self.fn()

        def peakmem(self, param: Any) -> None:
            self.fn()

    # asv finds benchmarks by method name: time_<kernel>, peakmem_<kernel>
    setattr(Bench, f"time_{kernel.name}", Bench.time)
    setattr(Bench, f"peakmem_{kernel.name}", Bench.peakmem)
    del Bench.time, Bench.peakmem
    Bench.__name__ = Bench.__qualname__ = "".join(part.title() for part in kernel.name.split("_"))
    Bench.__doc__ = kernel.description
    return Bench


for _kernel in KERNELS.values():
    _cls = _bench_class(_kernel)
    globals()[_cls.__name__] = _cls
