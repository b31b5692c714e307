"""Scaffolding: replaced by the attention_tc kernels' own module (in progress in this commit series)."""
