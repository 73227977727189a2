"""TensorFlow V2 checkpoints ("tensor bundles") in pure Python and numpy.

:class:`BundleWriter` and :class:`BundleReader` write and read ``PREFIX.index`` plus
``PREFIX.data-*`` files that TensorFlow reads and writes; :func:`merge_shards` joins parts
written separately into one sharded checkpoint; :mod:`.state` keeps the folder's text
``checkpoint`` file. The format is TensorFlow's (``core/util/tensor_bundle/tensor_bundle.h``
and ``core/protobuf/tensor_bundle.proto``).
"""

from varstore.common.errors import DataLossError, NotFoundError
from varstore.server.bundle.bundle import (
    TEMP_MARK,
    BundleReader,
    BundleWriter,
    TensorInfo,
    data_path,
    index_path,
    merge_shards,
    part_prefix,
)
from varstore.server.bundle.state import (
    STATE_FILENAME,
    CheckpointState,
    checkpoint_files,
    clean_leftovers,
    latest_checkpoint,
    read_state,
    write_state,
)

__all__ = [
    "STATE_FILENAME",
    "TEMP_MARK",
    "BundleReader",
    "BundleWriter",
    "CheckpointState",
    "DataLossError",
    "NotFoundError",
    "TensorInfo",
    "checkpoint_files",
    "clean_leftovers",
    "data_path",
    "index_path",
    "latest_checkpoint",
    "merge_shards",
    "part_prefix",
    "read_state",
    "write_state",
]
