"""residue's pytest plugin: under `residue check`, leaks are attributed to the test that made them.

Use it with `pytest -p residue_pytest` and `PYTHONPATH=<residue checkout>/python` (or copy this
file next to your tests, or add `pytest_plugins = ["residue_pytest"]` to a conftest.py):

    PYTHONPATH=/opt/residue/python residue check --junit leaks.xml -- python3 -m pytest -p residue_pytest tests/

How it works: residue records the Python frames of every allocation. The plugin calls each
test's body through a function named `__residue_test_<N>__`, so every stack the body made
carries that frame, and writes the test's node id and marker limits to the file named by
`RESIDUE_PYTEST_MANIFEST` (which `residue check` sets). residue then reports each counted stack
under its test, and judges tests with a marker by the marker's limits. Outside `residue check`
the plugin does nothing but register the marker.

    @pytest.mark.residue(max_bytes=4096, max_count=10, fds=0, streams=0, dirs=0, mappings=0)

limits this test's body: `max_bytes`/`max_count` are heap bytes and blocks, the others counts
of that kind. A kind the marker does not name is judged by its library's limits.
`repeat=True` (or `--residue-repeat` for every test) runs the body twice, through
`__residue_warmup_<N>__` first: what only the first call allocated (a cache filled on first
use) is left out; what the second call leaked again counts.
"""

import inspect
import json
import os
import types

import pytest

MANIFEST_ENV = "RESIDUE_PYTEST_MANIFEST"

# Marker keyword -> (kind, limit field).
_LIMITS = {
    "max_bytes": ("heap", "max-bytes"),
    "max_count": ("heap", "max-count"),
    "fds": ("fd", "max-count"),
    "streams": ("stream", "max-count"),
    "dirs": ("dir", "max-count"),
    "mappings": ("mapping", "max-count"),
}


def pytest_addoption(parser):
    group = parser.getgroup("residue", "residue leak checks")
    group.addoption(
        "--residue-repeat",
        action="store_true",
        default=False,
        help="run each test body twice under residue check; only what the second run leaks counts",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "residue(max_bytes=None, max_count=None, fds=None, streams=None, dirs=None, mappings=None, repeat=False): "
        "leak limits for this test's body under `residue check`",
    )
    path = os.environ.get(MANIFEST_ENV)
    config._residue = _Recorder(path, config.getoption("residue_repeat")) if path else None


def _call(fn, kwargs):
    return fn(**kwargs)


# Every wrapper made, kept alive to the end: residue's interposer caches what it learned of a
# code object by its address (and its name's), so a freed wrapper whose memory the next one
# reuses would be reported under the old name.
_wrappers = {}


def _named(name):
    """`_call` under another code name: the frame residue sees in every stack of the body."""
    fn = _wrappers.get(name)
    if fn is None:
        code = _call.__code__
        if hasattr(code, "co_qualname"):
            code = code.replace(co_name=name, co_qualname=name)
        else:
            code = code.replace(co_name=name)
        fn = _wrappers[name] = types.FunctionType(code, _call.__globals__, name)
    return fn


class _Recorder:
    def __init__(self, path, repeat_all):
        self.path = path
        self.repeat_all = repeat_all
        self.next_id = 0
        self.ids = {}
        self.entries = {}
        # Truncate: one manifest per run.
        with open(self.path, "w"):
            pass

    def _write(self, entry):
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def register(self, item):
        self.next_id += 1
        n = self.next_id
        marker = item.get_closest_marker("residue")
        kwargs = dict(marker.kwargs) if marker else {}
        repeat = bool(kwargs.pop("repeat", False)) or self.repeat_all
        limits = {}
        for key, value in kwargs.items():
            if key not in _LIMITS:
                raise pytest.UsageError(
                    f"{item.nodeid}: @pytest.mark.residue got an unknown argument {key!r} "
                    f"(known: {', '.join(sorted(_LIMITS))}, repeat)"
                )
            kind, field = _LIMITS[key]
            limits.setdefault(kind, {"max-bytes": None, "max-count": None})[field] = int(value)
        entry = {"id": n, "nodeid": item.nodeid, "limits": limits, "repeat": repeat}
        self.ids[item.nodeid] = n
        self.entries[n] = entry
        self._write(entry)
        return n, repeat

    def outcome(self, nodeid, outcome):
        n = self.ids.get(nodeid)
        if n is not None:
            entry = dict(self.entries[n], outcome=outcome)
            self.entries[n] = entry
            self._write(entry)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    recorder = getattr(pyfuncitem.config, "_residue", None)
    fn = pyfuncitem.obj
    if recorder is None or inspect.iscoroutinefunction(fn):
        return None  # pytest (or an async plugin) calls it as usual
    n, repeat = recorder.register(pyfuncitem)
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    if repeat:
        _named(f"__residue_warmup_{n}__")(fn, args)
    _named(f"__residue_test_{n}__")(fn, args)
    return True


def pytest_runtest_logreport(report):
    if report.when != "call":
        return
    recorder = getattr(pytest_runtest_logreport, "_recorder", None)
    if recorder is not None:
        recorder.outcome(report.nodeid, report.outcome)


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session):
    # pytest_runtest_logreport has no config argument: hand it the recorder here.
    pytest_runtest_logreport._recorder = getattr(session.config, "_residue", None)
