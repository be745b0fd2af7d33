"""Retrieval: metrics by hand, FAISS against brute force, two-stage against exact, exports,
the index's record of what it was built from, and the eval/search/index/report/export/results
commands on a tiny trained run."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.main import app
from heads.checkpoint import CheckpointError, save_checkpoint
from heads.config import RunConfig, TrainSettings
from heads.metrics import MetricsError, recall_at_1, t2v_metrics, tie_averaged_ranks, v2t_metrics
from heads.modules import HeadSettings, build_head
from heads.run_dir import RunDir
from heads.scoring import score_matrix
from heads.train import train
from pipeline.datasets import textvr_rand_columns
from retrieval import index as index_module
from retrieval.evaluate import evaluate
from retrieval.export import write_sim_matrix
from retrieval.index import (
    GPU_MAX_K,
    RetrievalError,
    build_index,
    floor_unscored,
    query_embeddings,
    search_device,
    two_stage,
    video_embeddings,
)
from retrieval.run_split import IndexSource, RunSplit, Windows
from retrieval.search import search
from tests.test_train import DT, DV, T, planted

runner = CliRunner()
TRAIN = [
    "--set",
    "train.epochs=3",
    "--set",
    "train.batch_size=4",
    "--set",
    "train.val_fraction=0.2",
]


def trained_work(synth_root: Path, root: Path) -> Path:
    """A work dir under `root` with every stage run on `synth_root` (ground-truth OCR) and run
    `r` trained on its train split; returns its path."""
    from pipeline.ocr import OcrSettings
    from pipeline.settings import PipelineSettings, save_settings
    from tests.test_stages import make_work, run_all

    work = make_work(synth_root, root)
    run_all(work)
    save_settings(work.path, PipelineSettings(ocr=OcrSettings(engine="kwai")))
    args = ["train", "--work", str(work.path), "--config", "configs/tcd.toml", "--name", "r"]
    result = runner.invoke(app, [*args, *TRAIN])
    assert result.exit_code == 0, result.output
    return work.path


@pytest.fixture(scope="module")
def trained_root(synth_set, tmp_path_factory) -> Path:
    """`synth/` (a copy of the session's set) and `work/` (trained_work on it), built once."""
    root = tmp_path_factory.mktemp("trained")
    trained_work(Path(shutil.copytree(synth_set, root / "synth")), root)
    return root


@pytest.fixture
def trained(trained_root, tmp_path) -> Path:
    """A private copy of the trained work dir, for a test to change (its manifest still names
    the videos of `trained_root`)."""
    shutil.copytree(trained_root, tmp_path, dirs_exist_ok=True)
    return tmp_path / "work"


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


def test_v2t_a_video_whose_own_captions_tie_ranks_first():
    # captions 0, 1 of video 0 are one sentence twice (MSR-VTT has such), so they score alike:
    # neither is a miss of the other, while a tie with another video's caption still counts
    sim = np.array([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [0.1, 0.7]])
    v2t = v2t_metrics(sim, np.array([0, 0, 1, 1]))
    assert v2t["R@1"] == 100.0 and v2t["MnR"] == 1.0
    tied_with_other = v2t_metrics(np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.8]]), [0, 0, 1])
    assert tied_with_other["MnR"] == 1.25  # video 0: rank 1.5 (tied with caption 2); video 1: 1


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


def test_a_rand_file_listing_a_video_twice_is_refused(tmp_path):
    # same length, every path known: one video twice, another never (its column lost)
    rand = tmp_path / "rand.json"
    rand.write_text(json.dumps([{"path": p} for p in ("a", "a", "c")]))
    with pytest.raises(RetrievalError, match="'a' is listed more than once"):
        write_sim_matrix(tmp_path / "sim.npy", np.eye(3), ["a", "b", "c"], "rand", rand)


# -- defect: NaN scores counted as hits ---------------------------------------------------
NAN_SIM = np.array([[np.nan, 0.9, 0.8], [0.1, 0.2, 0.9], [0.5, 0.6, 0.1]])


def test_nan_scores_are_refused_not_counted_as_hits(tmp_path):
    # the NaN sits on caption 0's true pair; old code ranked it 0.5 -> a hit (t2v R@1 33.3)
    for metric in (t2v_metrics, v2t_metrics, recall_at_1):
        with pytest.raises(MetricsError, match=r"1 non-finite score\(s\) in 1 row\(s\) and 1 col"):
            metric(NAN_SIM, np.arange(3))
    with pytest.raises(MetricsError, match=r"non-finite .* 1 row\(s\) and 1 column"):
        write_sim_matrix(tmp_path / "sim.npy", NAN_SIM, ["a", "b", "c"])
    inf = np.where(np.isnan(NAN_SIM), -np.inf, NAN_SIM)
    with pytest.raises(MetricsError):
        write_sim_matrix(tmp_path / "sim.npy", inf, ["a", "b", "c"])
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


def test_two_stage_floors_unscored_pairs_below_every_real_score():
    data = planted(n=40)
    head = build_head(HeadSettings(heads=2), DV, DT).eval()
    result = two_stage(head, data, build_index(video_embeddings(head, data)), k=3)
    assert np.isfinite(result.scores).all()  # exportable: no -inf
    scored = np.zeros(result.scores.shape, bool)
    np.put_along_axis(scored, result.candidates, True, axis=1)
    real = result.scores[scored]
    assert scored.sum(axis=1).tolist() == [3] * len(data.queries)
    assert (result.scores[~scored] == real.min() - 1).all()  # the documented floor


# -- defect: FAISS "no result" labels (-1) scored as the last video ------------------------
def run_split_of(data, tmp_path: Path) -> RunSplit:
    """A RunSplit over synthetic features with a fresh, untrained head saved as its run."""
    run = RunDir.at(tmp_path / "run")
    config = RunConfig(HeadSettings(heads=2))
    run.create(config)
    save_checkpoint(run.best, build_head(config.head, DV, DT))
    data = dataclasses.replace(data, rows=np.arange(data.n_videos))
    videos = {
        "key": np.array([f"key{i}" for i in range(data.n_videos)], dtype=object),
        "path": np.array([f"/videos/{i}.mp4" for i in range(data.n_videos)], dtype=object),
    }

    def windows(rows: np.ndarray) -> Windows:
        return Windows(np.full((len(rows), T), "", dtype=object))

    return RunSplit.open(run, "test", data, videos, {"frames": "f", "ocr_text": "t"}, windows)


def test_eval_of_another_work_dirs_run_saves_nothing_in_its_folder(tmp_path):
    split = dataclasses.replace(run_split_of(planted(n=20), tmp_path), read_only=True)
    said = []
    report = evaluate(split, log=said.append)
    assert report["t2v"] and not split.run.metrics_path.exists()
    assert "these metrics are not saved" in said[0]
    evaluate(dataclasses.replace(split, read_only=False), log=said.append)
    assert split.run.saved_metrics()["test"]["t2v"] == report["t2v"]


def test_the_zero_shot_run_is_made_again_for_other_features_a_trained_one_kept(tmp_path):
    from cli.retrieval_wiring import _make_zero_shot

    run = RunDir.at(tmp_path / "zero-shot")
    data = planted(n=8)
    data.source = {"frames": "f1", "ocr_text": "t1", "queries": "q1"}
    _make_zero_shot(run, data)
    made = run.best.read_bytes()
    _make_zero_shot(run, data)  # the same features: untouched
    assert run.best.read_bytes() == made
    wider = dataclasses.replace(  # another vision model: frames 32 wide
        data, frames=np.zeros((8, T, 32), np.float16), source={**data.source, "frames": "f2"}
    )
    with pytest.raises(CheckpointError, match="does not fit"):
        run.load_head(32, DT)
    _make_zero_shot(run, wider)
    run.load_head(32, DT)  # fits the new encoders
    trained = RunDir.at(tmp_path / "mine")  # a run the user trained under that name
    train(RunConfig(HeadSettings(heads=2), TrainSettings(epochs=1, batch_size=4)), data, trained)
    before = trained.best.read_bytes()
    _make_zero_shot(trained, wider)
    assert trained.best.read_bytes() == before


def test_faiss_no_result_labels_are_dropped_not_scored(tmp_path):
    data = planted(n=2000)
    some = np.arange(0, len(data.queries), 200)  # 20 queries
    data = dataclasses.replace(
        data, queries=data.queries[some], query_video=data.query_video[some], query_text=["q"] * 20
    )
    split = run_split_of(data, tmp_path)
    ivf = build_index(video_embeddings(split.head, data), "ivf", nprobe=1)
    result = two_stage(split.head, data, ivf, k=1000)
    assert (result.candidates == -1).any()  # one probed list holds fewer than K videos
    floor = result.scores.min()
    last = data.n_videos - 1
    for q, labels in enumerate(result.candidates):
        found = labels[labels >= 0]
        assert set(np.flatnonzero(result.scores[q] > floor)) == set(found.tolist())
        if last not in found:  # old code scored the last video for every -1
            assert result.scores[q, last] == floor
    # search: a saved IVF index (nprobe 16 of 51 lists) returns fewer than K; only real hits
    split.build_index("ivf")
    query = data.queries[:1]
    _, labels = split.current_index().search(query_embeddings(split.head, query), 1000)
    hits = search(
        split,
        "a query",
        lambda texts: query,
        top_k=1000,
        k=1000,
    )
    assert 0 < len(hits) == int((labels >= 0).sum()) < 1000
    assert len({hit.video for hit in hits}) == len(hits)
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


# -- defect: the GPU index path --------------------------------------------------------------
@pytest.mark.parametrize(
    "kind, k, nprobe, gpus, device, reason",
    [
        ("flat", 100, 0, 1, "gpu", ""),
        ("ivf", GPU_MAX_K, GPU_MAX_K, 1, "gpu", ""),
        ("hnsw", 10, 0, 1, "cpu", "no GPU HNSW"),
        ("flat", GPU_MAX_K + 1, 0, 1, "cpu", f"k={GPU_MAX_K + 1} is above"),
        ("ivf", 10, GPU_MAX_K + 1, 1, "cpu", f"nprobe={GPU_MAX_K + 1} is above"),
        ("flat", 10, 0, 0, "cpu", "no GPU"),
    ],
)
def test_search_device(kind, k, nprobe, gpus, device, reason):
    where, why = search_device(kind, k, nprobe, gpus)
    assert where == device and reason in why


def test_a_search_the_gpu_cannot_run_stays_on_the_cpu_and_says_why_once(monkeypatch):
    # as if faiss-gpu saw a GPU: moving HNSW, or searching k > 2048, would raise there (and
    # here, where faiss has no GPU classes at all)
    monkeypatch.setattr(index_module, "faiss_gpus", lambda: 1)
    vectors = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    lines: list[str] = []
    hnsw = build_index(vectors, "hnsw")
    hnsw.log = lines.append
    hnsw.search(vectors[:3], 5)
    hnsw.search(vectors[:3], 5)
    assert len(lines) == 1 and "no GPU HNSW" in lines[0]
    flat = build_index(vectors, "flat")
    flat.log = lines.append
    _, labels = flat.search(vectors[:2], GPU_MAX_K + 1)
    assert len(lines) == 2 and f"k={GPU_MAX_K + 1}" in lines[1]
    assert (labels[:, :300] >= 0).all() and (labels[:, 300:] == -1).all()


# -- defect: a stale index used silently -----------------------------------------------------
def test_index_record_says_what_changed():
    source = IndexSource(
        {"file": "best.pt", "bytes": 10, "sha256": "aa"},
        "test",
        ["a", "b"],
        [0, 1],
        ["ka", "kb"],
        [],
        {"frames": "f1"},
    )
    saved = json.loads(source.record("flat"))
    assert source.changes_since(saved) == "" and saved["kind"] == "flat"

    def changed(**fields) -> str:
        return dataclasses.replace(source, **fields).changes_since(saved)

    assert changed(checkpoint={**source.checkpoint, "sha256": "bb"}) == (
        "the run's checkpoint changed"
    )
    grown = {"videos": ["a", "b", "c"], "rows": [0, 1, 2], "content_keys": ["ka", "kb", "kc"]}
    assert changed(**grown) == "1 video(s) added"
    assert changed(videos=["a"], rows=[0], content_keys=["ka"]) == "1 video(s) removed"
    assert changed(content_keys=["ka", "new"]) == "1 video(s) changed"
    assert changed(rows=[0, 5]) == "the videos were reordered"
    assert changed(missing=["b"]) == "the set of videos with features changed"
    assert changed(feature_groups={"frames": "f2"}) == "it was built from other features"
    assert source.changes_since({"kind": "flat"}) == "its record is unreadable"


def add_copy(synth: Path, video: str, name: str) -> str:
    """Add a copy of `video` (file, OCR and captions) to the synthetic set's train split."""
    folder = video.split("/")[0]
    new = f"{folder}/{name}"
    shutil.copy(synth / "Video" / video, synth / "Video" / new)
    ocr = synth / "Kwai_VideoOCR" / Path(video).with_suffix(".json")
    shutil.copy(ocr, synth / "Kwai_VideoOCR" / Path(new).with_suffix(".json"))
    annotations = synth / "TextVR_train.json"
    entries = json.loads(annotations.read_text())
    entry = next(e for e in entries if e["path"] == video)
    info = {**entry["videos_info"], "Kwai_OCR": str(Path(new).with_suffix(".json"))}
    entries.append({**entry, "path": new, "videos_info": info})
    annotations.write_text(json.dumps(entries))
    return new


def search_json(work: Path, query: str, *args: str):
    result = runner.invoke(
        app,
        ["search", "--work", str(work), "--run", "r", "--split", "train", query, "--json", *args],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["results"], result.stderr


def test_a_stale_index_is_rebuilt_never_searched(synth_copy, tmp_path):
    """The user's report: after adding two videos (one an exact copy of the top hit), search
    used the saved index, never returned the copy, and returned the last video instead."""
    from cache import WorkDir
    from tests.test_stages import run_all

    trained = trained_work(synth_copy, tmp_path)  # its own: the test adds videos to its set
    synth, w = synth_copy, str(trained)
    index = ["index", "--work", w, "--run", "r", "--split", "train"]
    assert runner.invoke(app, index).exit_code == 0
    record = RunDir(trained, "r").index_meta_path("train")
    built = record.read_bytes()
    assert runner.invoke(app, index).exit_code == 0
    assert record.read_bytes() == built  # deterministic: no timestamps
    meta = json.loads((synth / "synth_meta.json").read_text())
    target, other = [v["path"] for v in meta["videos"] if v["split"] == "train"][:2]
    train = json.loads((synth / "TextVR_train.json").read_text())
    query = next(e for e in train if e["path"] == target)["captions_info"][0]["caption"]
    hits, _ = search_json(trained, query, "--top-k", "3")
    assert hits[0]["video"] == target

    copy = add_copy(synth, target, "copy_of_top_hit.mp4")
    add_copy(synth, other, "copy_of_other.mp4")
    result = runner.invoke(app, ["data", "textvr", "--root", str(synth), "--work", w, "-q"])
    assert result.exit_code == 0 and "2 added" in result.output, result.output
    # before their stages run (on a copy): search reads no query embedding, so the new
    # captions do not stop it (they did), and it says which videos it cannot return; eval,
    # which scores the captions, asks for `tcd encode`
    before = Path(shutil.copytree(trained, tmp_path / "before-stages"))
    hits, warned = search_json(before, query, "--top-k", "3")
    assert hits[0]["video"] == target and copy not in {hit["video"] for hit in hits}
    assert "2 video(s) of" in warned and "in split 'train' have no features" in warned
    result = runner.invoke(app, ["eval", "--work", str(before), "--run", "r", "--split", "train"])
    assert "queries have no embedding; run `tcd encode`" in str(result.exception)
    run_all(WorkDir(trained))  # ocr, caption and encode the two new videos
    hits, warned = search_json(trained, query, "--top-k", "3")
    assert {hit["video"] for hit in hits[:2]} == {target, copy}  # equal features, equal scores
    assert hits[0]["score"] == pytest.approx(hits[1]["score"], abs=1e-4)
    assert "index_train.faiss is stale (2 video(s) added); rebuilding it (flat)" in warned
    assert copy in json.loads(record.read_text())["videos"]
    again, warned = search_json(trained, query, "--top-k", "3")
    assert again == hits and "stale" not in warned  # the rebuilt index was saved

    # an edited OCR file (kwai reads them) changes that video's text features only: the
    # manifest's content key is the same, the index must still be rebuilt
    ocr_file = synth / "Kwai_VideoOCR" / Path(other).with_suffix(".json")
    lines = json.loads(ocr_file.read_text())
    for line in lines.values():
        line["text"] = "ZEBRA CROSSING NOW"
    ocr_file.write_text(json.dumps(lines))
    assert [r.computed for r in run_all(WorkDir(trained))[:2]] == [1, 1]  # ocr, captions
    _, warned = search_json(trained, query)
    assert "index_train.faiss is stale (1 video(s) changed)" in warned

    # a retrained run (another best.pt) makes it stale again
    best = RunDir(trained, "r").best
    payload = torch.load(best, weights_only=True)
    payload["model"] = {
        k: v * 1.01 if v.is_floating_point() else v for k, v in payload["model"].items()
    }
    torch.save(payload, best)
    _, warned = search_json(trained, query)
    assert "stale (the run's checkpoint changed)" in warned
    assert "trained on other features" not in warned

    # features of other settings (a caption setting changed): said at search, and the run is
    # trained again, not taken as already trained
    from pipeline.ocr import OcrSettings
    from pipeline.settings import CaptionSettings, PipelineSettings, save_settings

    half = PipelineSettings(ocr=OcrSettings(engine="kwai"), captions=CaptionSettings(xi=0.5))
    save_settings(trained, half)
    run_all(WorkDir(trained), captions=half.captions)
    _, warned = search_json(trained, query)
    assert "run r was trained on other features than these (ocr_text groups" in warned
    args = ["train", "--work", w, "--config", "configs/tcd.toml", "--name", "r", *TRAIN]
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "already trained" not in result.output, result.output
    _, warned = search_json(trained, query)
    assert "trained on other features" not in warned


# -- the commands --------------------------------------------------------------------------
def test_eval_search_index_export_commands(trained, tmp_path):
    w = str(trained)
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
    report = json.loads(result.stdout)
    sim = np.load(tmp_path / "s.npy")
    assert sim.shape == (report["captions"], report["videos"]) and sim.dtype == np.float32
    assert set(report["t2v"]) == {"R@1", "R@5", "R@10", "MdR", "MnR"}
    assert report["training_finished"] is True
    result = runner.invoke(
        app, ["eval", "--work", w, "--run", "r", "--split", "train", "--two-stage", "--k", "1000"]
    )
    assert result.exit_code == 0 and "true video in K for 100.0%" in result.output
    result = runner.invoke(app, ["results", "--work", w, "--split", "train"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("r "))
    assert f"{report['t2v']['R@1']:.1f}" in row and f"x {report['videos']} videos" in row
    assert row.endswith(f"two-stage K={report['videos']}")  # the last eval, approximate
    assert runner.invoke(app, ["results", "--work", w, "--split", "test"]).exit_code != 0
    result = runner.invoke(app, ["index", "--work", w, "--run", "r", "--split", "train"])
    assert result.exit_code == 0, result.output
    # a query naming a video's key text and scene finds that video first
    synth = trained.parent / "synth"
    meta = json.loads((synth / "synth_meta.json").read_text())
    target = next(v for v in meta["videos"] if v["split"] == "train")
    train = json.loads((synth / "TextVR_train.json").read_text())
    query = next(e for e in train if e["path"] == target["path"])["captions_info"][0]["caption"]
    hits, _ = search_json(trained, query, "--top-k", "3")
    assert hits[0]["video"] == target["path"]
    assert {"score", "S_tv", "S_to", "S_th", "path", "caption", "start", "end"} <= set(hits[0])
    assert target["key_text"] in hits[0]["caption"]
    assert 0 <= hits[0]["start"] < hits[0]["end"] <= target["seconds"] + 1e-6
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
    mistyped = runner.invoke(app, ["export", "--work", w, "--out", str(out) + "2", "--run", "rr"])
    assert "no such run" in str(mistyped.exception) and not Path(str(out) + "2").exists()
    zero = runner.invoke(app, ["export", "--work", w, "--out", str(out), "--run", "zero-shot"])
    assert zero.exit_code == 0, zero.output  # made on first use, as search makes it


def test_runs_named_by_their_path_ablation_runs_and_a_half_made_zero_shot_folder(trained):
    """A run of this work dir named by its path is its run (it was taken for another work
    dir's: eval saved nothing, index refused); an ablation run is named `ablate/V/seedS` or
    by its path (neither opened); an empty `zero-shot` folder (a kill before its config) is
    made again (it was refused for good); `--top-k` above `--k` gets its hits (cut to k)."""
    w, own = str(trained), str(trained / "runs" / "r")
    result = runner.invoke(app, ["eval", "--work", w, "--run", own, "--split", "train"])
    assert result.exit_code == 0 and "another work dir" not in result.output, result.output
    assert RunDir(trained, "r").saved_metrics()
    result = runner.invoke(app, ["index", "--work", w, "--run", own, "--split", "train"])
    assert result.exit_code == 0, result.output

    ablation = RunDir.named(trained, "ablate/tcd/seed0")
    shutil.copytree(trained / "runs" / "r", ablation.path)  # as `tcd ablate` leaves one
    for run in ("ablate/tcd/seed0", str(ablation.path)):
        hits, warned = search_json(trained, "EXIT", "--run", run)
        assert hits and "error" not in warned, warned
    evaluated = ["eval", "--work", w, "--run", "ablate/tcd/seed0", "--split", "train"]
    assert runner.invoke(app, evaluated).exit_code == 0
    table = runner.invoke(app, ["results", "--work", w, "--split", "train"]).output
    assert any(line.startswith("ablate/tcd/seed0 ") for line in table.splitlines()), table
    # a damaged record (edited by hand) is left out of the table, named; it was a traceback
    for damaged in ("{", '{"train": {"t2v": {}}}'):
        ablation.metrics_path.write_text(damaged)
        result = runner.invoke(app, ["results", "--work", w, "--split", "train"])
        assert result.exit_code == 0, result.output
        assert "ablate/tcd/seed0 " not in result.stdout and "\nr " in result.stdout
        assert f"{ablation.metrics_path}: not a `tcd eval` record" in result.stderr
    assert runner.invoke(app, evaluated).exit_code == 0  # eval replaces it
    assert set(ablation.saved_metrics()) == {"train"}
    missing = runner.invoke(app, ["search", "--work", w, "--run", "ablate/tcd/seed9", "EXIT"])
    assert "tcd ablate" in str(missing.exception) or "tcd ablate" in missing.output

    (trained / "runs" / "zero-shot").mkdir()
    hits, _ = search_json(trained, "EXIT", "--run", "zero-shot")
    assert hits and RunDir(trained, "zero-shot").best.exists()

    n_train = len(json.loads((trained.parent / "synth" / "TextVR_train.json").read_text()))
    hits, _ = search_json(trained, "EXIT", "--top-k", "5", "--k", "2")
    assert len(hits) == min(5, n_train)


def test_results_marks_metrics_scored_on_features_of_other_settings(trained):
    from pipeline.ocr import OcrSettings
    from pipeline.settings import CaptionSettings, PipelineSettings, save_settings

    w = str(trained)
    assert (
        runner.invoke(app, ["eval", "--work", w, "--run", "r", "--split", "train"]).exit_code == 0
    )
    mark = "on features of other settings (tcd eval again)"
    table = runner.invoke(app, ["results", "--work", w, "--split", "train"]).stdout
    assert "\nr " in table and mark not in table
    # a caption setting changed: the saved metrics are of the old captions (they were shown
    # as if current until the run was evaluated again)
    ocr = OcrSettings(engine="kwai")
    save_settings(trained, PipelineSettings(ocr=ocr, captions=CaptionSettings(xi=0.5)))
    table = runner.invoke(app, ["results", "--work", w, "--split", "train"]).stdout
    assert mark in next(line for line in table.splitlines() if line.startswith("r "))
    save_settings(trained, PipelineSettings(ocr=ocr))
    assert mark not in runner.invoke(app, ["results", "--work", w, "--split", "train"]).stdout


def test_search_after_a_settings_change_says_what_to_run_and_creates_no_group(trained):
    """Readers create nothing: search read the groups of the new settings through openers
    that create them, leaving empty groups behind (and failing on a read-only work dir)."""
    from cache import WorkDir
    from pipeline.ocr import OcrSettings
    from pipeline.settings import CaptionSettings, PipelineSettings, save_settings

    save_settings(
        trained, PipelineSettings(ocr=OcrSettings(engine="kwai"), captions=CaptionSettings(xi=0.5))
    )
    groups = {(g.stage, g.key) for g in WorkDir(trained).stages()}
    result = runner.invoke(app, ["search", "--work", str(trained), "--run", "r", "EXIT"])
    assert result.exit_code != 0
    assert "no ocr_text features for the current settings" in str(result.exception)
    assert {(g.stage, g.key) for g in WorkDir(trained).stages()} == groups


def test_eval_refuses_nan_scores_and_writes_no_matrix(trained, tmp_path):
    best = RunDir(trained, "r").best
    payload = torch.load(best, weights_only=True)
    payload["model"] = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
        for k, v in payload["model"].items()
    }
    torch.save(payload, best)
    out = tmp_path / "sim.npy"
    args = ["eval", "--work", str(trained), "--run", "r", "--split", "train"]
    result = runner.invoke(app, [*args, "--sim-matrix", str(out)])
    assert isinstance(result.exception, MetricsError), result.output
    message = str(result.exception)
    assert "\n" not in message and "the scores of run r on train hold" in message
    assert "row(s)" in message and "column(s)" in message
    assert not out.exists() and not RunDir(trained, "r").metrics_path.exists()


def test_eval_of_a_killed_training_run_says_it_is_unfinished(trained):
    from cache import WorkDir
    from cli.common import features
    from heads.config import TrainSettings
    from heads.train import train

    class Killed(Exception):
        pass

    def kill(record):
        raise Killed

    config = RunConfig(HeadSettings(heads=2), TrainSettings(epochs=3, batch_size=4))
    with pytest.raises(Killed):  # stops after the first epoch's checkpoints, like a kill
        train(config, features(WorkDir(trained), "train"), RunDir(trained, "cut"), kill)
    w = str(trained)
    result = runner.invoke(app, ["eval", "--work", w, "--run", "cut", "--split", "train", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["training_finished"] is False
    assert "warning: run cut has not finished training" in result.stderr
    assert RunDir(trained, "cut").saved_metrics()["train"]["training_finished"] is False
    result = runner.invoke(app, ["eval", "--work", w, "--run", "r", "--split", "train"])
    assert result.exit_code == 0 and "not finished" not in result.output
    table = runner.invoke(app, ["results", "--work", w, "--split", "train"]).output.splitlines()
    assert next(line for line in table if line.startswith("cut ")).endswith("unfinished")
    assert not next(line for line in table if line.startswith("r ")).endswith("unfinished")


def _parse_images(page: str) -> list[str]:
    from html.parser import HTMLParser

    sources: list[str] = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "img":
                sources.append(dict(attrs)["src"])

    Parser().feed(page)
    return sources


def test_a_nan_among_scored_pairs_stays_for_the_check_and_does_not_move_the_floor():
    scores = np.array([[np.nan, 0.5, 7.0], [0.2, 9.0, 3.0]], np.float32)
    scored = np.array([[True, True, False], [True, False, False]])
    floor_unscored(scores, scored)
    assert np.isnan(scores[0, 0])  # reported by check_finite, not hidden under the floor
    assert scores[0, 2] == scores[1, 1] == scores[1, 2] == np.float32(0.2 - 1.0)
    with pytest.raises(MetricsError, match="1 non-finite score"):
        t2v_metrics(scores, np.array([0, 1]))
