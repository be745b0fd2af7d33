"""The head trainer: learning a planted signal, checkpoints, resume, ablation table."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import heads.train
from cache.errors import SettingsError, TcdError
from cache.settings import dump_toml, to_dict
from heads.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from heads.config import HeadSettings, RunConfig, TrainSettings
from heads.data import Features
from heads.losses import hsc_loss
from heads.metrics import recall_at_1
from heads.modules import build_head
from heads.run_dir import RunDir, same_config
from heads.scoring import score_matrix
from heads.train import initial_model, train

T, DV, DT = 6, 16, 24


# A fixed random rotation between the query space and the caption space: the planted signal is
# invisible to the identity-initialised projections (the untrained head scores near chance)
# and must be learned. Fixed apart from the data seed, so held-out data share it.
ROTATION = np.linalg.qr(np.random.default_rng(1234).normal(size=(DT, DT)))[0]


def planted(n=160, seed=0) -> Features:
    """Random features where each video's caption embeddings share a key with its queries (the
    scene text), seen through `ROTATION` on the query side; frames carry only a coarse scene
    class (4 classes) that the queries do not name."""
    rng = np.random.default_rng(seed)
    key = rng.normal(size=(n, DT))
    scene = rng.normal(size=(4, DV))[rng.integers(0, 4, n)]
    frames = scene[:, None] + 0.5 * rng.normal(size=(n, T, DV))
    mask = rng.random((n, T)) < 0.6
    mask[:, 0] = True
    captions = (key[:, None] + 0.7 * rng.normal(size=(n, T, DT))) * mask[..., None]
    q_video = np.repeat(np.arange(n), 2)
    queries = key[q_video] @ ROTATION + 0.7 * rng.normal(size=(2 * n, DT))

    def unit(x):
        return (x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-6)).astype(np.float16)

    return Features(
        [f"v{i}" for i in range(n)],
        unit(frames),
        unit(captions) * mask[..., None],
        mask,
        np.zeros((n, 4, DT), np.float16),
        np.zeros((n, 4), bool),
        unit(queries),
        q_video,
        [f"q{i}" for i in range(2 * n)],
        [],
    )


def held_out_r1(head, data: Features) -> float:
    return recall_at_1(score_matrix(head, data), data.query_video)


def stop_at_first(record):
    """A `train` progress callback: the run is killed after its first epoch."""
    raise KeyboardInterrupt


FAST = TrainSettings(epochs=8, batch_size=16, lr=1e-2, val_fraction=0.25, patience=10)


def test_tcd_learns_a_planted_signal_the_untrained_head_cannot_read(tmp_path):
    data, held_out = planted(), planted(n=80, seed=1)
    config = RunConfig(HeadSettings(heads=2), FAST)
    untrained = held_out_r1(initial_model(config, data).head, held_out)  # what training starts from
    best = train(config, data, RunDir.at(tmp_path / "run"))
    head, loaded = RunDir.at(tmp_path / "run").load_head(DV, DT)
    trained = held_out_r1(head, held_out)
    chance = 100 / held_out.n_videos  # 1.25%
    assert untrained <= 3 * chance  # the rotation hides the signal from the initial head
    assert trained >= untrained + 40 and trained >= 20 * chance
    assert best["val_r1"] >= 20 * (100 / 40)  # 40 validation videos
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == list(range(8))
    assert {"loss", "nce", "nce_tv", "nce_to", "nce_th", "hsc", "val_r1", "val_loss", "lr"} <= set(
        lines[0]
    )
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    assert 'kind = "tcd"' in (tmp_path / "run" / "config.toml").read_text()
    assert loaded.train == FAST
    assert score_matrix(head, held_out).shape == (len(held_out.queries), 80)


def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path):
    data = planted(n=64)
    config = RunConfig(
        HeadSettings(heads=2, dropout=0.1), TrainSettings(epochs=4, batch_size=16, patience=10)
    )
    train(config, data, RunDir.at(tmp_path / "clean"))

    def stop_after_two(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, data, RunDir.at(tmp_path / "resumed"), progress=stop_after_two)
    train(config, data, RunDir.at(tmp_path / "resumed"))
    clean = load_checkpoint(tmp_path / "clean" / "last.pt")["model"]
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    for name in clean:
        torch.testing.assert_close(clean[name], resumed[name], rtol=0, atol=0)
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2, 3]

    # a smaller validation-scoring budget (what a user sets after running out of memory)
    # resumes the run too: it sizes the work, not what is learnt (it trained from epoch 0)
    with pytest.raises(KeyboardInterrupt):
        train(config, data, RunDir.at(tmp_path / "budget"), progress=stop_after_two)
    smaller = dataclasses.replace(
        config, train=dataclasses.replace(config.train, score_memory_gb=0.001)
    )
    assert RunDir.at(tmp_path / "budget").replaced_because(smaller, None, None) is None
    epochs: list[int] = []
    train(
        smaller, data, RunDir.at(tmp_path / "budget"), progress=lambda r: epochs.append(r["epoch"])
    )
    assert epochs == [2, 3]
    budget = load_checkpoint(tmp_path / "budget" / "last.pt")["model"]
    for name in clean:
        torch.testing.assert_close(clean[name], budget[name], rtol=0, atol=0)
    other = dataclasses.replace(
        config, train=dataclasses.replace(config.train, lr=2e-4, patience=3)
    )
    assert RunDir.at(tmp_path / "budget").replaced_because(other, None, None) == (
        "budget holds a run of another config (train.lr: 0.0001 -> 0.0002; train.patience: 10 -> 3)"
    )


def test_hsc_draws_its_dropout_apart_from_the_retrieval_loss(tmp_path):
    """HSC at weight 0 trains the head bit for bit as HSC switched off: its own forward pass
    (dropout on) drew from the main generator, so `train.hsc = false` changed every later
    dropout mask and `tcd-no-hsc` measured another dropout stream besides HSC's absence."""
    data = planted(n=64)
    heads = {}
    variants = {"weight0": TrainSettings(hsc_weight=0.0), "off": TrainSettings(hsc=False)}
    for name, hsc in variants.items():
        train_settings = dataclasses.replace(hsc, epochs=2, batch_size=16, patience=10)
        config = RunConfig(HeadSettings(heads=2, dropout=0.1), train_settings)
        train(config, data, RunDir.at(tmp_path / name))
        heads[name] = load_checkpoint(tmp_path / name / "last.pt")["model"]
    for name in heads["off"]:
        torch.testing.assert_close(heads["weight0"][name], heads["off"][name], rtol=0, atol=0)


def test_settings_the_head_cannot_be_built_with_leave_the_trained_run_there(tmp_path):
    """`head.heads` must divide the head width, known only with the features: the run's
    checkpoints were deleted (and its config replaced) before the head was built."""
    data, run = planted(n=64), RunDir.at(tmp_path / "run")
    config = RunConfig(HeadSettings(heads=2), TrainSettings(epochs=1, batch_size=16))
    train(config, data, run)
    before = {p.name: p.read_bytes() for p in run.path.iterdir()}
    bad = RunConfig(HeadSettings(heads=5), config.train)  # 5 does not divide DT = 24
    with pytest.raises(SettingsError, match="must divide the head width 24"):
        train(bad, data, run)
    assert {p.name: p.read_bytes() for p in run.path.iterdir()} == before
    assert run.finished(config, data.source) is not None


def test_a_tcd_head_trains_under_bf16_autocast_as_on_a_gpu(tmp_path, monkeypatch):
    """On a GPU the trainer runs under bf16 autocast; the CPU's bf16 autocast stands in for
    it here (HSC once stopped there: bf16 cannot hold the mask value it wrote)."""
    data = planted(n=64)
    config = RunConfig(HeadSettings(heads=2), TrainSettings(epochs=1, batch_size=16))
    assert config.train.hsc  # the loss that stopped
    monkeypatch.setattr(
        heads.train, "_autocast", lambda device: torch.autocast("cpu", dtype=torch.bfloat16)
    )
    best = train(config, data, RunDir.at(tmp_path / "run"))
    assert np.isfinite(best["loss"]) and np.isfinite(best["hsc"])
    captions = torch.from_numpy(data.captions[:8]).float()
    frames = captions.roll(1, dims=1)  # HSC compares both in the head's width
    mask = torch.from_numpy(data.caption_mask[:8])
    exact = hsc_loss(frames, captions, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert hsc_loss(frames, captions, mask) == exact  # float32 whatever the caller's


def test_without_validation_the_lowest_training_loss_is_kept(tmp_path):
    config = RunConfig(
        HeadSettings(heads=2), TrainSettings(epochs=2, batch_size=16, val_fraction=0)
    )
    best = train(config, planted(n=32), RunDir.at(tmp_path))
    epochs = RunDir.at(tmp_path).epochs()
    assert best["val_loss"] == best["loss"] == min(e["loss"] for e in epochs)
    assert not any("val_r1" in e for e in [best, *epochs])  # no R@1 without held-out captions
    assert (tmp_path / "best.pt").exists()


def test_a_retrain_killed_before_its_first_checkpoint_leaves_no_head_under_its_config(
    tmp_path, monkeypatch
):
    """`tcd eval` builds the head from config.toml: it must never load another config's
    checkpoint under it (same shapes, so nothing would fail), and the old config is not
    taken as finished meanwhile."""
    data, run = planted(n=32), RunDir.at(tmp_path / "run")
    old = RunConfig(HeadSettings(heads=2, tau=5.0), TrainSettings(epochs=1, batch_size=16))
    new = RunConfig(HeadSettings(heads=2, tau=20.0), old.train)
    train(old, data, run)
    assert run.curves.exists()

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(heads.train.Trainer, "train_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        train(new, data, run)
    assert run.config() == new
    with pytest.raises(CheckpointError, match="not found"):
        run.load_head(DV, DT)
    assert run.finished(old) is None and run.finished(new) is None
    assert not run.curves.exists()  # `tcd report` showed the old run's curves for it


def test_a_run_killed_after_its_last_epoch_chooses_its_fusion_weights_when_rerun(
    tmp_path, monkeypatch
):
    data = planted(n=64)
    config = RunConfig(
        HeadSettings(heads=2, fusion="validation"),
        TrainSettings(epochs=2, batch_size=16, val_fraction=0.25),
    )
    clean_run = RunDir.at(tmp_path / "clean")
    clean = train(config, data, clean_run)
    choose = heads.train.Trainer.choose_fusion

    def killed(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(heads.train.Trainer, "choose_fusion", killed)
    run = RunDir.at(tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        train(config, data, run)
    assert run.finished(config) is None  # every epoch done, the weights not chosen
    monkeypatch.setattr(heads.train.Trainer, "choose_fusion", choose)
    assert train(config, data, run)["fusion"] == clean["fusion"]
    assert [e["epoch"] for e in run.epochs()] == [0, 1]  # no epoch trained again
    chosen = [load_checkpoint(r.best)["model"]["fusion_chosen"] for r in (run, clean_run)]
    torch.testing.assert_close(*chosen, rtol=0, atol=0)
    assert not torch.equal(chosen[0], torch.full((3,), 1 / 3))  # chosen, not the uniform start
    assert run.finished(config)["fusion"] == clean["fusion"]


def test_validation_fusion_without_held_out_captions_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="train.val_fraction must be > 0 for head.fusion"):
        RunConfig(HeadSettings(fusion="validation"), TrainSettings(val_fraction=0))
    with pytest.raises(SettingsError, match="train.epochs must be > 0 for head.fusion"):
        RunConfig(HeadSettings(fusion="validation"), TrainSettings(epochs=0))  # chose nothing
    data = planted(n=32)
    run = RunDir.at(tmp_path / "run")  # a run already there, which a refusal must keep
    train(RunConfig(HeadSettings(heads=2), TrainSettings(epochs=1, batch_size=16)), data, run)
    files = sorted(p.name for p in run.path.iterdir())
    _, held_out = heads.train.split_train_val(data, 0.1, seed=0)
    kept = ~np.isin(data.query_video, held_out)  # the held-out videos lose their captions
    data = dataclasses.replace(
        data,
        queries=data.queries[kept],
        query_video=data.query_video[kept],
        query_text=[q for q, k in zip(data.query_text, kept, strict=True) if k],
    )
    config = RunConfig(HeadSettings(heads=2, fusion="validation"), TrainSettings(val_fraction=0.1))
    with pytest.raises(TcdError, match="held-out video\\(s\\) have none"):
        train(config, data, run)
    assert sorted(p.name for p in run.path.iterdir()) == files and run.best.exists()


def test_rerunning_an_early_stopped_run_does_no_work(tmp_path):
    data = planted(n=64)
    # a far too high learning rate: validation soon stops improving and training stops early
    config = RunConfig(
        HeadSettings(heads=2), TrainSettings(epochs=40, batch_size=16, lr=0.5, patience=1)
    )
    first = train(config, data, RunDir.at(tmp_path / "run"))
    lines = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert len(lines.splitlines()) < 40  # stopped early
    last = (tmp_path / "run" / "last.pt").read_bytes()
    assert RunDir.at(tmp_path / "run").finished(config) == first
    longer = RunConfig(config.head, dataclasses.replace(config.train, patience=50))
    assert RunDir.at(tmp_path / "run").finished(longer) is None  # another config: not finished
    assert train(config, data, RunDir.at(tmp_path / "run")) == first
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == lines
    assert (tmp_path / "run" / "last.pt").read_bytes() == last


def test_eval_metrics_are_dropped_when_the_run_is_trained_again_not_when_it_is_done(tmp_path):
    """`tcd results` must not show a retrained head the metrics of the one it replaced; a
    rerun of a finished config replaces nothing and keeps them."""
    data, run = planted(n=32), RunDir.at(tmp_path / "run")
    config = RunConfig(HeadSettings(heads=2), TrainSettings(epochs=1, batch_size=16))
    train(config, data, run)
    run.save_metrics("test", {"t2v": {"R@1": 50.0}})
    train(config, data, run)  # finished: nothing trained
    assert run.saved_metrics() == {"test": {"t2v": {"R@1": 50.0}}}
    train(RunConfig(config.head, dataclasses.replace(config.train, epochs=2)), data, run)
    assert run.saved_metrics() == {} and not run.metrics_path.exists()
    run.save_metrics("test", {"t2v": {"R@1": 50.0}})
    train(RunConfig(config.head, dataclasses.replace(config.train, epochs=0)), data, run)
    assert run.saved_metrics() == {}  # the initial head replaced the trained one

    cut, longer = RunDir.at(tmp_path / "cut"), dataclasses.replace(config.train, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        train(RunConfig(config.head, longer), data, cut, progress=stop_at_first)
    cut.save_metrics("test", {"t2v": {"R@1": 50.0}, "training_finished": False})
    train(RunConfig(config.head, longer), data, cut)  # resumed: its head changes
    assert cut.saved_metrics() == {}


def test_a_run_is_trained_again_on_other_features_not_taken_as_finished(tmp_path):
    """Features from other stage groups (a caption setting changed since): the run is not
    finished for them, nor resumed from the state trained on the old ones; a run saved
    before the groups were recorded stays finished for any."""
    old, run = planted(n=32), RunDir.at(tmp_path / "run")
    old.source = {"frames": "f1", "ocr_text": "t1", "queries": "q1"}
    new = dataclasses.replace(old, source={**old.source, "ocr_text": "t2"})
    config = RunConfig(HeadSettings(heads=2), TrainSettings(epochs=2, batch_size=16))
    first = train(config, old, run)
    assert run.trained_on() == old.source and run.finished(config, old.source) == first
    assert run.finished(config, new.source) is None

    with pytest.raises(KeyboardInterrupt):  # trained again from epoch 0: not resumed at 2
        train(config, new, run, progress=stop_at_first)
    assert [r["epoch"] for r in run.epochs()] == [0]
    train(config, new, run)
    assert run.trained_on() == new.source and run.finished(config, old.source) is None
    state = torch.load(run.last, weights_only=True)
    del state["features"]  # as saved before they were recorded
    torch.save(state, run.last)
    assert run.trained_on() is None and run.finished(config, old.source) is not None


def test_a_run_is_trained_again_on_other_rows_an_untrained_one_is_not(tmp_path):
    """The same groups over other rows (videos added, captions edited, a video encoded since):
    the run is neither finished nor resumed for them (it said "already trained" and kept the
    old head); an untrained head (zero-shot) made on one split serves another; a run saved
    before the rows were recorded stays finished for any."""
    old, run = planted(n=32), RunDir.at(tmp_path / "run")
    old.data_key = "rows-1"
    new = dataclasses.replace(old, data_key="rows-2")
    config = RunConfig(HeadSettings(heads=2), TrainSettings(epochs=2, batch_size=16))
    first = train(config, old, run)
    assert run.finished(config, old.source, "rows-1") == first
    assert run.finished(config, old.source, "rows-2") is None

    with pytest.raises(KeyboardInterrupt):  # trained again from epoch 0: not resumed at 2
        train(config, new, run, progress=stop_at_first)
    assert [r["epoch"] for r in run.epochs()] == [0]
    train(config, new, run)
    assert run.finished(config, new.source, "rows-2") is not None
    state = torch.load(run.last, weights_only=True)
    del state["data"]  # as saved before the rows were recorded
    torch.save(state, run.last)
    assert run.finished(config, old.source, "rows-1") is not None

    untrained = RunConfig(HeadSettings(heads=2), TrainSettings(epochs=0))
    zero = RunDir.at(tmp_path / "untrained")
    train(untrained, old, zero)
    made = zero.best.read_bytes()
    zero.best.unlink()  # made again only if not taken as finished
    train(untrained, new, zero)
    assert not zero.best.exists() and made


# What the hand-written TOML writer (replaced by tomli-w) stored in last.pt for OLD_CONFIG,
# before head.coattn_into and head.coattn_window existed (missing keys mean their defaults).
OLD_WRITER_TEXT = """[head]
kind = "tcd"
width = 0
heads = 2
text_condition = "softmax-reweight"
tau = 5.0
coattn = true
ctcd = true
branches = ["tv", "to", "th"]
dropout = 0.1
time_embedding = true
time_bias = true
cotimed_pooling = true
fusion = "mean"

[train]
epochs = 2
batch_size = 16
lr = 0.0001
weight_decay = 0.01
warmup = 0.1
grad_clip = 1.0
hsc = true
hsc_weight = 0.1
hsc_temperature = 0.1
hsc_form = "cycle"
temperature = 0.05
val_fraction = 0.1
patience = 10
select = "loss"
seed = 0
score_memory_gb = 2.0
"""
OLD_CONFIG = RunConfig(HeadSettings(heads=2), TrainSettings(epochs=2, batch_size=16, patience=10))


def _store_old_writer_text(last_pt) -> None:
    payload = torch.load(last_pt, weights_only=True)
    payload["config"] = OLD_WRITER_TEXT
    torch.save(payload, last_pt)


def test_runs_saved_by_the_old_toml_writer_are_finished_or_resumed_not_retrained(tmp_path):
    assert OLD_WRITER_TEXT != dump_toml(to_dict(OLD_CONFIG))  # the writer did change
    data = planted(n=32)
    done = RunDir.at(tmp_path / "done")
    best = train(OLD_CONFIG, data, done)
    _store_old_writer_text(done.last)
    log, last = done.epochs_log.read_text(), done.last.read_bytes()
    assert done.finished(OLD_CONFIG) == best
    assert train(OLD_CONFIG, data, done) == best
    assert done.epochs_log.read_text() == log and done.last.read_bytes() == last

    def stop_after_first(record):
        if record["epoch"] == 0:
            raise KeyboardInterrupt

    killed = RunDir.at(tmp_path / "killed")
    with pytest.raises(KeyboardInterrupt):
        train(OLD_CONFIG, data, killed, progress=stop_after_first)
    _store_old_writer_text(killed.last)
    ran = []
    train(OLD_CONFIG, data, killed, progress=lambda record: ran.append(record["epoch"]))
    assert ran == [1]  # resumed after epoch 0, not started afresh
    assert [record["epoch"] for record in killed.epochs()] == [0, 1]


def test_a_run_saved_before_a_setting_was_added_is_the_same_config_and_loads_as_trained(
    tmp_path,
):
    config = RunConfig(HeadSettings(heads=2), TrainSettings(epochs=1, batch_size=16))
    run = RunDir(tmp_path, "old")
    train(config, planted(n=32), run)
    added = ("coattn_into", "coattn_window")  # added after this run was written
    old = "".join(
        line
        for line in run.config_path.read_text().splitlines(keepends=True)
        if not line.startswith(added)
    )
    run.config_path.write_text(old)
    assert same_config(old, config)
    as_lists = RunConfig(
        dataclasses.replace(config.head, branches=["tv", "to", "th"]), config.train
    )
    assert same_config(old, as_lists)  # a list from code, a tuple once parsed: the same
    one_way = dataclasses.replace(config.head, coattn_into="captions")
    assert not same_config(old, RunConfig(one_way, config.train))
    assert not same_config("", config)  # nothing saved is not the defaults
    assert not same_config(old.replace("tau = 5.0\n", ""), config)  # not an added setting
    head, loaded = run.load_head(DV, DT)  # strict load: the two-way block is all there
    assert loaded.head.coattn_into == "both" and head.coattn.v_from_o is not None


@pytest.mark.parametrize(
    "override, message",
    [
        ("head.kind=nope", "head.kind: 'nope' is not one of 'tcd', 'video-only', 'ocr-instances'"),
        ("head.text_condition=soft", "head.text_condition: 'soft' is not one of"),
        ("head.branches=['tv', 'xx']", "head.branches[1]: 'xx' is not one of 'tv', 'to', 'th'"),
        ("head.dropout=1.0", "head.dropout must be in [0, 1), got 1.0"),
        ("head.width=30", "head.width must be a multiple of head.heads = 4, got 30"),
        ("train.epochs=-1", "train.epochs must be >= 0 (0 = untrained), got -1"),
        ("train.batch_size=1", "train.batch_size must be >= 2"),
        ("train.val_fraction=1.0", "train.val_fraction must be in [0, 1), got 1.0"),
        ("train.lr=0", "train.lr must be > 0, got 0.0"),
        ("train.patience=0", "train.patience must be >= 1, got 0"),
        ("train.seed=-1", "train.seed must be >= 0, got -1"),
    ],
)
def test_bad_run_settings_are_one_error_line(override, message, tmp_path, monkeypatch, capsys):
    from cache import WorkDir
    from cli.main import main
    from tests.conftest import REPO

    work = WorkDir(tmp_path / "w", create=True).path
    config = str(REPO / "configs" / "tcd.toml")
    argv = ["tcd", "train", "--work", str(work), "--config", config, "--set", override]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        main()
    lines = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 1 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and message in lines[0], lines


def test_checkpoint_round_trip_and_refusals(tmp_path):
    head = build_head(HeadSettings(), DV, DT)
    save_checkpoint(tmp_path / "a.pt", head)
    other = build_head(HeadSettings(), DV, DT)
    load_checkpoint(tmp_path / "a.pt", other)
    for (name, a), b in zip(head.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_checkpoint(tmp_path / "a.pt", build_head(HeadSettings(ctcd=False), DV, DT))
    (tmp_path / "bad.pt").write_bytes((tmp_path / "a.pt").read_bytes()[:300])
    with pytest.raises(CheckpointError, match="bad.pt: not a readable tensors-only checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")


def test_recall_at_1_counts_ties_as_misses():
    sim = np.array([[1.0, 0.0], [0.5, 0.5]])
    assert recall_at_1(sim, np.array([0, 1])) == 50.0


def test_train_and_ablate_commands_on_synthetic_caches(synth_copy, tmp_path):
    from cli.main import app
    from pipeline.settings import OcrSettings, PipelineSettings, save_settings
    from tests.test_stages import make_work, run_all

    work = make_work(synth_copy, tmp_path)
    run_all(work)
    save_settings(work.path, PipelineSettings(ocr=OcrSettings(engine="kwai")))  # as `tcd ocr` does
    runner = CliRunner()
    result = runner.invoke(
        app, ["train", "--work", str(tmp_path / "empty"), "--config", "configs/tcd.toml"]
    )
    assert result.exit_code != 0
    result = runner.invoke(
        app,
        [
            "train",
            "--work",
            str(work.path),
            "--config",
            "configs/tcd.toml",
            "--name",
            "t1",
            "--set",
            "train.epochs=2",
            "--set",
            "train.batch_size=4",
            "--set",
            "train.val_fraction=0.3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "epoch   1" in result.output and (work.path / "runs" / "t1" / "best.pt").exists()
    first_output = result.output
    RunDir(work.path, "t1").save_metrics("test", {"t2v": {"R@1": 1.0}})  # as tcd eval does
    again = [
        "train", "--work", str(work.path), "--config", "configs/tcd.toml", "--name", "t1",
        "--set", "train.epochs=1", "--set", "train.batch_size=4",
    ]  # fmt: skip
    result = runner.invoke(app, again)
    assert result.exit_code == 0, result.output
    assert "lowest val loss" in first_output and "val t2v R@1" in first_output  # select=loss
    # what is replaced is said, by setting (the checkpoints went silently)
    assert "t1 holds a run of another config (train.epochs: 2 -> 1; " in result.output
    assert "t1 was evaluated before: training replaces its head" in result.output
    assert RunDir(work.path, "t1").saved_metrics() == {}
    groups_before = {(g.stage, g.key) for g in work.stages()}
    grid = tmp_path / "grid.toml"
    ablate = ["ablate", "--work", str(work.path), "--grid", str(grid)]
    grid.write_text('[[variant]]\nname = "vo"\nconfig = "configs/video_only.toml"\n')
    result = runner.invoke(app, [*ablate, "--split", "tset"])  # refused before any training
    assert "split 'tset' has no videos in" in str(result.exception)
    assert "its splits: test, train" in str(result.exception)
    assert not (work.path / "runs" / "ablate").exists()
    result = runner.invoke(app, [*ablate, "--set", "train.seed=5"])
    assert "name the seeds there" in str(result.exception)
    grid.write_text(
        '[[variant]]\nname = "zs"\nconfig = "configs/zero_shot.toml"\n'
        '[[variant]]\nname = "vo"\nconfig = "configs/video_only.toml"\n'
        '[[variant]]\nname = "tcd-xi"\nconfig = "configs/tcd.toml"\nset = ["train.hsc=false"]\n'
        'pipeline = ["captions.xi=0.5"]\npaper_t2v_r1 = 56.2\n'
    )
    result = runner.invoke(
        app,
        [
            "ablate",
            "--work",
            str(work.path),
            "--grid",
            str(grid),
            "--split",
            "train",
            "--seeds",
            "0,1",
            "--set",
            "train.epochs=1",
            "--set",
            "train.batch_size=4",
            "--set",
            "train.val_fraction=0.3",
        ],
    )
    assert result.exit_code == 0, result.output
    # the xi variant added one captions group and one caption-encoding group, nothing else
    added = {(g.stage, g.key) for g in work.stages()} - groups_before
    assert sorted(stage for stage, _ in added) == ["captions", "ocr_text"]
    assert {(s, k) for s, k in groups_before if s in ("ocr", "frames")} <= {
        (g.stage, g.key) for g in work.stages()
    }
    table = (work.path / "runs" / "ablations.md").read_text()
    assert "| variant | captions | t2v R@1 | R@5 |" in table
    assert "| variant | OCR texts / video | head params |" in table
    assert "| vo | – |" in table and "| tcd-xi | captions.xi=0.5 |" in table
    assert " ± " in table and "| 56.2 |" in table
    results = json.loads((work.path / "runs" / "ablations.json").read_text())
    # train.epochs=1 trains every variant but the untrained zero-shot (it was refused)
    assert [(r["variant"], r["seed"]) for r in results["runs"]] == [
        ("zs", 0),
        ("zs", 1),
        ("vo", 0),
        ("vo", 1),
        ("tcd-xi", 0),
        ("tcd-xi", 1),
    ]
    by_name = {r["variant"]: r for r in results["summary"]}
    assert by_name["vo"]["ocr_texts"] == 0 and 0 < by_name["tcd-xi"]["ocr_texts"] <= 12
    assert by_name["tcd-xi"]["pair_mflops"] > by_name["vo"]["pair_mflops"] > 0
    # the diagnostics table: validation, HSC against its uniform guess, windows with text
    assert "| variant | captions | windows with an OCR sample % | windows with text % |" in table
    assert by_name["tcd-xi"]["val_loss"] > 0 and 0 < by_name["tcd-xi"]["windows_with_text"] <= 100
    assert "hsc" not in by_name["tcd-xi"] and "hsc" not in by_name["vo"]  # hsc off; no HSC
    for seed in (0, 1):
        assert (work.path / "runs" / "ablate" / "tcd-xi" / f"seed{seed}" / "best.pt").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text('[[variant]]\nname = "x"\nconfig = "c.toml"\npipeline = ["ocr.fps=1"]\n')
    result = runner.invoke(app, ["ablate", "--work", str(work.path), "--grid", str(bad)])
    assert result.exit_code == 1 and "captions.* only" in str(result.exception)
    # results go to the .json beside the tables: a .json --out would overwrite them
    out = ["--out", str(tmp_path / "s.json")]
    result = runner.invoke(app, ["ablate", "--work", str(work.path), "--grid", str(bad), *out])
    assert result.exit_code == 1 and "e.g. " + str(tmp_path / "s.md") in str(result.exception)


def test_videos_without_features_are_flagged_in_results_and_ablation_tables(tmp_path):
    """A video without features is scored as zeros: `tcd eval` warned once, but `tcd results`
    and the ablation tables showed the figures as clean, and `tcd ablate` said nothing."""
    from heads.ablate import ablate
    from heads.metrics import METRICS
    from retrieval.evaluate import results_table

    train_data, test = planted(n=48), planted(n=24, seed=1)
    test.missing = ["v0", "v1"]
    grid = tmp_path / "grid.toml"
    grid.write_text('[[variant]]\nname = "vo"\nconfig = "configs/video_only.toml"\n')
    said: list[str] = []
    overrides = ["train.epochs=1", "train.batch_size=16"]
    work = tmp_path / "w"
    ablate(work, grid, "test", "0", lambda _: (train_data, test), overrides, progress=said.append)
    assert "warning: vo's features: 0 train video(s) without features left out, 2 test " in (
        "\n".join(said)
    )
    table = (work / "runs" / "ablations.md").read_text()
    assert "| scored videos without features (zeros) |" in table.splitlines()[-3]
    assert table.splitlines()[-1].endswith("| 2 |")

    metrics = {name: 1.0 for name in METRICS}
    report = {"t2v": metrics, "v2t": metrics, "captions": 48, "videos": 24}
    for name, missing in (("clean", []), ("holed", ["v0", "v1"])):
        RunDir(work, name).path.mkdir(parents=True)
        RunDir(work, name).save_metrics("test", {**report, "missing_videos": missing})
    rows = {line.split()[0]: line for line in results_table(work, "test").splitlines()}
    assert rows["holed"].endswith("2 video(s) without features (zeros)")
    assert "without features" not in rows["clean"]


def test_train_again_after_a_train_caption_is_edited(synth_copy, tmp_path):
    """An edited train caption changes no group key, yet the head learned from the old text:
    `tcd train` trains it again, saying why (it said "already trained" and kept the old head),
    and a rerun after that is a no-op."""
    from cli.main import app
    from pipeline.datasets import read_textvr
    from pipeline.manifest import build_manifest
    from pipeline.settings import OcrSettings, PipelineSettings, save_settings
    from tests.test_stages import make_work, run_all

    work = make_work(synth_copy, tmp_path)
    run_all(work)
    save_settings(work.path, PipelineSettings(ocr=OcrSettings(engine="kwai")))  # as `tcd ocr` does
    command = [
        "train", "--work", str(work.path), "--config", "configs/tcd.toml", "--name", "t",
        "--set", "train.epochs=1", "--set", "train.batch_size=4",
    ]  # fmt: skip
    runner = CliRunner()
    assert runner.invoke(app, command).exit_code == 0
    first = (work.path / "runs" / "t" / "last.pt").read_bytes()
    assert "already trained" in runner.invoke(app, command).output

    annotations = synth_copy / "TextVR_train.json"
    entries = json.loads(annotations.read_text())
    entries[0]["captions_info"][0]["caption"] = "A sign reading NOTHING LIKE IT before"
    annotations.write_text(json.dumps(entries))
    build_manifest(work, read_textvr(synth_copy), progress=False)
    run_all(work)  # encodes the edited query
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "t was trained on other train videos or captions" in result.output
    assert "epoch   0" in result.output
    assert (work.path / "runs" / "t" / "last.pt").read_bytes() != first
    assert "already trained" in runner.invoke(app, command).output
    del work.root["stages/frames"]  # a finished run needs no features to be seen finished
    assert "already trained" in runner.invoke(app, command).output


def test_features_over_budget_are_memory_mapped(synth_copy, tmp_path):
    from heads.data import load_features
    from pipeline.settings import OcrSettings, PipelineSettings, StageGroups
    from tests.test_stages import make_work, run_all

    work = make_work(synth_copy, tmp_path)
    run_all(work)
    resolved = StageGroups.resolve(work, PipelineSettings(ocr=OcrSettings(engine="kwai")))
    groups = (resolved.frames, resolved.ocr_text, resolved.queries)
    memory = load_features(work.manifest, *groups, "train")
    mapped = load_features(
        work.manifest, *groups, "train", memory_budget=0, spill_dir=tmp_path / "spill"
    )
    assert isinstance(mapped.frames, np.memmap) and not isinstance(memory.frames, np.memmap)
    for name in ("frames", "captions", "caption_mask", "instances", "instance_mask", "queries"):
        np.testing.assert_array_equal(getattr(memory, name), getattr(mapped, name))
    # the files are this process's alone and gone once mapped (a second reader truncated a
    # fixed name under the first, and every file outlived its process)
    assert not list((tmp_path / "spill").iterdir())
    # a second reader stopped while it copies (killed, a full disk) leaves the first's alone
    # (it reopened the same file, truncating what the first had mapped)
    import zarr

    read = zarr.Array.get_orthogonal_selection

    def broken(array: zarr.Array, *args: object, **kwargs: object) -> np.ndarray:
        if array.path.endswith("/frames"):  # the frames' copy into its spill file
            raise OSError("stopped")
        return read(array, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zarr.Array, "get_orthogonal_selection", broken)
        with pytest.raises(OSError, match="stopped"):
            load_features(
                work.manifest, *groups, "train", memory_budget=0, spill_dir=tmp_path / "spill"
            )
    np.testing.assert_array_equal(mapped.frames, memory.frames)


def test_shipped_configs_and_grid_load():
    from cache.settings import load_settings
    from heads.ablate import read_grid
    from pipeline.settings import PipelineSettings
    from tests.conftest import REPO

    for name in ("tcd", "video_only", "ocr_instances", "zero_shot"):
        load_settings(RunConfig, REPO / "configs" / f"{name}.toml")
    assert load_settings(PipelineSettings, REPO / "configs" / "pipeline.toml") == PipelineSettings()
    for grid in ("ablations.toml", "study_temporal.toml"):
        variants = read_grid(REPO / "configs" / grid)
        assert {"zero-shot", "untrained", "tcd"} <= {v.name for v in variants}  # every study
        for variant in variants:
            config = load_settings(RunConfig, REPO / variant.config, variant.set)
            build_head(config.head, DV, DT)  # every variant builds


@pytest.mark.parametrize("name", ["", ".", "a/b"])
def test_a_grid_naming_a_variant_no_run_folder_can_have_is_refused_when_read(name, tmp_path):
    """Before, it failed once the variants before it had trained."""
    from heads.ablate import read_grid

    grid = tmp_path / "grid.toml"
    grid.write_text(
        '[[variant]]\nname = "tcd"\nconfig = "configs/tcd.toml"\n'
        f'[[variant]]\nname = "{name}"\nconfig = "configs/tcd.toml"\n'
    )
    with pytest.raises(SettingsError, match="variant 1: run name .* must be a plain folder name"):
        read_grid(grid)


def test_the_text_only_baseline_learns_nothing_from_frames(tmp_path):
    """The studies' `text-only` row is OCR captions alone: its trained head is the same
    whatever the frames were (HSC, which ties frames to captions, once reached it)."""
    from cache.settings import load_settings
    from heads.ablate import read_grid
    from tests.conftest import REPO

    data = planted(n=32)
    other_frames = dataclasses.replace(data, frames=data.frames[::-1].copy())
    for grid in ("ablations.toml", "study_temporal.toml"):
        (variant,) = [v for v in read_grid(REPO / "configs" / grid) if v.name == "text-only"]
        config = load_settings(RunConfig, REPO / variant.config, variant.set)
        config = dataclasses.replace(
            config, train=dataclasses.replace(config.train, epochs=1, batch_size=16)
        )
        weights = []
        for k, features in enumerate((data, other_frames)):
            train(config, features, RunDir.at(tmp_path / f"{grid}-{k}"))
            weights.append(load_checkpoint(tmp_path / f"{grid}-{k}" / "last.pt")["model"])
        for name, value in weights[0].items():
            assert torch.equal(value, weights[1][name]), (grid, name)


def test_ablation_summary_averages_a_diagnostic_over_the_seeds_that_have_it():
    """The held-out split moves with train.seed, so calibration accuracy may exist for one
    seed and not another: the summary must neither raise nor drop it."""
    from heads.ablate import Column, Variant, markdown_table, summarise

    rows = [
        {"variant": "a", "seed": 0, "R@1": 1.0},
        {"variant": "a", "seed": 1, "R@1": 3.0, "calib_acc": 0.5},
    ]
    (summary,) = summarise(rows, [Variant("a", "configs/tcd.toml")])
    assert summary["R@1"] == 2.0 and "R@1_seeds" not in summary
    assert summary["calib_acc"] == 0.5 and summary["calib_acc_seeds"] == 1
    table = markdown_table([summary], [Column("R@1", "R@1"), Column("calib_acc", "calib", 3)])
    assert "| 2.0 ± 1.4 | 0.500 (1 of 2 seeds) |" in table  # no spread of one seed
