"""tfm_kernels: hand-written CUDA kernels for the Transformer's matmul, softmax and attention.

Every function mirrors its ``numpy_ref`` namesake name for name and signature for signature, plus
keyword-only ``backend`` (``"ext"``: the pybind11 extension built by nvcc; ``"cupy"``: the same
source compiled by NVRTC through CuPy ``RawModule``; ``None``: the extension when it loaded, else
CuPy), ``variant`` (``None``: the best correct version for the shape) and ``out``.

    >>> import cupy as cp, numpy_ref, tfm_kernels
    >>> x = cp.random.standard_normal((4096, 1000), dtype=cp.float32)
    >>> y = tfm_kernels.softmax(x)                       # fastest correct variant
    >>> y1 = tfm_kernels.softmax(x, backend="cupy", variant="1_naive")
    >>> tfm_kernels.variants("softmax")                  # the ladder, with descriptions

Importing this package does no GPU work: nothing is compiled or launched until an op is called.
"""

from ._backend import info
from ._registry import ops
from ._registry import variants as _variants
from .attention import attention_backward, attention_forward
from .matmul import matmul
from .softmax import softmax, softmax_backward

__all__ = [
    "attention_backward",
    "attention_forward",
    "info",
    "matmul",
    "ops",
    "softmax",
    "softmax_backward",
    "variants",
]


def variants(op: str):
    """The numbered versions of ``op`` (``"softmax"``, ``"matmul"``, ...) in ladder order."""
    return _variants(op)
