"""FAISS over the head's query-independent video embeddings, and two-stage retrieval.

Stage 1: the head with text-condition off gives one vector per video (and per query) whose
inner product is the query-independent score; FAISS returns the top-K videos per query.
Stage 2: those K are re-scored with the full head (text-condition on). With K = all videos
two-stage equals exact scoring. Pairs outside the K candidates get one finite floor, 1 below
the lowest real score of the matrix, so an exported matrix holds no -inf and every unscored
pair ranks below every scored one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from torch import nn

from cache.errors import TcdError
from heads.data import Features
from heads.scoring import head_device

INDEX_KINDS = ("flat", "ivf", "hnsw")
UNSCORED_MARGIN = 1.0  # two-stage: pairs outside the K candidates score min(real) - this


class RetrievalError(TcdError):
    """An index is missing or of an unknown kind, or an export cannot be written."""


@torch.no_grad()
def video_embeddings(head: nn.Module, features: Features, block: int = 512) -> np.ndarray:
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
) -> faiss.Index:
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
    return _to_gpu(index)


def _to_gpu(index: faiss.Index) -> faiss.Index:
    """Move to the GPU when faiss-gpu and a GPU are present (faiss caps GPU k at 2048)."""
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index


def save_index(index: faiss.Index, path: Path) -> None:
    if hasattr(faiss, "index_gpu_to_cpu") and faiss.get_num_gpus() > 0:
        index = faiss.index_gpu_to_cpu(index)
    tmp = path.with_suffix(".tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(path)


def load_index(path: Path) -> faiss.Index:
    if not path.exists():
        raise RetrievalError(f"{path}: no index; build it with `tcd index`")
    return _to_gpu(faiss.read_index(str(path)))


@dataclass
class TwoStageResult:
    scores: np.ndarray  # (Q, N): full-head scores on the K candidates, a floor elsewhere
    candidates: np.ndarray  # (Q, K) video indices from stage 1
    recall_in_k: float  # share of queries whose true video is among the K (percent)
    stage1_s: float
    stage2_s: float


@torch.no_grad()
def two_stage(head: nn.Module, features: Features, index: faiss.Index, k: int) -> TwoStageResult:
    """Stage 1 FAISS top-k on query-independent embeddings; stage 2 full-head rerank."""
    head.eval()
    k = min(k, features.n_videos)
    started = time.monotonic()
    _, candidates = index.search(query_embeddings(head, features.queries), k)
    stage1 = time.monotonic() - started
    started = time.monotonic()
    scores = np.full((len(features.queries), features.n_videos), -np.inf, np.float32)
    device = head_device(head)
    queries = torch.from_numpy(features.queries).float().to(device)
    with torch.no_grad():
        parts = [  # every video encoded once; each query then scores only its candidates
            head.encode(**features.video_batch(slice(s, s + 512), device))
            for s in range(0, features.n_videos, 512)
        ]
        videos = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
        for q in range(len(queries)):
            cand = torch.from_numpy(candidates[q]).to(device)
            picked = {name: value[cand] for name, value in videos.items()}
            out = head.score(queries[q : q + 1], picked).total
            scores[q, candidates[q]] = out[0].float().cpu().numpy()
    stage2 = time.monotonic() - started
    scored = np.isfinite(scores)
    if scored.any():  # unscored pairs: a finite floor below every real score (see module doc)
        scores[~scored] = scores[scored].min() - UNSCORED_MARGIN
    hit = (candidates == features.query_video[:, None]).any(axis=1)
    return TwoStageResult(scores, candidates, float(100 * hit.mean()), stage1, stage2)
