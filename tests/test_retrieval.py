"""Retrieval: metrics by hand, FAISS against brute force, two-stage against exact, exports,
and the eval/search/index/export commands on a tiny trained run."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from heads.metrics import t2v_metrics, tie_averaged_ranks, v2t_metrics
from heads.modules import HeadSettings, build_head
from heads.scoring import score_matrix
from pipeline.datasets import textvr_rand_columns
from retrieval.export import write_sim_matrix
from retrieval.index import build_index, query_embeddings, two_stage, video_embeddings
from tests.test_train import DT, DV, planted


def test_metrics_by_hand():
    eye = np.eye(4)
    assert t2v_metrics(eye, np.arange(4)) == {
        "R@1": 100.0,
        "R@5": 100.0,
        "R@10": 100.0,
        "MdR": 1.0,
        "MnR": 1.0,
    }
    worst = t2v_metrics(np.fliplr(np.eye(4)) - np.eye(4), np.arange(4))  # truth always last
    assert worst["R@1"] == 0 and worst["MdR"] == 4.0 and worst["MnR"] == 4.0
    ties = t2v_metrics(np.zeros((4, 4)), np.arange(4))  # all tied: mean of ranks 1..4
    assert ties["R@1"] == 0 and ties["MdR"] == 2.5 and ties["MnR"] == 2.5
    np.testing.assert_array_equal(
        tie_averaged_ranks(np.array([[3.0, 3.0, 1.0]]), np.array([0])), [1.5]
    )


def test_several_captions_per_video():
    # captions 0,1 -> video 0; caption 2 -> video 1
    sim = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    query_video = np.array([0, 0, 1])
    t2v = t2v_metrics(sim, query_video)
    assert t2v["R@1"] == pytest.approx(200 / 3) and t2v["MnR"] == pytest.approx(4 / 3)
    v2t = v2t_metrics(sim, query_video)
    # video 0 ranks captions [0.9, 0.2, 0.3]: its caption 0 is first;
    # video 1 ranks [0.1, 0.8, 0.7]: its caption 2 is second
    assert v2t["R@1"] == 50.0 and v2t["MnR"] == 1.5


@pytest.mark.parametrize("kind", ["tcd", "video-only", "ocr-instances"])
def test_flat_index_equals_brute_force_and_two_stage_with_all_equals_exact(kind):
    data = planted(n=40)
    head = build_head(HeadSettings(kind=kind, heads=2), DV, DT).eval()
    videos = video_embeddings(head, data)
    queries = query_embeddings(head, data.queries)
    index = build_index(videos, "flat")
    _, top = index.search(queries, 5)
    brute = np.argsort(-(queries @ videos.T), axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(np.sort(top, axis=1), np.sort(brute, axis=1))
    result = two_stage(head, data, index, k=data.n_videos)
    exact = score_matrix(head, data)
    np.testing.assert_allclose(result.scores, exact, rtol=1e-5, atol=1e-5)
    tiny_blocks = score_matrix(head, data, memory_budget=2e5)  # blocks of a few pairs
    np.testing.assert_allclose(tiny_blocks, exact, rtol=1e-5, atol=1e-6)
    assert result.recall_in_k == 100.0
    approx = build_index(videos, "hnsw")
    assert approx.ntotal == 40


def test_sim_matrix_orientation_and_rand_order_on_real_files(textvr_files, tmp_path):
    test = json.loads((textvr_files / "TextVR_test.json").read_text(encoding="utf-8"))
    video_ids = [e["path"] for e in test]
    n = len(video_ids)
    sim = np.random.default_rng(0).random((n, n)).astype(np.float32)
    sim[np.arange(n), np.arange(n)] = 2.0  # caption i's true video is annotation column i
    plain = write_sim_matrix(tmp_path / "sim.npy", sim, video_ids)
    loaded = np.load(tmp_path / "sim.npy")
    assert loaded.shape == (2727, 2727) and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, plain)
    rand = write_sim_matrix(
        tmp_path / "rand.npy", sim, video_ids, "rand", textvr_files / "TextVR_test_rand.json"
    )
    cols = textvr_rand_columns(
        textvr_files / "TextVR_test.json", textvr_files / "TextVR_test_rand.json"
    )
    assert (rand[np.arange(n), cols] == 2.0).all()
    assert (rand.argmax(axis=1) == cols).all()


def test_eval_search_index_export_commands(synth_copy, tmp_path):
    from cli.main import app
    from pipeline.ocr import OcrSettings
    from pipeline.settings import PipelineSettings, save_settings
    from tests.test_stages import make_work, run_all

    work = make_work(synth_copy, tmp_path)
    run_all(work)
    save_settings(work.path, PipelineSettings(ocr=OcrSettings(engine="kwai")))
    runner = CliRunner()
    w = str(work.path)
    sets = [
        "--set",
        "train.epochs=3",
        "--set",
        "train.batch_size=4",
        "--set",
        "train.val_fraction=0.2",
    ]
    assert (
        runner.invoke(
            app, ["train", "--work", w, "--config", "configs/tcd.toml", "--name", "r", *sets]
        ).exit_code
        == 0
    )
    result = runner.invoke(
        app,
        [
            "eval",
            "--work",
            w,
            "--run",
            "r",
            "--split",
            "train",
            "--sim-matrix",
            str(tmp_path / "s.npy"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    sim = np.load(tmp_path / "s.npy")
    assert sim.shape == (report["captions"], report["videos"]) and sim.dtype == np.float32
    assert set(report["t2v"]) == {"R@1", "R@5", "R@10", "MdR", "MnR"}
    result = runner.invoke(
        app, ["eval", "--work", w, "--run", "r", "--split", "train", "--two-stage", "--k", "1000"]
    )
    assert result.exit_code == 0 and "true video in K for 100.0%" in result.output
    result = runner.invoke(app, ["results", "--work", w, "--split", "train"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("r "))
    assert f"{report['t2v']['R@1']:.1f}" in row and f"x {report['videos']} videos" in row
    assert runner.invoke(app, ["results", "--work", w, "--split", "test"]).exit_code != 0
    assert (
        runner.invoke(app, ["index", "--work", w, "--run", "r", "--split", "train"]).exit_code == 0
    )
    # a query naming a video's key text and scene finds that video first
    meta = json.loads((synth_copy / "synth_meta.json").read_text())
    target = next(v for v in meta["videos"] if v["split"] == "train")
    train = json.loads((synth_copy / "TextVR_train.json").read_text())
    query = next(e for e in train if e["path"] == target["path"])["captions_info"][0]["caption"]
    result = runner.invoke(
        app,
        ["search", "--work", w, "--run", "r", "--split", "train", query, "--json", "--top-k", "3"],
    )
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)["results"]
    assert hits[0]["video"] == target["path"]
    assert {"score", "S_tv", "S_to", "S_th", "path", "caption"} <= set(hits[0])
    assert target["key_text"] in hits[0]["caption"]
    page = tmp_path / "report.html"
    result = runner.invoke(
        app,
        [
            "report",
            "--work",
            w,
            "--run",
            "r",
            "--split",
            "train",
            "--out",
            str(page),
            "--queries",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    images = _parse_images(page.read_text())
    assert len(images) == 1 + 2 * 5 * 4  # curves + 2 queries x 5 videos x 4 frames
    assert all(src.startswith("data:image/") for src in images)
    out = tmp_path / "f.h5"
    assert (
        runner.invoke(app, ["export", "--work", w, "--out", str(out), "--run", "r"]).exit_code == 0
    )
    with h5py.File(out) as f:
        n = f["train/video_ids"].shape[0]
        assert f["train/frames"].shape[:2] == (n, 12) and f["train/caption_text"].shape == (n, 12)
        assert f["train/video_embeddings"].shape[0] == n
        assert f["train/queries"].shape[0] == f["train/query_video"].shape[0]


def _parse_images(page: str) -> list[str]:
    from html.parser import HTMLParser

    sources: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "img":
                sources.append(dict(attrs)["src"])

    Parser().feed(page)
    return sources
