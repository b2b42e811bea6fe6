"""Small helpers shared by the generators and the discriminator."""
from __future__ import annotations

import torch
import torch.nn as nn

import msca_kernels as mk
from torch.nn.utils.parametrizations import spectral_norm

INIT_TYPES = ("xavier", "xavier_uniform", "kaiming", "orthogonal", "normal", "default")


@torch.no_grad()
def init_weight_(weight: torch.Tensor, init_type: str, gain: float) -> None:
    if init_type == "xavier":
        nn.init.xavier_normal_(weight, gain=gain)
    elif init_type == "xavier_uniform":
        nn.init.xavier_uniform_(weight, gain=1.0)
    elif init_type == "kaiming":
        nn.init.kaiming_normal_(weight, a=0, mode="fan_in")
    elif init_type == "orthogonal":
        nn.init.orthogonal_(weight, gain=gain)
    elif init_type == "normal":
        nn.init.normal_(weight, 0.0, gain)
    else:
        raise ValueError(f"init_type: expected one of {INIT_TYPES}, got {init_type!r}")


@torch.no_grad()
def init_weights(module: nn.Module, init_type: str = "xavier", gain: float = 0.02,
                 skip: tuple[type, ...] = ()) -> None:
    """SPADE's BaseNetwork.init_weights: conv and linear weights from `init_type` with `gain`
    (xavier-normal, gain 0.02 by default in SPADE), biases zero. Modules of the types in `skip`
    (and everything inside them) keep their own initialisation. Call before spectral norm is
    attached, so the initialised tensor is the one spectral norm wraps."""
    if init_type == "default":
        return
    if init_type not in INIT_TYPES:
        raise ValueError(f"init_type: expected one of {INIT_TYPES}, got {init_type!r}")

    def visit(m: nn.Module):
        if skip and isinstance(m, skip):
            if hasattr(m, "init_weights"):
                m.init_weights(init_type, gain)
            return
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            init_weight_(m.weight, init_type, gain)
            if m.bias is not None:
                m.bias.zero_()
        for child in m.children():
            visit(child)

    visit(module)


def add_spectral_norm(conv: nn.Module) -> nn.Module:
    return spectral_norm(conv)


class KernelBackendMixin:
    """For generators holding a frozen VGG outside their parameters and msca_kernels layers.

    `.to()`/`.cuda()`/`.double()` also move `self.vgg` (kept out of the module tree so that it
    is neither saved nor trained), and `set_backend` switches every MSCA and SPADE layer.
    """

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.vgg._apply(fn, recurse)
        return self

    @property
    def backend(self) -> str:
        return self._backend

    def set_backend(self, backend: str) -> None:
        """Switch every MSCA and SPADE layer of a live model to `backend`."""
        if backend != "auto" and backend not in mk.available_backends():
            raise ValueError(f"backend: expected 'auto' or one of "
                             f"{tuple(mk.available_backends())}, got {backend!r}")
        for m in self.modules():
            if isinstance(m, (mk.nn.MSCA, mk.nn.SPADE)):
                m.backend = backend
        self._backend = backend
