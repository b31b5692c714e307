"""Scaffolding: replaced by the CUDA plumbing (status, get, info, the two backends)."""


def info():
    raise NotImplementedError("info: backends not landed yet")


def status():
    return {"device": (False, "backends not landed yet"), "ext": (False, "not built"), "cupy": (False, "not loaded")}
