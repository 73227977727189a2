"""A test that needs an optional extra which is not installed fails saying what to install
(tests/extras.py), never skips: the extra of pyproject.toml, and the README's line for the
whole suite."""

from __future__ import annotations

import sys

import pytest

from tests.extras import install_hint, missing_hint, require, require_installed

SUITE_LINE = "pip install -e \".[test,interop,examples]\""


def test_the_hint_names_the_extra_and_the_readmes_line() -> None:
    assert install_hint("tensorflow.compat.v1") == (
        f"tensorflow is not installed: pip install -e '.[interop]' (or the README's "
        f"`{SUITE_LINE}`, which installs everything the tests need)")
    assert install_hint("sklearn").startswith(  # type: ignore[union-attr]
        "sklearn is not installed: pip install -e '.[examples]'")
    assert install_hint("no_such_module") is None  # no extra installs it: no made-up advice


def test_a_failed_programs_output_gets_the_hint() -> None:
    traceback = ('Traceback (most recent call last):\n  File "<string>", line 2\n'
                 "ModuleNotFoundError: No module named 'tensorflow'\n")
    assert missing_hint(traceback) == f"{install_hint('tensorflow')}\n\n"
    assert missing_hint("ValueError: bad\n") == ""


def test_a_missing_extra_fails_the_test_with_the_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)  # importing it fails, as when missing
    with pytest.raises(pytest.fail.Exception) as caught:
        require("sklearn")
    assert str(caught.value) == install_hint("sklearn")
    with pytest.raises(pytest.fail.Exception) as caught:
        require_installed("no_such_module")
    assert str(caught.value) == "no_such_module is not installed"
