"""Scaffolding: replaced by the matmul kernels' own module (in progress in this commit series)."""


def matmul(a, b, trans_a=False, trans_b=False, *, backend=None, variant=None, out=None):
    raise NotImplementedError("matmul: kernels not landed yet")
