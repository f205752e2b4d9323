"""A second torch device on a machine that has only a CPU, strict about placement as CUDA is.

Why: a device bug (a CPU tensor meeting a GPU tensor) cannot happen on a CPU-only machine, where every
tensor is on the CPU, so the test suite used to pass while every circuits and SAE cell failed on an H200.
A static scan for ``torch.zeros(...)`` without ``device=`` cannot tell a CPU tensor that is moved later
(the rule: data is drawn on the CPU, then placed) from one that meets device tensors, and needs a long
allow-list.  This module instead *runs* the code on another device:

- PyTorch's PrivateUse1 backend is registered from Python under the name ``fakegpu``
  (``torch.utils.backend_registration._setup_privateuseone_for_python_backend``, experimental API);
- a tensor on ``fakegpu:0`` is a :class:`FakeGPUTensor`, a wrapper subclass holding an ordinary CPU tensor
  (``elem``) that does the arithmetic, so values are exactly the CPU's;
- every aten op on such a tensor goes through :meth:`FakeGPUTensor.__torch_dispatch__`, which applies
  CUDA's rules before running the op on the CPU tensors: a CPU tensor with at least one dimension among
  the arguments is an error (``Expected all tensors to be on the same device ...``), as is a CPU
  ``torch.Generator`` drawing into a device tensor; what CUDA accepts is accepted (0-dim CPU tensors,
  CPU index tensors in indexing, copies and moves between devices, ``.item()`` and ``.tolist()``);
- ``.numpy()`` on a device tensor fails, as on CUDA.

Factories with ``device="fakegpu"`` reach the backend through the PrivateUse1 kernels registered below
(``empty``, ``empty_strided``, the cross-device copies); everything else composes from them.  What it does
not model: CUDA's numerics (TF32, kernel choice), streams, memory.  :func:`available` is False when the
experimental API is missing or refuses; tests then skip with the reason.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten, tree_map

NAME = "fakegpu"
#: ops that CUDA runs with CPU tensors among their arguments (moves, copies, CPU index tensors, scalars out)
CPU_OK = frozenset({
    "aten.copy_.default", "aten._to_copy.default", "aten.index.Tensor", "aten.index_put_.default",
    "aten.index_put.default", "aten._index_put_impl_.default", "aten._local_scalar_dense.default",
})

_STATE: dict[str, object] = {}


class FakeGPUTensor(torch.Tensor):
    """A tensor on ``fakegpu:0`` whose data is the CPU tensor :attr:`elem` (see the module docstring)."""

    elem: torch.Tensor
    __slots__ = ["elem"]

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        extra = {"strides": elem.stride(), "storage_offset": elem.storage_offset()} if elem.layout == torch.strided else {}
        r = torch.Tensor._make_wrapper_subclass(cls, elem.size(), dtype=elem.dtype, layout=elem.layout,
                                                device=device(), requires_grad=elem.requires_grad, **extra)
        r.elem = elem
        return r

    def __repr__(self) -> str:
        return f"FakeGPUTensor({self.elem!r})"

    def tolist(self):  # CUDA tensors convert (Tensor.tolist refuses subclasses)
        return self.elem.tolist()

    def numpy(self, *args, **kwargs):
        raise TypeError(f"can't convert {NAME}:0 device type tensor to numpy. Use Tensor.cpu() to copy the "
                        "tensor to host memory first.")

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = str(func)
        flat, _ = tree_flatten((args, kwargs))
        _check_placement(name, flat)
        dev = kwargs.get("device")
        to_cpu = dev is not None and torch.device(dev).type == "cpu"
        if dev is not None and torch.device(dev).type == NAME:
            kwargs["device"] = torch.device("cpu")
        elif name == "aten._to_copy.default":
            kwargs.pop("device", None)

        def unwrap(t):
            return t.elem if isinstance(t, FakeGPUTensor) else t

        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        if to_cpu:  # .cpu() / .to("cpu"): a plain CPU tensor
            return out
        if func._schema.is_mutable:
            return _written(func, args, kwargs, out)
        return tree_map(_wrap, out)


def _written(func, args: tuple, kwargs: dict, out):
    """What a mutating op returns: each return that aliases a written argument is that argument as given
    (in place: ``self``; ``out=``: ``out``), the others wrapped."""
    schema = func._schema
    given = {}
    for i, a in enumerate(schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            given[frozenset(a.alias_info.before_set)] = args[i] if i < len(args) else kwargs.get(a.name)
    if not schema.returns:
        return out
    outs = out if isinstance(out, tuple) else (out,)
    rets = [given.get(frozenset(r.alias_info.before_set), _wrap(o)) if r.alias_info else tree_map(_wrap, o)
            for r, o in zip(schema.returns, outs)]
    return rets[0] if len(rets) == 1 else tuple(rets)


def _check_placement(name: str, flat: list) -> None:
    """CUDA's rules for one op's flattened arguments (see the module docstring)."""
    if not any(isinstance(t, FakeGPUTensor) for t in flat):
        return
    if any(isinstance(g, torch.Generator) and g.device.type == "cpu" for g in flat):
        raise RuntimeError(f"Expected a '{NAME}' device type for generator but found 'cpu' (in {name})")
    if name in CPU_OK:
        return
    for t in flat:
        if isinstance(t, torch.Tensor) and not isinstance(t, FakeGPUTensor) and (t.dim() > 0 or t.device.type != "cpu"):
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found at least two devices, {NAME}:0 and "
                f"{t.device}! (in {name}: a {t.device} tensor of shape {list(t.shape)})"
            )


def _wrap(t):
    return FakeGPUTensor(t) if isinstance(t, torch.Tensor) and not isinstance(t, FakeGPUTensor) else t


# ----------------------------------------------------------- PrivateUse1 kernels (factories, copies)
def _empty(size, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return FakeGPUTensor(torch.empty(size, dtype=dtype, layout=layout, memory_format=memory_format))


def _empty_strided(size, stride, dtype=None, layout=None, device=None, pin_memory=None):
    return FakeGPUTensor(torch.empty_strided(size, stride, dtype=dtype, layout=layout))


def _copy_from(self, dst, non_blocking=False):
    dst.elem.copy_(self.elem if isinstance(self, FakeGPUTensor) else self)
    return dst


def _copy_from_and_resize(self, dst):
    src = self.elem if isinstance(self, FakeGPUTensor) else self
    dst.elem.resize_(src.shape).copy_(src)
    return dst


def _register() -> None:
    import torch.utils.backend_registration as backend

    current = torch._C._get_privateuse1_backend_name()
    if current != NAME:
        if current != "privateuseone":
            raise RuntimeError(f"the PrivateUse1 backend is already taken by {current!r}")
        backend._setup_privateuseone_for_python_backend(rename=NAME)
    lib = torch.library.Library("aten", "IMPL")
    for op, fn in (("empty.memory_format", _empty), ("empty_strided", _empty_strided),
                   ("_copy_from", _copy_from), ("_copy_from_and_resize", _copy_from_and_resize)):
        lib.impl(op, fn, "PrivateUse1")
    _STATE["lib"] = lib  # the registrations live as long as the library object


def available() -> tuple[bool, str]:
    """``(True, "")`` once the fake device works in this process, else ``(False, why)`` (registered once)."""
    if "ok" not in _STATE:
        try:
            _register()
            x = torch.arange(4.0).to(device())
            assert float((x * 2).sum()) == 12.0 and (x + 1).cpu().tolist() == [1.0, 2.0, 3.0, 4.0]
            _STATE["ok"], _STATE["why"] = True, ""
        except Exception as exc:  # noqa: BLE001 - an experimental torch API: any failure means "not here"
            _STATE["ok"], _STATE["why"] = False, f"{type(exc).__name__}: {exc}".splitlines()[0]
    return bool(_STATE["ok"]), str(_STATE["why"])


def device() -> torch.device:
    """``fakegpu:0``."""
    return torch.device(NAME, 0)
