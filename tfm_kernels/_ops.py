"""Imports every op module so that each registers its variants (cheap: nothing is compiled)."""

from . import attention, matmul, softmax  # noqa: F401
