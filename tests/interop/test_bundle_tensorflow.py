"""TensorFlow itself reads the bundles, state files and slices varstore writes, and writes
the same bytes for the same tensors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from tests.unit.test_bundle import SHAPES, _same, _sample, _save
from varstore import dtypes
from varstore.server.bundle import BundleReader, BundleWriter, merge_shards, write_state

pytestmark = pytest.mark.tensorflow


def test_tensorflow_reads_every_dtype_we_write(tmp_path: Path, tf: Any) -> None:
    rng = np.random.default_rng(3)
    written = {}
    with BundleWriter(tmp_path / "ours") as w:
        for dtype in dtypes.ALL:
            for shape in SHAPES:
                key = f"{dtype.name}/{len(shape)}_{np.prod(shape)}"
                written[key] = _sample(dtype, shape, rng)
                w.add(key, written[key], dtype)
        full = np.arange(40, dtype=np.float32).reshape(10, 4)
        for start, stop in ((0, 4), (4, 7), (7, 10)):
            w.add_slice("part/P", (10, 4), (start, 0), full[start:stop], dtypes.float32)
    reader = tf.train.load_checkpoint(str(tmp_path / "ours"))
    shapes = reader.get_variable_to_shape_map()
    assert sorted(shapes) == sorted([*written, "part/P"])
    for key, value in written.items():
        got = np.asarray(reader.get_tensor(key))
        assert tuple(shapes[key]) == value.shape
        if value.dtype == object:
            assert got.tolist() == value.tolist()
        else:
            _same(got.astype(value.dtype) if value.dtype == ml_dtypes.bfloat16 else got, value)
    _same(np.asarray(reader.get_tensor("part/P")), full)


def test_tensorflow_writes_what_we_write_byte_for_byte(tmp_path: Path, tf: Any) -> None:
    rng = np.random.default_rng(4)
    tensors: dict[str, np.ndarray] = {
        f"layer_{i:05d}/w": rng.standard_normal(3).astype(np.float32) for i in range(20_000)}
    tensors["big"] = rng.standard_normal((700, 1000)).astype(np.float32)
    tensors["strs"] = np.array([b"a", b"", "wörld".encode(), b"x" * 300], dtype=object)
    tensors["été/v"] = np.arange(5, dtype=np.int64)
    tensors["bf16"] = np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16)
    tensors["scalar"] = np.array(3.5, dtype=np.float64)
    names = sorted(tensors, key=lambda k: k.encode())
    tf.raw_ops.SaveV2(prefix=str(tmp_path / "tf"), tensor_names=names,
                      shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])
    with BundleWriter(tmp_path / "ours") as w:
        for name in names:
            value = tensors[name]
            w.add(name, value, dtypes.string if value.dtype == object else
                  dtypes.as_dtype(value.dtype))
    for suffix in (".index", ".data-00000-of-00001"):
        assert (tmp_path / f"ours{suffix}").read_bytes() == (
            tmp_path / f"tf{suffix}").read_bytes(), suffix


def test_tensorflow_merge_matches_ours(tmp_path: Path, tf: Any) -> None:
    for side in ("tf", "ours"):
        for i in range(3):
            with BundleWriter(tmp_path / side / f"part{i}") as w:
                w.add(f"ps{i}/v", np.full((i + 1,), i, np.int32), dtypes.int32)
                w.add_slice("P", (3, 2), (i, 0), np.full((1, 2), i, np.float32), dtypes.float32)
    parts = [str(tmp_path / "tf" / f"part{i}") for i in range(3)]
    tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=parts,
                                  destination_prefix=str(tmp_path / "tf" / "merged"))
    merge_shards([tmp_path / "ours" / f"part{i}" for i in range(3)],
                 tmp_path / "ours" / "merged")
    assert sorted(os.listdir(tmp_path / "tf")) == sorted(os.listdir(tmp_path / "ours"))
    for name in os.listdir(tmp_path / "tf"):
        assert (tmp_path / "tf" / name).read_bytes() == (tmp_path / "ours" / name).read_bytes()
    reader = tf.train.load_checkpoint(str(tmp_path / "ours" / "merged"))
    _same(reader.get_tensor("P"), np.repeat(np.arange(3, dtype=np.float32), 2).reshape(3, 2))


def test_tensorflow_reads_our_state_file(tmp_path: Path, tf: Any) -> None:
    for step in (1, 2, 3):
        _save(tmp_path, f"model.ckpt-{step}")
    write_state(tmp_path, str(tmp_path / "model.ckpt-3"),
                [str(tmp_path / "model.ckpt-2"), str(tmp_path / "model.ckpt-3")],
                timestamps=[1.0, 2.0])
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "model.ckpt-3")
    state = tf.train.get_checkpoint_state(str(tmp_path))
    assert list(state.all_model_checkpoint_paths) == [
        str(tmp_path / "model.ckpt-2"), str(tmp_path / "model.ckpt-3")]
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(), str(tmp_path), max_to_keep=5)
    assert manager.checkpoints == [str(tmp_path / "model.ckpt-2"), str(tmp_path / "model.ckpt-3")]


def test_tensorflow_slices_match_ours(tmp_path: Path, tf: Any) -> None:
    big = np.arange(200_000 * 2, dtype=np.float32).reshape(200_000, 2)
    small = np.arange(40, dtype=np.int64).reshape(10, 4)
    specs: list[tuple[str, np.ndarray, int, int]] = [
        ("big", big, 0, 100_000), ("big", big, 100_000, 100_000),
        ("small", small, 0, 5), ("small", small, 5, 5)]
    # Explicit extents, as partitioned variables save them; "-" (whole dimension) too.
    tf.raw_ops.SaveV2(
        prefix=str(tmp_path / "tf"), tensor_names=[s[0] for s in specs],
        shape_and_slices=[f"200000 2 {s},{n}:0,2" for _, _, s, n in specs[:2]]
        + [f"10 4 {s},{n}:-" for _, _, s, n in specs[2:]],
        tensors=[tf.constant(v[s:s + n]) for _, v, s, n in specs])
    with BundleWriter(tmp_path / "ours") as w:
        for key, value, start, length in specs[:2]:
            w.add_slice(key, value.shape, (start, 0), value[start:start + length],
                        dtypes.float32)
    with BundleReader(tmp_path / "tf") as r:
        assert r.keys() == ["big", "small"]
        _same(r.read("big"), big)
        _same(r.read("small"), small)
        big_keys = [k for k in r._table if k.startswith(b"\x00big")]
    with BundleReader(tmp_path / "ours") as r:
        assert [k for k in r._table if k.startswith(b"\x00")] == big_keys
        _same(r.read("big"), big)


def test_tensorflow_reads_an_empty_checkpoint(tmp_path: Path, tf: Any) -> None:
    # A store emptied by deletions is saved as an empty checkpoint (the exit save, the timer,
    # a shard's snapshot): TensorFlow reads it (no tensors) and names it latest. (Its own
    # SaveV2 refuses to write one: "Length for attr 'dtypes' of 0 must be at least 1".)
    from varstore.server.checkpoints import CheckpointManager
    from varstore.server.store import VariableStore
    saved = CheckpointManager(VariableStore(), tmp_path / "ours").save(
        "model.ckpt", global_step=3, internal=True)
    assert saved.path == "model.ckpt-3"
    ours = tmp_path / "ours" / "model.ckpt-3"
    assert tf.train.latest_checkpoint(str(tmp_path / "ours")) == str(ours)
    assert tf.train.list_variables(str(tmp_path / "ours")) == []
    restored = CheckpointManager(VariableStore(), tmp_path / "ours")
    assert restored.restore("latest", as_saved=0) == "model.ckpt-3"
    assert len(restored.store) == 0 and restored.unsaved() == []
