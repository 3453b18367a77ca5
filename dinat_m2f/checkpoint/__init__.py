"""Checkpoints: loading that never executes code from a file (every extension), atomic saves, http(s)
weights cached once, and a resume that falls back to the newest readable checkpoint."""
from .checkpointer import SafeDetectionCheckpointer
from .files import ChecksumError, atomic_write, cached_download
from .readers import CheckpointFileError, read_checkpoint_file, read_safetensors_file, read_torch_file

__all__ = [
    "CheckpointFileError",
    "ChecksumError",
    "SafeDetectionCheckpointer",
    "atomic_write",
    "cached_download",
    "read_checkpoint_file",
    "read_safetensors_file",
    "read_torch_file",
]
