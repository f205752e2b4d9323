"""The SAE architecture registry: each architecture registered together with its config dataclass.

An *architecture* (:class:`Architecture`) says how the weights of an
:class:`~harness.sae.model.SAE` turn activations into codes (:meth:`~Architecture.encode`),
codes back into activations (:meth:`~Architecture.decode`), and how such an SAE
is trained (its :attr:`~Architecture.trainer`, whose ``loss`` is the train step
of one mini-batch inside the shared loop of :class:`harness.sae.training.Trainer`).
Its *config* (a frozen :class:`SAEConfig` subclass) holds what the code depends
on besides the weights (``k`` of a TopK SAE, ...), and is what ``sae.json``
stores.  As in SAELens, the two are registered together::

    @register_architecture("topk", TopKConfig)
    class TopK(Architecture): ...

and looked up by name (:func:`get_architecture`) or from a config
(:func:`architecture_of`); nothing else branches on the name.  The built-in
architectures (``topk``, ``relu``, ``argmax``, ``discrete``, ``jumprelu``, ``batchtopk``,
``matryoshka``) register when :mod:`harness.sae` is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar, TypeVar

import torch

from harness.errors import ConfigError, DuplicateNameError
from harness.protocols.reconstruction import SparseCodes
from harness.sae.kernels import sparse_decode

if TYPE_CHECKING:  # pragma: no cover
    from harness.sae.model import SAE
    from harness.sae.training import Trainer


@dataclass(frozen=True, kw_only=True)
class SAEConfig:
    """What every architecture's code depends on besides the weights.

    ``apply_b_dec_to_input``: encode ``x - b_dec`` (True, the usual choice) or ``x``.
    Subclasses add their own fields; :attr:`saved` names those written to ``sae.json``.
    """

    apply_b_dec_to_input: bool = True

    #: the registered name of this config's architecture (set by :func:`register_architecture`)
    architecture: ClassVar[str] = ""
    #: config fields written to / read from ``sae.json`` besides ``apply_b_dec_to_input``
    saved: ClassVar[tuple[str, ...]] = ()


class Architecture:
    """How SAEs of one architecture encode, decode and train (subclass and register).

    Weights (see :class:`~harness.sae.model.SAE`): ``W_enc``, ``W_dec`` ``[n_latents, d_in]``,
    ``b_enc`` ``[n_latents]``, ``b_dec`` ``[d_in]``.  Codes are a dense tensor
    ``[N, n_latents]`` or :class:`~harness.protocols.reconstruction.SparseCodes`.
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type[SAEConfig]] = SAEConfig
    #: the trainer class whose ``loss`` is this architecture's train step (None: not trainable here)
    trainer: ClassVar[type["Trainer"] | None] = None
    #: per-latent tensors ``[n_latents]`` an SAE of this architecture holds in ``SAE.extra`` (and
    #: ``sae.safetensors``) besides the four weights, e.g. JumpReLU's ``("threshold",)``
    extra_tensors: ClassVar[tuple[str, ...]] = ()

    def check(self, config: SAEConfig, n_latents: int) -> SAEConfig:
        """``config`` validated for an SAE of ``n_latents`` latents (:class:`ConfigError` if not)."""
        return config

    def encode(self, sae: "SAE", x: torch.Tensor, grads: torch.Tensor | None = None) -> SparseCodes | torch.Tensor:
        """Codes of ``x`` ``[N, d_in]`` (``grads`` ``[N, d_in]``: only for architectures that use them)."""
        raise NotImplementedError

    def decode(self, sae: "SAE", codes: SparseCodes | torch.Tensor) -> torch.Tensor:
        """``x_hat = b_dec + codes W_dec`` ``[N, d_in]`` (an embedding-bag gather for sparse codes)."""
        if isinstance(codes, SparseCodes):
            return sparse_decode(codes.indices, codes.values, sae.W_dec, sae.b_dec)
        return torch.addmm(sae.b_dec, codes.to(sae.W_dec.dtype), sae.W_dec)

    def centred(self, sae: "SAE", x: torch.Tensor) -> torch.Tensor:
        """The encoder's input: ``x - b_dec`` or ``x`` (``config.apply_b_dec_to_input``)."""
        return x - sae.b_dec if sae.config.apply_b_dec_to_input else x

    def to_json(self, config: SAEConfig) -> dict[str, Any]:
        """The config's entries of ``sae.json`` besides ``activation``, ``d_in`` and ``n_latents``."""
        out: dict[str, Any] = {"apply_b_dec_to_input": config.apply_b_dec_to_input}
        out.update({name: getattr(config, name) for name in config.saved})
        return out

    def from_json(self, meta: dict[str, Any], overrides: dict[str, Any]) -> SAEConfig:
        """The config read back from ``sae.json``'s ``meta``; ``overrides`` of saved fields (not None) win."""
        values = {name: meta[name] for name in self.config_cls.saved if name in meta}
        values.update({name: v for name, v in overrides.items() if v is not None and name in self.config_cls.saved})
        try:
            return self.config_cls(apply_b_dec_to_input=bool(meta.get("apply_b_dec_to_input", True)), **values)
        except TypeError as e:
            raise ConfigError(f"{self.name} SAE: {e}") from None


_ARCHITECTURES: dict[str, Architecture] = {}
A = TypeVar("A", bound=type[Architecture])


def register_architecture(name: str, config_cls: type[SAEConfig]) -> Callable[[A], A]:
    """Class decorator registering an :class:`Architecture` subclass and its config class under ``name``."""

    def deco(cls: A) -> A:
        if name in _ARCHITECTURES:
            raise DuplicateNameError(f"SAE architecture {name!r} is already registered")
        if "architecture" in vars(config_cls):
            raise DuplicateNameError(f"{config_cls.__name__} already belongs to architecture {config_cls.architecture!r}")
        cls.name, cls.config_cls = name, config_cls
        config_cls.architecture = name
        _ARCHITECTURES[name] = cls()
        return cls

    return deco


def architecture_names() -> tuple[str, ...]:
    """The registered architecture names, in registration order."""
    return tuple(_ARCHITECTURES)


def get_architecture(name: str) -> Architecture:
    """The architecture registered as ``name`` (:class:`ConfigError` naming the known ones if none)."""
    try:
        return _ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"SAE activation must be one of {architecture_names()}, got {name!r}") from None


def architecture_of(config: SAEConfig) -> Architecture:
    """The architecture a config belongs to."""
    return get_architecture(type(config).architecture)
