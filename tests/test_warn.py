"""replayable's warnings name the user's line, whatever path led from it into replayable."""

from __future__ import annotations

import sysconfig
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import replayable as rp
from replayable._warn import user_stacklevel, warn


@rp.boundary(kind="tool", name="warn_lookup")
def lookup(uid: int) -> str:
    return f"user{uid}"


class TestAttribution:
    def test_a_boundary_called_from_a_pool_thread_names_the_callers_line(self) -> None:
        """The orphan-call warning names the line that called the boundary in the thread."""
        with pytest.warns(rp.ReplayableWarning, match="outside the active") as caught:
            with rp.record(), ThreadPoolExecutor(1) as pool:
                pool.submit(lambda: lookup(1)).result()
        assert [w.filename for w in caught] == [__file__]

    def test_warn_called_directly_names_its_caller(self) -> None:
        """Called from code outside replayable, the warning names that code's line."""
        with pytest.warns(rp.ReplayableWarning) as caught:
            warn("here")
        line = caught[0].lineno
        assert caught[0].filename == __file__
        assert "warn(" in Path(__file__).read_text().splitlines()[line - 1]

    def test_library_frames_are_skipped_up_to_the_users(self) -> None:
        """Between replayable and the user, a library's frames (as an SDK's) are passed by."""
        library = Path(sysconfig.get_paths()["purelib"]) / "some_sdk" / "client.py"
        code = compile("def call(f):\n    return f()\n", str(library), "exec")
        namespace: dict[str, object] = {}
        exec(code, namespace)
        with pytest.warns(rp.ReplayableWarning) as caught:
            namespace["call"](lambda: warn("through a library"))  # type: ignore[operator]
        assert caught[0].filename == __file__

    def test_only_library_frames_outside_name_the_first_of_them(self) -> None:
        """When no frame outside replayable is the user's (an app installed as a package,
        run in a thread), the first frame outside replayable is named."""
        library = Path(sysconfig.get_paths()["purelib"]) / "installed_app" / "main.py"
        code = compile("def run(w):\n    w('from an installed app')\n", str(library), "exec")
        namespace: dict[str, object] = {}
        exec(code, namespace)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            thread = threading.Thread(target=namespace["run"], args=(warn,))  # type: ignore[arg-type]
            thread.start()
            thread.join()
        assert [w.filename for w in caught] == [str(library)]

    def test_level_counts_from_the_caller(self) -> None:
        """user_stacklevel from code outside replayable is 1: the caller itself."""
        assert user_stacklevel() == 1
