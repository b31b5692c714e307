"""Fixtures shared by tests/ and benchmarks/."""

import pytest


@pytest.fixture(params=["ext", "cupy"])
def backend(request):
    """Runs a GPU test once per backend ("ext": the pybind11 extension; "cupy": CuPy RawModule over
    the same source); skips with the stated reason when no CUDA device is usable or that backend did
    not load."""
    from tfm_kernels import _backend

    if why := _backend.unavailable(request.param):
        pytest.skip(why)
    return request.param


# --- a kernel fault must not be blamed on the tests after it ------------------------------------
# A fault (an illegal address, a trap) loses the process's CUDA context: every later CUDA call
# fails, whatever kernel it launches. So on a GPU: the tests of first-run variants (never yet seen
# passing on a GPU, `extra["unverified"]`) run last in their file; after any failing test the
# context is probed (`_backend.context_lost`), and once it is gone every later test is skipped
# with "CUDA context lost after <test>", never failed, and its id is written to --tfm-lost-file,
# from which scripts/gpu_check.sh reruns them in a fresh process. Without a GPU nothing changes.
# --tfm-progress-file: one JSON line per collected list, test start and outcome, flushed at once,
# so a pass killed by gpu_check.sh's time cap (no junit XML yet) still tells what ran.

_LOST: dict = {}     # nodeid and error of the test after which the CUDA context was gone
_CONFIG: list = []   # the pytest config (pytest_runtest_logstart is not given it)


def pytest_addoption(parser):
    parser.addoption("--tfm-lost-file", default=None, metavar="PATH",
                     help="write the ids of tests skipped after a lost CUDA context here, one per line")
    parser.addoption("--tfm-progress-file", default=None, metavar="PATH",
                     help="append one JSON line per collected list, test start and test outcome, flushed "
                          "at once: what a pass killed by a time cap still leaves (junit XML is written "
                          "only at the end)")


def _progress(config, record: dict) -> None:
    path = config.getoption("--tfm-progress-file", default=None)
    if path:
        import json

        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def pytest_collection_finish(session):
    _progress(session.config, {"collected": [it.nodeid for it in session.items]})


def pytest_runtest_logstart(nodeid, location):
    if _CONFIG:
        _progress(_CONFIG[0], {"start": nodeid})


def pytest_runtest_logreport(report):
    if not _CONFIG or not (report.when == "call" or report.failed or report.skipped):
        return
    msg = ""
    if report.skipped and isinstance(report.longrepr, tuple):
        msg = str(report.longrepr[2])
    elif report.failed:  # what junit's message holds: "RuntimeError: cudaErrorIllegalAddress: ..."
        crash = getattr(report.longrepr, "reprcrash", None)
        msg = getattr(crash, "message", None) or (getattr(report, "longreprtext", "") or "").strip()[-300:]
    _progress(_CONFIG[0], {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                           "message": msg[:300]})


def pytest_configure(config):
    _CONFIG[:] = [config]


def _gpu() -> bool:
    try:
        from tfm_kernels import _backend

        return bool(_backend.status()["device"][0])
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if not _gpu():
        return
    from tfm_kernels import _registry

    first = {v.key for op in _registry.ops() for v in _registry.variants(op) if _registry.first_run(v)}
    modules: dict[str, int] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::")[0], len(modules))

    def late(item) -> bool:
        return "backend" in getattr(item, "fixturenames", ()) and any(_registry.names(k, item.name) for k in first)

    items[:] = sorted(items, key=lambda it: (modules[it.nodeid.split("::")[0]], late(it)))  # stable


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and not _LOST and _gpu():
        from tfm_kernels import _backend

        if err := _backend.context_lost():
            _LOST.update(nodeid=item.nodeid, error=err)


def pytest_runtest_setup(item):
    if _LOST:
        path = item.config.getoption("--tfm-lost-file")
        if path:
            with open(path, "a") as f:
                f.write(item.nodeid + "\n")
        pytest.skip(f"CUDA context lost after {_LOST['nodeid']} ({_LOST['error']}); "
                    "not run in this process")
