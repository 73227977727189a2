"""TensorFlow V2 checkpoints ("tensor bundles") in pure Python and numpy, split by job as
TensorFlow's ``core/util/tensor_bundle/``: :mod:`.naming` (file names), :mod:`.fsio` (atomic
commit steps), :mod:`.table` (the index's sorted table), :mod:`.ordered_code` (slice keys),
:mod:`.entries` (the index's protos), :mod:`.writer`, :mod:`.reader` (opening one checkpoint
whole while saves replace it: :mod:`.opening`), :mod:`.merge` (sharded saves) and
:mod:`.state` (the folder's text ``checkpoint`` file). The format is TensorFlow's
(``core/util/tensor_bundle/tensor_bundle.h`` and ``core/protobuf/tensor_bundle.proto``).
"""

from varstore.server.bundle.fsio import clean_leftovers
from varstore.server.bundle.merge import merge_shards
from varstore.server.bundle.naming import (
    COMMIT_MARK,
    DATA_FILE,
    TEMP_MARK,
    checkpoint_files,
    committed,
    data_path,
    index_path,
    part_prefix,
)
from varstore.server.bundle.reader import BundleReader, TensorInfo
from varstore.server.bundle.state import (
    STATE_FILENAME,
    CheckpointState,
    is_state_file,
    latest_checkpoint,
    read_state,
    write_state,
)
from varstore.server.bundle.writer import BundleWriter

__all__ = [
    "COMMIT_MARK",
    "DATA_FILE",
    "STATE_FILENAME",
    "TEMP_MARK",
    "BundleReader",
    "BundleWriter",
    "CheckpointState",
    "TensorInfo",
    "checkpoint_files",
    "committed",
    "clean_leftovers",
    "data_path",
    "index_path",
    "is_state_file",
    "latest_checkpoint",
    "merge_shards",
    "part_prefix",
    "read_state",
    "write_state",
]
