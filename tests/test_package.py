"""The package's surface: what ``dir(replayable)`` shows."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
import sys
from types import ModuleType

import pytest

import replayable as rp
import replayable.testing as rt
from replayable._exports import is_private


class TestDir:
    def test_dir_is_the_api_and_the_public_modules(self) -> None:
        """``dir(replayable)`` lists ``__all__`` and the public modules, nothing private."""
        assert dir(rp) == sorted({*rp.__all__, *rp._SUBMODULES})
        assert not [name for name in dir(rp) if name.startswith("_") and name != "__version__"]

    def test_the_public_modules_are_every_module_without_an_underscore(self) -> None:
        """_SUBMODULES names exactly the package's modules whose names are public."""
        found = {m.name for m in pkgutil.iter_modules(rp.__path__) if not m.name.startswith("_")}
        assert set(rp._SUBMODULES) == found

    def test_private_modules_are_imported_but_not_listed(self) -> None:
        """The counter-check: private modules are attributes of the package (imported on the
        way) that dir() leaves out."""
        assert hasattr(rp, "_engine")
        assert "_engine" not in dir(rp)


def _public_modules() -> list[ModuleType]:
    """The package and every module of it whose dotted name has no private part."""
    names = ["replayable"]
    names += [
        info.name
        for info in pkgutil.walk_packages(rp.__path__, "replayable.")
        if not any(part.startswith("_") for part in info.name.split("."))
    ]
    return [importlib.import_module(name) for name in names]


class TestPublicNamesNameTheirPublicModule:
    def test_every_exported_class_and_function_names_a_public_module(self) -> None:
        """A name exported by a public module shows a public ``__module__`` that holds it
        (``replayable.CheckReport``, not ``replayable._check._report``), so reprs and pickles
        point where the user imports it."""
        wrong = []
        for module in _public_modules():
            for name in getattr(module, "__all__", ()):
                obj = getattr(module, name)
                if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                    continue
                home = obj.__module__
                if not home.startswith("replayable"):
                    continue
                if is_private(home) or getattr(sys.modules[home], obj.__name__, None) is not obj:
                    wrong.append(f"{module.__name__}.{name}: {home}")
        assert wrong == []

    def test_the_names_it_covers(self) -> None:
        """The counter-check: names written in private modules are among those checked."""
        assert rp.CheckReport.__module__ == "replayable"
        assert rp.check.__module__ == "replayable"
        assert rp.Event.__module__ == "replayable.trace"
        assert rt.assert_calls.__module__ == "replayable.testing"
        assert repr(rp.PII) == "<class 'replayable.PII'>"

    def test_a_published_class_pickles_by_its_public_name(self) -> None:
        """A value of a re-exported class round-trips through pickle (its public module holds
        the class under that name)."""
        verification = rp.trace.Verification(run_id="r", event_count=0, head_hash="h")
        assert pickle.loads(pickle.dumps(verification)) == verification


class TestModulesNamedLikeTheirFunction:
    @pytest.mark.parametrize("name", ["boundary", "cassette", "record", "replay"])
    def test_import_gives_the_module(self, name: str) -> None:
        """``import replayable.replay`` gives the module (with its classes), not the function
        of the same name re-exported on the package."""
        module = importlib.import_module(f"replayable.{name}")
        assert getattr(rp, name) is module
        assert isinstance(module, ModuleType)
        assert module.__all__

    def test_import_statement_reaches_the_module_attributes(self) -> None:
        """``import replayable.replay as m`` then ``m.Replay`` works (it failed on the function)."""
        import replayable.record as record_module
        import replayable.replay as replay_module

        assert replay_module.Replay is rp.Replay
        assert record_module.Recorder.__module__ == "replayable.record"

    def test_rp_replay_still_records_and_replays(self) -> None:
        """``rp.record(...)``, ``@rp.boundary`` and ``rp.replay(...)`` still work as functions:
        the replay serves the recorded call and the function is not called again."""
        calls = []

        @rp.boundary(kind="tool")
        def lookup(name: str) -> int:
            calls.append(name)
            return len(calls)

        with rp.record(name="shadow") as run:
            assert lookup("bob") == 1
        with rp.replay(run.id) as replayed:
            assert lookup("bob") == 1
        assert calls == ["bob"]
        assert replayed.ok

    def test_the_module_shows_the_functions_signature(self) -> None:
        """``inspect.signature(rp.replay)`` is the function's, for help() and IDEs."""
        import replayable.replay as replay_module

        assert inspect.signature(rp.replay) == inspect.signature(replay_module.replay)
        assert "source" in inspect.signature(rp.replay).parameters
