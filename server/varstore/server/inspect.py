"""``varstore inspect``: what a checkpoint on disk holds, read offline (TensorFlow's too)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from varstore.common.errors import NotFoundError
from varstore.server.bundle import BundleReader, latest_checkpoint

__all__ = ["describe", "resolve_prefix"]

# Values of more elements than this print as their first and last few, numpy-style.
PRINT_THRESHOLD = 200
_INDEX_SUFFIX = ".index"


def resolve_prefix(path: str) -> str:
    """The checkpoint prefix ``path`` names: a prefix, its ``.index`` file, or a folder
    (its newest checkpoint). Raises ``NotFoundError`` for a folder without checkpoints."""
    if os.path.isdir(path):
        latest = latest_checkpoint(path)
        if latest is None:
            raise NotFoundError(f"no checkpoint is recorded in folder {path}")
        return latest
    return path.removesuffix(_INDEX_SUFFIX)


def describe(path: str, values: bool = False) -> Iterator[str]:
    """Lines describing checkpoint ``path``: ``name<TAB>dtype<TAB>[shape]`` per tensor in key
    order, each followed with ``values`` by its value as numpy prints it (long ones
    shortened with "...").

    Every tensor is read, so its checksum is verified even without ``values``. Raises
    ``NotFoundError`` for a missing checkpoint, ``DataLossError`` for a corrupt one (naming
    the tensor and file), ``OSError`` if a file cannot be read.
    """
    with BundleReader(resolve_prefix(path)) as reader:
        for key in reader.keys():
            info = reader.entry(key)
            value = reader.read(key)
            yield f"{key}\t{info.dtype.name}\t{list(info.shape)}"
            if values:
                with np.printoptions(threshold=PRINT_THRESHOLD, edgeitems=3):
                    yield str(value)
