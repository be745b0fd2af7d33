"""Determinism: the same inputs and seed give the same caches (bitwise) and metrics on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from heads.modules import HeadSettings
from heads.train import RunConfig, TrainSettings, load_checkpoint, train
from tests.test_stages import make_work, run_all
from tests.test_train import planted


def arrays(work) -> dict[str, np.ndarray]:
    out = {}
    for group in work.stages():
        for name in group.group.array_keys():
            out[f"{group.stage}/{group.key}/{name}"] = np.asarray(group.group[name][:])
    return out


def test_two_builds_of_one_set_give_identical_caches(synth_set, tmp_path):
    first, second = make_work(synth_set, tmp_path, "a"), make_work(synth_set, tmp_path, "b")
    run_all(first)
    run_all(second)
    a, b = arrays(first), arrays(second)
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_two_trainings_with_one_seed_are_identical(tmp_path):
    data = planted(n=64)
    config = RunConfig(HeadSettings(heads=2), TrainSettings(epochs=3, batch_size=16, seed=7))
    best = [train(config, data, tmp_path / name) for name in ("a", "b")]
    assert best[0]["val_r1"] == best[1]["val_r1"] and best[0]["loss"] == best[1]["loss"]
    weights = [load_checkpoint(tmp_path / name / "best.pt")["model"] for name in ("a", "b")]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    other = train(
        RunConfig(config.head, TrainSettings(epochs=3, batch_size=16, seed=8)), data, tmp_path / "c"
    )
    assert other["loss"] != best[0]["loss"]  # the seed does matter


@pytest.mark.parametrize("batch_size", [4, 36])  # queries in blocks of 4; 3 videos per batch
def test_recomputing_some_rows_gives_the_bits_of_a_full_run(synth_set, tmp_path, batch_size):
    """What a resumed run does: only some rows pending. Embeddings must not depend on which
    other rows are computed alongside (batching them together changes float16 last bits)."""
    work = make_work(synth_set, tmp_path)
    run_all(work, batch_size=batch_size)
    full = arrays(work)
    rng = np.random.default_rng(0)
    for group in work.stages():
        if group.stage in ("frames", "queries"):
            group.reset_rows(np.flatnonzero(rng.random(group.n_rows) < 0.4).tolist())
    run_all(work, batch_size=batch_size)  # most batches now partly done
    again = arrays(work)
    for name in full:
        np.testing.assert_array_equal(full[name], again[name], err_msg=name)
