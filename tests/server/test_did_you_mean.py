"""A name that is one typo away from an existing variable gets TensorFlow's message, then a
hint naming the variable (TensorFlow gives none)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator

import pytest

import varstore as vs
import varstore.v1 as tf
from varstore.common import names
from varstore.common.names import did_you_mean
from varstore.errors import NotFoundError
from varstore.server import store as store_module
from varstore.server.app import Server

TF_MISSING = ("Variable layr1/W does not exist, or was not created with tf.get_variable(). "
              "Did you mean to set reuse=tf.AUTO_REUSE in VarScope?")


def test_the_hint_names_the_closest_name_only_when_it_is_close() -> None:
    known = ["layer1/W", "layer1/b", "layer2/W"]
    assert did_you_mean("layr1/W", known) == " (did you mean layer1/W?)"
    assert did_you_mean("output/W", known) == ""
    assert did_you_mean("v", ["w"]) == ""
    assert did_you_mean("foo/inner/y", ["foo/inner/x"]) == ""
    assert did_you_mean("layer1/weigths", ["layer1/weights"]) == " (did you mean layer1/weights?)"
    # Case and one letter more or less are typos too; another one-letter name is not.
    assert did_you_mean("layer1/w", known) == " (did you mean layer1/W?)"
    assert did_you_mean("layer1/Ww", known) == " (did you mean layer1/W?)"
    assert did_you_mean("layer1/bias", ["layer1/bias2"]) == " (did you mean layer1/bias2?)"
    assert did_you_mean("layer1/c", known) == ""


def test_v1_reuse_of_a_misspelled_scope_keeps_tfs_message_and_adds_the_hint() -> None:
    tf.reset_default_graph()
    with tf.variable_scope("layer1"):
        tf.get_variable("W", [2])
    with pytest.raises(ValueError) as caught:
        with tf.variable_scope("layr1", reuse=True):
            tf.get_variable("W", [2])
    assert str(caught.value) == TF_MISSING + " (did you mean layer1/W?)"


def test_eager_reuse_of_a_misspelled_scope_adds_the_hint(client: vs.Client) -> None:
    with client.variable_scope("layer1"):
        client.get_variable("W", [2])
    with pytest.raises(ValueError, match=re.escape(TF_MISSING + " (did you mean layer1/W?)")):
        with client.variable_scope("layr1", reuse=True):
            client.get_variable("W", [2])


def test_no_hint_when_nothing_is_close(client: vs.Client) -> None:
    client.get_variable("W", [2])
    with pytest.raises(ValueError) as caught:
        with client.variable_scope("layr1", reuse=True):
            client.get_variable("output", [2])
    assert str(caught.value).endswith("Did you mean to set reuse=tf.AUTO_REUSE in VarScope?")


def test_the_server_names_a_close_variable(client: vs.Client) -> None:
    with client.variable_scope("layer1"):
        client.get_variable("W", [2])
    with pytest.raises(NotFoundError) as caught:
        client.delete(["layr1/W"])
    assert str(caught.value) == ("Variable layr1/W does not exist on the server (did you mean "
                                 "layer1/W?)")


def test_the_hints_work_is_bounded_whatever_the_names() -> None:
    looked_at = 0

    def known(count: int) -> Iterator[str]:
        nonlocal looked_at
        for i in range(count):
            looked_at += 1
            yield f"layer{i}/weights"

    assert did_you_mean("layer1/weigths", known(10 * names.HINT_MAX_SCANNED)) == \
        " (did you mean layer1/weights?)"
    assert looked_at <= names.HINT_MAX_SCANNED
    long = "a/" + "b" * names.HINT_MAX_NAME
    assert did_you_mean(long + "c", [long]) == ""


def test_a_missing_names_hint_is_built_without_the_store_lock(
        server: Server, client: vs.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """While one Delete builds its hint, another client creates a variable."""
    client.get_variable("layer1/W", [2])
    created = threading.Event()
    hinted = names.did_you_mean

    def slow_hint(name: str, known: Iterable[str]) -> str:
        with vs.connect(f"127.0.0.1:{server.port}", timeout=30) as other:
            other.get_variable("newcomer", [1])
        created.set()
        return hinted(name, known)

    monkeypatch.setattr(store_module, "did_you_mean", slow_hint)
    with pytest.raises(NotFoundError, match=re.escape("(did you mean layer1/W?)")):
        client.delete(["layr1/W"])
    assert created.is_set()
    assert [v.name for v in client.list_variables()] == ["layer1/W", "newcomer"]
