"""numpy_ref: the float64 NumPy ground truth for the Transformer and every kernel in tfm_kernels.

One convention everywhere: `X_forward(...) -> (out, cache)`, `X_backward(dout, cache) -> grads`.
The kernel-facing core (matmul, softmax, attention) keeps the exact signatures tfm_kernels mirrors.
"""

# The kernel-facing core: tfm_kernels mirrors these names and signatures one for one.
from .matmul import matmul
from .softmax import (softmax, softmax_forward, softmax_backward,
                      log_softmax, log_softmax_forward, log_softmax_backward)
from .attention import (attention_forward, attention_backward,
                        flash_attention_forward, flash_attention_backward)

# Functional ops of the model, one module per family.
from .linear import linear_forward, linear_backward
from .embedding import embedding_forward, embedding_backward
from .positional import sinusoidal_positional_encoding
from .activations import relu_forward, relu_backward, gelu_forward, gelu_backward
from .layernorm import layer_norm_forward, layer_norm_backward
from .dropout import dropout_forward, dropout_backward
from .loss import cross_entropy_forward, cross_entropy_backward
from .mha import multi_head_attention_forward, multi_head_attention_backward

# The model.
from .transformer import Transformer, TransformerConfig, parameter_shapes

__all__ = [
    "matmul",
    "softmax", "softmax_forward", "softmax_backward",
    "log_softmax", "log_softmax_forward", "log_softmax_backward",
    "attention_forward", "attention_backward", "flash_attention_forward", "flash_attention_backward",
    "linear_forward", "linear_backward", "embedding_forward", "embedding_backward",
    "sinusoidal_positional_encoding", "relu_forward", "relu_backward", "gelu_forward", "gelu_backward",
    "layer_norm_forward", "layer_norm_backward", "dropout_forward", "dropout_backward",
    "cross_entropy_forward", "cross_entropy_backward",
    "multi_head_attention_forward", "multi_head_attention_backward",
    "Transformer", "TransformerConfig", "parameter_shapes",
]
