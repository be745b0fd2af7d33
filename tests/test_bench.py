"""The benchmarks run end to end at toy sizes and write their JSON (no timing is asserted)."""

from __future__ import annotations

import json
import sys

import pytest

import bench.common


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.common, "RESULTS", tmp_path)
    return tmp_path


def run(module, monkeypatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", [module.__name__, *argv])
    module.main()


def test_retrieval_scale(results, monkeypatch):
    from bench import retrieval_scale

    run(retrieval_scale, monkeypatch, "--sizes", "3000", "--queries", "50", "--clusters", "20")
    out = json.loads((results / "retrieval_scale.json").read_text())
    assert out["machine"]["cores"] >= 1 and out["command"].startswith("python -m bench.")
    size = out["results"]["sizes"][0]
    assert size["videos"] == 3000 and size["flat"]["recall_at_10"] == 1.0
    assert 0 < size["ivf"]["sweep"]["64"]["recall_at_10"] <= 1.0
    assert size["hnsw"]["sweep"]["256"]["recall_at_10"] > 0.5


def test_heads_scale(results, monkeypatch):
    from bench import heads_scale

    # a narrow width and small batches, so that a few seconds of training learn the signal
    # a held-out share large enough to choose the epoch (10 videos at the default 0.05 cannot)
    args = ["--videos", "200", "--captions", "400", "--test", "60", "--epochs", "8", "--k", "10"]
    args += ["--val-fraction", "0.2"]
    run(heads_scale, monkeypatch, *args, "--dim", "32", "--batch-size", "16", "--lr", "1e-2")
    out = json.loads((results / "heads_scale.json").read_text())["results"]
    assert out["epochs_run"] == 8 and out["train_captions"] == 400 and out["D"] == 32
    chance = out["chance_r1"]
    assert chance == 100 / 60
    # the untrained head cannot read the planted signal; training learns it
    assert out["test_t2v_r1_untrained"] <= 3 * chance
    assert out["test_t2v_r1"] >= out["test_t2v_r1_untrained"] + 10 * chance
    assert out["two_stage"]["k"] == 10 and out["peak_rss_mb"] > 0


def test_extraction_frames_only_encodes_afresh_for_each_batch_size(results, monkeypatch):
    from bench import extraction

    argv = ["--frames-only", "--videos", "4", "--vision-models", "clip-tiny-random", "--profile"]
    run(extraction, monkeypatch, *argv, "--batch-sizes", "24,48")
    out = json.loads((results / "extraction_frames.json").read_text())
    assert out["command"].startswith("python -m bench.extraction --frames-only")
    runs = out["results"]["encode"]
    assert list(runs) == ["clip-tiny-random, batch 24", "clip-tiny-random, batch 48"]
    assert out["results"]["decode_encode_parallel"]["frames"] == 4 * 12
    handoff = out["results"]["handoff"]  # 4 videos start no decoding worker at 16 a worker
    assert (
        handoff["slots"] == handoff["tensors"] == {"skipped": "4 videos start no decoding worker"}
    )
    assert handoff["shared_memory_free_gib"] >= 0
    for measured in runs.values():  # each run encoded every video (a fresh work dir)
        assert measured["videos_encoded"] == 4 and measured["encode_vs_parallel_decode"] > 0
    assert "ocr" not in out["results"] and not (results / "extraction.json").exists()
    profile = out["results"]["frames_profile"]  # a third run, profiled, on a fresh work dir
    assert profile["videos_encoded"] == 4
    assert profile["calls"][0].split()[:3] == ["ncalls", "tottime", "percall"]
    assert len(profile["calls"]) == 1 + extraction.PROFILE_CALLS


def test_extraction_handoff_takes_the_videos_the_workers_hold(synth_set, tmp_path, monkeypatch):
    """With decoding workers (one per video allowed here), 8 videos waiting in 2 workers'
    queues are taken and read, through slots and through fresh shared tensors."""
    import pipeline.frame_loader
    from bench.extraction import handoff_ms
    from cache import WorkDir
    from pipeline.datasets import read_textvr
    from pipeline.manifest import build_manifest

    monkeypatch.setattr(pipeline.frame_loader, "ROWS_PER_WORKER", 1)
    work = WorkDir(tmp_path / "work", create=True)
    build_manifest(work, read_textvr(synth_set), progress=False)
    videos = work.manifest.videos.read(["path", "duration", "error"])
    for slots in (True, False):
        measured = handoff_ms(videos, 12, workers=2, slots=slots)
        assert measured["workers"] == 2 and measured["videos"] == 8
        assert measured["take_ms"] > 0 and measured["read_ms"] > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, argv",
    [
        ("extraction", ["--videos", "3"]),
        ("incremental", ["--videos", "10"]),
        ("cli_latency", ["--runs", "1"]),
        ("memory", ["--short-seconds", "3", "--long-seconds", "20"]),
        ("ray_executor", ["--videos", "2"]),
    ],
)
def test_pipeline_benchmarks(results, monkeypatch, name, argv):
    import importlib

    if name == "ray_executor":
        pytest.importorskip("ray", reason="the Ray extra is not installed (make setup-ray)")
    run(importlib.import_module(f"bench.{name}"), monkeypatch, *argv)
    assert json.loads((results / f"{name}.json").read_text())["results"]
