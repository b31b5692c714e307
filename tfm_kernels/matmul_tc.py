"""Scaffolding: replaced by the matmul_tc kernels' own module (in progress in this commit series)."""
