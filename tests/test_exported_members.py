"""The public API is exactly what __all__ says, and all of it is documented."""

from __future__ import annotations

import inspect

import replayable as rp

EXPECTED = {
    "Boundary",
    "Cassette",
    "CheckReport",
    "Codec",
    "CutValue",
    "Divergence",
    "DriftReport",
    "Event",
    "FieldChange",
    "FixtureMiss",
    "InvalidOtlp",
    "Keep",
    "NetworkRefused",
    "NotCaptured",
    "PII",
    "PIIKeyError",
    "RecordedError",
    "Replay",
    "ReplayableError",
    "ReplayableWarning",
    "Run",
    "RunDiff",
    "RunNotFound",
    "SideEffectRefused",
    "Store",
    "StoreUnavailable",
    "TraceCorrupt",
    "UnknownBoundary",
    "Unserializable",
    "UnsupportedClient",
    "__version__",
    "annotate",
    "bind",
    "boundary",
    "canonicalize",
    "cassette",
    "check",
    "diff",
    "drift",
    "flag",
    "flush",
    "get_boundary",
    "import_otlp",
    "instrument",
    "key",
    "now",
    "open_store",
    "random",
    "record",
    "redact",
    "registry",
    "replay",
    "uuid4",
}


def test_all_is_the_public_api() -> None:
    """__all__ is exactly the public names (sorted), and each resolves."""
    assert set(rp.__all__) == EXPECTED
    assert rp.__all__ == sorted(rp.__all__)
    for name in rp.__all__:
        assert getattr(rp, name) is not None


def test_public_objects_have_docstrings() -> None:
    """Every exported class and function says what it does."""
    for name in rp.__all__:
        obj = getattr(rp, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), name


def test_errors_share_one_root() -> None:
    """Every error class subclasses ReplayableError."""
    for name in rp.__all__:
        obj = getattr(rp, name)
        if (
            inspect.isclass(obj)
            and issubclass(obj, Exception)
            and not issubclass(obj, Warning)
            and obj is not rp.ReplayableError
        ):
            assert issubclass(obj, rp.ReplayableError), name


def test_warnings_live_with_the_errors() -> None:
    """ReplayableWarning has one home, errors.py, and is the same object wherever imported."""
    import importlib

    errors = importlib.import_module("replayable.errors")
    record = importlib.import_module("replayable.record")
    assert rp.ReplayableWarning is errors.ReplayableWarning is record.ReplayableWarning
