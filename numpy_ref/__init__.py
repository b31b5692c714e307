"""numpy_ref: the float64 NumPy ground truth for the Transformer and every kernel in tfm_kernels."""
