"""msca_kernels: fused masked spatial-channel attention (MSCA) and SPADE denormalisation.

    import msca_kernels as mk
    out = mk.msca_attention(fx2, fc2, fc1, phi_weight, psi_weight, mask)
    y = mk.spade_norm(x, gamma, beta, mode="batch")
    layer = mk.nn.MSCA(64, 64, 64, k=16); norm = mk.nn.SPADE("spadebatch3x3", 64, 32)
    mk.available_backends()
    out = mk.MSCAFunction.apply(fx2, fc2, fc1, phi_weight, psi_weight, mask)  # autograd.Function
    mk.empty_cache()   # hand the CPU kernels' cached output buffers back to the system
"""
from . import reference
from .memory import cached_bytes, empty_cache
from .backends import BackendStatus, available_backends
from .msca import msca_attention
from .spade import spade_norm
from . import nn  # noqa: E402  (nn uses the functions above)
from .functions import MSCAFunction, SPADENormFunction

__all__ = ["msca_attention", "spade_norm", "available_backends", "BackendStatus", "nn",
           "reference", "empty_cache", "cached_bytes", "MSCAFunction", "SPADENormFunction"]
__version__ = "0.1.0"
