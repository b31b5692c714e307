"""Imports every op module so that each registers its variants (cheap: nothing is compiled)."""

from . import attention, attention_tc, matmul, matmul_tc, softmax  # noqa: F401
