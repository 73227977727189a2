"""``dir()`` of varstore.v1's namespaces lists TensorFlow's names, not our imports."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("name", ["varstore.v1", "varstore.v1.train", "varstore.v1.nn"])
def test_dir_shows_the_public_names_only(name: str) -> None:
    module = importlib.import_module(name)
    public = [n for n in dir(module) if not n.startswith("_")]
    assert public == sorted(module.__all__)
    assert not {"annotations", "Any", "Mapping", "Sequence"} & set(public)
    for attribute in public:
        assert getattr(module, attribute) is not None


def test_tf_train_has_what_tensorflow_users_reach_for() -> None:
    import varstore.v1 as tf
    assert {"Saver", "latest_checkpoint", "MonitoredTrainingSession", "AdamOptimizer",
            "get_or_create_global_step"} <= set(dir(tf.train))
