"""Checkpoint files on disk: lazy reading, streaming sharded writing, atomic output, manifest.

Shared by the packer (files in, files out) and the runtime (loading). Only quantized.py (a quantized
folder read back per module) knows formats; the rest is format-agnostic.
"""

from turbopack.checkpoint.manifest import MANIFEST_NAME, new_manifest, read_manifest, write_manifest
from turbopack.checkpoint.output import atomic_output, check_output
from turbopack.checkpoint.safetensors_stream import TensorEntry, read_header, sha256_file
from turbopack.checkpoint.sharded import ShardedWriter, ShardPlan
from turbopack.checkpoint.source import Checkpoint, read_json, resolve_model

__all__ = [
    "MANIFEST_NAME", "Checkpoint", "ShardPlan", "ShardedWriter", "TensorEntry", "atomic_output",
    "check_output", "new_manifest", "read_header", "read_json", "read_manifest", "resolve_model",
    "sha256_file", "write_manifest",
]
