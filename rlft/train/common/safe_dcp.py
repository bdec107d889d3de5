"""Reading a sharded checkpoint (``torch.distributed.checkpoint``) without running code from it.

DCP's file reader loads each shard with ``torch.load(weights_only=True)``, but unpickles the ``.metadata``
index with plain ``pickle.load``: a checkpoint directory handed to a user could run anything. The index
holds only DCP's own record types, torch sizes, dtypes and layouts, and a few builtins; this reader
unpickles it with exactly those allowed and refuses the file otherwise, naming it.
"""

from __future__ import annotations

import io
import pickle
from types import ModuleType
from typing import Any

import torch
import torch.distributed.checkpoint.metadata as dcp_metadata
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from rlft.run import CheckpointError

__all__ = ["SafeReader", "load_metadata"]

def _classes_of(module: ModuleType) -> set[tuple[str, str]]:
    """(module, name) of every class defined in ``module`` (DCP's plain record types and enums)."""
    return {
        (module.__name__, name)
        for name, value in vars(module).items()
        if isinstance(value, type) and value.__module__ == module.__name__
    }


# Exactly what a DCP index names: DCP's record classes, torch sizes and layouts, paths. Nothing here runs
# code when called with data from the file (a class builds a record; _get_layout looks a name up in a table).
_ALLOWED = _classes_of(dcp_metadata) | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib._local", "PosixPath"),
    ("collections", "OrderedDict"),
}


class _IndexUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # a dotted name would reach through the module's own imports (os, pickle, …)
        if "." not in name:
            if (module, name) in _ALLOWED:
                return super().find_class(module, name)
            found = getattr(torch, name, None) if module == "torch" else None
            if isinstance(found, (torch.dtype, torch.layout, torch.memory_format)):
                return found
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")


def load_metadata(data: bytes, path: str) -> Metadata:
    """The DCP index in ``data`` (read from ``path``), or a :class:`CheckpointError` naming the file."""
    try:
        metadata = _IndexUnpickler(io.BytesIO(data)).load()
    except Exception as err:
        raise CheckpointError(f"{path}: not a sharded-checkpoint index this version can read ({err})") from None
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{path}: not a sharded-checkpoint index (holds {type(metadata).__name__})")
    return metadata


class SafeReader(FileSystemReader):
    """DCP's file-system reader with :func:`load_metadata` in place of ``pickle.load`` for the index."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as stream:
            metadata = load_metadata(stream.read(), str(path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        assert metadata.storage_meta is not None
        metadata.storage_meta.load_id = self.load_id
        return metadata
