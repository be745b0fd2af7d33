"""Determinism: the same inputs and seed give the same caches (bitwise) and metrics on CPU."""

from __future__ import annotations

import numpy as np
import torch

from heads.checkpoint import load_checkpoint
from heads.config import HeadSettings, RunConfig, TrainSettings
from heads.run_dir import RunDir
from heads.train import train
from tests.reliability.harness import assert_same, cache_arrays
from tests.test_stages import make_work, run_all
from tests.test_train import planted


def test_two_builds_and_a_partial_rebuild_give_identical_caches(synth_set, tmp_path):
    """Two builds of one set are bitwise equal; so is a rebuild of some rows only (what a
    resumed run does): a row's bits must not depend on which other rows are computed
    alongside it (batching them differently changes float16 last bits)."""
    first, second = make_work(synth_set, tmp_path, "a"), make_work(synth_set, tmp_path, "b")
    run_all(first, batch_size=24)  # frames: 2 videos a batch; queries: one block of 24 rows
    run_all(second, batch_size=24)
    a = cache_arrays(first.path)
    assert len(a) > 10
    assert_same(a, cache_arrays(second.path), "two builds")
    rng = np.random.default_rng(0)
    for group in second.stages():
        if group.stage in ("frames", "queries"):
            group.reset_rows(np.flatnonzero(rng.random(group.n_rows) < 0.4).tolist())
    run_all(second, batch_size=24)  # the batches now mix pending and done rows
    assert_same(a, cache_arrays(second.path), "a partial rebuild")


def test_two_trainings_with_one_seed_are_identical(tmp_path):
    data = planted(n=64)
    config = RunConfig(HeadSettings(heads=2), TrainSettings(epochs=3, batch_size=16, seed=7))
    best = [train(config, data, RunDir.at(tmp_path / name)) for name in ("a", "b")]
    assert best[0]["val_r1"] == best[1]["val_r1"] and best[0]["loss"] == best[1]["loss"]
    weights = [load_checkpoint(tmp_path / name / "best.pt")["model"] for name in ("a", "b")]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    other = train(
        RunConfig(config.head, TrainSettings(epochs=3, batch_size=16, seed=8)),
        data,
        RunDir.at(tmp_path / "c"),
    )
    assert other["loss"] != best[0]["loss"]  # the seed does matter
