"""Checkpoint requests: where checkpoints live and which ones exist."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from varstore.errors import UnimplementedError
from varstore.proto import varstore_pb2 as pb
from varstore.server.store import VariableStore


class CheckpointManager:
    """Saves and restores the store's variables inside one checkpoint folder."""

    def __init__(self, store: VariableStore, directory: Path) -> None:
        self.store = store
        self.directory = directory
        self.last_saved: tuple[str, float] | None = None

    def save_request(self, request: pb.SaveRequest) -> Iterator[pb.CheckpointProgress]:
        """Not yet available."""
        raise UnimplementedError("saving checkpoints is not implemented yet")
        yield

    def restore_request(self, request: pb.RestoreRequest) -> Iterator[pb.CheckpointProgress]:
        """Not yet available."""
        raise UnimplementedError("restoring checkpoints is not implemented yet")
        yield

    def latest(self, directory: str) -> str | None:
        """Not yet available."""
        raise UnimplementedError("checkpoints are not implemented yet")
