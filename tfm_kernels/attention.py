"""Scaffolding: replaced by the attention kernels' own module (in progress in this commit series)."""


def attention_forward(q, k, v, causal=False, kv_lens=None, scale=None, *, backend=None, variant=None, out=None):
    raise NotImplementedError("attention_forward: kernels not landed yet")


def attention_backward(do, q, k, v, o, lse, causal=False, kv_lens=None, scale=None, *, backend=None,
                       variant=None, out=None):
    raise NotImplementedError("attention_backward: kernels not landed yet")
