"""FAISS over the head's query-independent video embeddings, and two-stage retrieval.

Stage 1: the head with text-condition off gives one vector per video (and per query) whose
inner product is the query-independent score; FAISS returns the top-K videos per query.
Stage 2: those K are re-scored with the full head (text-condition on). With K = all videos
two-stage equals exact scoring. Pairs outside the K candidates get one finite floor, 1 below
the lowest real score of the matrix, so an exported matrix holds no -inf and every unscored
pair ranks below every scored one.

FAISS labels a missing neighbour -1 (an IVF probe or an HNSW walk found fewer than K, or K is
above the index size); those labels are dropped, never used as a video index.

Indexes are built and kept on the CPU. A search moves to the GPU only where faiss-gpu can run
it (`search_device`): faiss-gpu has no HNSW and caps `k` and `nprobe` at 2048, so other
searches stay on the CPU copy, with one logged line saying why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from torch import nn

from cache.atomic import atomic_path
from cache.errors import TcdError
from heads.data import Features
from heads.scoring import head_device
from retrieval.choices import IndexKind

INDEX_KINDS = tuple(kind.value for kind in IndexKind)
UNSCORED_MARGIN = 1.0  # two-stage: pairs outside the K candidates score min(real) - this
GPU_MAX_K = 2048  # faiss-gpu's limit on k and on nprobe
BLOCK = 512  # videos encoded at a time
LOG = logging.getLogger(__name__)


class RetrievalError(TcdError):
    """An index is missing or of an unknown kind, or an export cannot be written."""


def search_device(kind: str, k: int, nprobe: int, gpus: int) -> tuple[str, str]:
    """Where a FAISS search of `k` neighbours runs, "gpu" or "cpu", and why not the GPU."""
    if gpus <= 0:
        return "cpu", "no GPU for faiss (faiss-cpu, or no device)"
    if kind == IndexKind.hnsw:
        return "cpu", "faiss has no GPU HNSW index"
    if k > GPU_MAX_K:
        return "cpu", f"k={k} is above faiss-gpu's limit of {GPU_MAX_K}"
    if nprobe > GPU_MAX_K:
        return "cpu", f"nprobe={nprobe} is above faiss-gpu's limit of {GPU_MAX_K}"
    return "gpu", ""


def faiss_gpus() -> int:
    """GPUs faiss can use: 0 without faiss-gpu."""
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


class VideoIndex:
    """A CPU FAISS index, searched on a GPU copy (made once) when `search_device` allows."""

    def __init__(self, cpu: faiss.Index, log: Callable[[str], None] = LOG.warning):
        self.cpu = cpu
        self.log = log
        self._gpu: tuple[object, faiss.Index] | None = None  # (resources, index)
        self._told = False

    @property
    def kind(self) -> IndexKind:
        if isinstance(self.cpu, faiss.IndexHNSW):
            return IndexKind.hnsw
        return IndexKind.ivf if isinstance(self.cpu, faiss.IndexIVF) else IndexKind.flat

    @property
    def nprobe(self) -> int:
        return int(self.cpu.nprobe) if isinstance(self.cpu, faiss.IndexIVF) else 0

    @property
    def ntotal(self) -> int:
        return int(self.cpu.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` (scores, labels) per query; label -1 marks "no result"."""
        gpus = faiss_gpus()
        device, reason = search_device(self.kind.value, k, self.nprobe, gpus)
        if device == "gpu":
            if self._gpu is None:
                resources = faiss.StandardGpuResources()
                self._gpu = (resources, faiss.index_cpu_to_gpu(resources, 0, self.cpu))
            return self._gpu[1].search(queries, k)
        if gpus and not self._told:
            self.log(f"faiss: searching the CPU index ({reason})")
            self._told = True
        return self.cpu.search(queries, k)


@torch.no_grad()
def video_embeddings(head: nn.Module, features: Features, block: int = BLOCK) -> np.ndarray:
    """The head's query-independent embedding of every video, float32 (N, E)."""
    if features.n_videos == 0:
        raise RetrievalError("no videos to embed: the split is empty")
    head.eval()
    device = head_device(head)
    parts = [
        head.video_embeddings(**features.video_batch(slice(s, s + block), device))
        .float()
        .cpu()
        .numpy()
        for s in range(0, features.n_videos, block)
    ]
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


@torch.no_grad()
def query_embeddings(head: nn.Module, queries: np.ndarray) -> np.ndarray:
    head.eval()
    emb = head.query_embeddings(torch.from_numpy(np.asarray(queries)).float().to(head_device(head)))
    return np.ascontiguousarray(emb.cpu().numpy(), dtype=np.float32)


def build_index(
    embeddings: np.ndarray, kind: str = "flat", nprobe: int = 16, ef_search: int = 128
) -> VideoIndex:
    """Inner-product index: exact `flat` by default; `ivf` or `hnsw` for large sets."""
    if kind not in INDEX_KINDS:
        raise RetrievalError(
            f"unknown index kind {kind!r}; expected one of {', '.join(INDEX_KINDS)}"
        )
    n, d = embeddings.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = max(1, min(int(2 * np.sqrt(n)), n // 39 or 1))  # faiss wants >= 39 per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        # k-means on a sample of 64 points per list (faiss draws it): at 1M vectors, training
        # on everything would cost minutes for no better lists
        index.cp.max_points_per_centroid = 64
        index.train(embeddings)
        index.nprobe = min(nprobe, nlist)
    else:
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = ef_search
    index.add(embeddings)
    return VideoIndex(index)


def save_index(index: VideoIndex, path: Path) -> None:
    with atomic_path(path) as tmp:
        faiss.write_index(index.cpu, str(tmp))


def load_index(path: Path) -> VideoIndex:
    if not path.exists():
        raise RetrievalError(f"{path}: no index; build it with `tcd index`")
    try:
        return VideoIndex(faiss.read_index(str(path)))
    except RuntimeError as exc:  # faiss raises RuntimeError for a damaged or foreign file
        raise RetrievalError(
            f"{path}: not a readable FAISS index ({str(exc).splitlines()[0][:200]}); "
            "rebuild it with `tcd index`"
        ) from None


@dataclass
class TwoStageResult:
    scores: np.ndarray  # (Q, N): full-head scores on the K candidates, a floor elsewhere
    candidates: np.ndarray  # (Q, K) video indices from stage 1; -1 where FAISS found none
    recall_in_k: float  # share of queries whose true video is among the K (percent)
    stage1_s: float
    stage2_s: float


def floor_unscored(scores: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """Give the pairs outside `scored` one finite floor, UNSCORED_MARGIN below every real
    score (0 when nothing was scored); returns `scores`, changed in place. A non-finite real
    score stays as it is, for the metrics' check to report, and does not move the floor."""
    real = scores[scored]
    real = real[np.isfinite(real)]
    scores[~scored] = real.min() - UNSCORED_MARGIN if real.size else 0.0
    return scores


@torch.no_grad()
def two_stage(head: nn.Module, features: Features, index: VideoIndex, k: int) -> TwoStageResult:
    """Stage 1 FAISS top-k on query-independent embeddings; stage 2 full-head rerank."""
    if features.n_videos == 0:
        raise RetrievalError("no videos to rank: the split is empty")
    head.eval()
    k = min(k, features.n_videos)
    started = time.monotonic()
    _, candidates = index.search(query_embeddings(head, features.queries), k)
    stage1 = time.monotonic() - started
    started = time.monotonic()
    scores = np.zeros((len(features.queries), features.n_videos), np.float32)
    scored = np.zeros(scores.shape, bool)
    device = head_device(head)
    queries = torch.from_numpy(features.queries).float().to(device)
    parts = [  # every video encoded once; each query then scores only its candidates
        head.encode(**features.video_batch(slice(s, s + BLOCK), device))
        for s in range(0, features.n_videos, BLOCK)
    ]
    videos = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
    for q in range(len(queries)):
        found = candidates[q][candidates[q] >= 0]  # -1: FAISS found fewer than k
        if len(found):
            rows = torch.from_numpy(found).to(device)
            picked = {name: value[rows] for name, value in videos.items()}
            scores[q, found] = head.score(queries[q : q + 1], picked).total[0].float().cpu().numpy()
            scored[q, found] = True
    stage2 = time.monotonic() - started
    floor_unscored(scores, scored)
    hit = (candidates == features.query_video[:, None]).any(axis=1)
    recall = float(100 * hit.mean()) if len(hit) else 0.0
    return TwoStageResult(scores, candidates, recall, stage1, stage2)
