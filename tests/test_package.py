"""The package's surface: what ``dir(replayable)`` shows."""

from __future__ import annotations

import pkgutil

import replayable as rp


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
