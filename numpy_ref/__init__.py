"""numpy_ref: the float64 NumPy ground truth for the Transformer and every kernel in tfm_kernels."""

# The kernel-facing core: tfm_kernels mirrors these names and signatures one for one.
from .matmul import matmul
from .softmax import (softmax, softmax_forward, softmax_backward,
                      log_softmax, log_softmax_forward, log_softmax_backward)
from .attention import (attention_forward, attention_backward,
                        flash_attention_forward, flash_attention_backward)

__all__ = [
    "matmul",
    "softmax", "softmax_forward", "softmax_backward",
    "log_softmax", "log_softmax_forward", "log_softmax_backward",
    "attention_forward", "attention_backward", "flash_attention_forward", "flash_attention_backward",
]
