"""The optional extras of pyproject.toml that tests need (TensorFlow, scikit-learn...), and
the failure that says what to install when one is missing: a missing extra fails the test,
naming the ``pip install`` that fixes it, instead of skipping it (a skipped test would pass
for a feature nobody checked)."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from functools import cache
from types import ModuleType

import pytest

from tests.conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

# Import names that differ from the distribution an extra lists.
DISTRIBUTIONS = {"tensorflow": "tensorflow-cpu", "sklearn": "scikit-learn"}
MISSING = re.compile(r"No module named '([\w.]+)'")


@cache
def readme_test_install() -> str:
    """The README's command installing what the test suite needs."""
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("pip install -e") and "test" in line:
            return line.split("&&")[0].strip()
    raise AssertionError("README.md has no `pip install -e \".[test,...]\"` line")


def install_hint(module: str) -> str | None:
    """What installs ``module`` (its top-level package): the extra of pyproject.toml listing
    it, and the README's line for the whole suite; None when no extra lists it."""
    top = module.split(".")[0]
    wanted = DISTRIBUTIONS.get(top, top).lower()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    found = [extra for extra, requirements in extras.items()
             if any(re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower() == wanted
                    for r in requirements)]
    if not found:
        return None
    return (f"{top} is not installed: pip install -e '.[{found[0]}]' (or the README's "
            f"`{readme_test_install()}`, which installs everything the tests need)")


def missing_hint(output: str) -> str:
    """For the output of a program that failed: the :func:`install_hint` of the module it
    could not import, with a blank line after it; else ""."""
    m = MISSING.search(output)
    hint = install_hint(m[1]) if m else None
    return f"{hint}\n\n" if hint else ""


def require_installed(module: str) -> None:
    """Fails the calling test, saying what to install, when ``module`` is not installed
    (without importing it: for tests that run it in a subprocess)."""
    if importlib.util.find_spec(module) is None:
        pytest.fail(install_hint(module) or f"{module} is not installed", pytrace=False)


def require(module: str) -> ModuleType:
    """``module``, imported; fails the calling test (or module) saying what to install when
    it, or an extra it imports (``varstore.tensorflow`` needs TensorFlow), is missing."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        hint = install_hint(e.name or module)
        if hint is None:
            raise
        pytest.fail(hint, pytrace=False)
