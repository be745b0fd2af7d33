"""The fixed option sets of the retrieval commands, as `StrEnum`s: Typer lists them in `--help`
and rejects a typo before any work starts. No heavy imports, so the CLI stays light."""

from __future__ import annotations

from enum import StrEnum


class IndexKind(StrEnum):
    """FAISS index over video embeddings: exact `flat`, or approximate `ivf` / `hnsw`."""

    flat = "flat"
    ivf = "ivf"
    hnsw = "hnsw"


class ColumnOrder(StrEnum):
    """Column order of an exported `sim_matrix.npy`."""

    annotation = "annotation"  # the annotation file's video order
    rand = "rand"  # the video order of TextVR_test_rand.json (the evaluation server's)


class ExportFormat(StrEnum):
    h5 = "h5"
