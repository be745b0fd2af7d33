"""Crashes: SIGKILL each stage (ocr, caption, encode, train, index) at random moments; every
rerun ends bitwise equal to an uninterrupted run, and no kill leaves a row marked done without
its data. CI kills each stage once, at a random point of its progress; `make soak` kills each
20 times (tests/reliability/harness.py).
"""

from __future__ import annotations

import json
import os

import pytest

from cache import WorkDir
from pipeline.datasets import read_textvr
from pipeline.manifest import build_manifest
from tests.reliability.harness import STAGES, campaign, chain

FAST_KILLS, SOAK_KILLS = 1, 20


@pytest.fixture(scope="module")
def links(synth_set, tmp_path_factory):
    """Each stage's input and uninterrupted output (real rapidocr, tiny CLIP, MiniLM)."""
    root = tmp_path_factory.mktemp("chain")
    work = WorkDir(root / "manifest", create=True)
    build_manifest(work, read_textvr(synth_set), progress=False)
    return chain(work.path, root)


@pytest.mark.parametrize("stage", STAGES)
def test_killed_stage_reruns_to_the_uninterrupted_result(links, stage, tmp_path):
    stats = campaign(links[stage], FAST_KILLS, tmp_path, modes=("progress",))
    assert stats.kills == FAST_KILLS and stats.completions >= 1
    print(stats)


@pytest.mark.soak
@pytest.mark.parametrize("stage", STAGES)
def test_soak_kills(links, stage, tmp_path):
    """20 kills per stage, half at random moments in time (many land in start-up), half at
    random points of progress; with TCD_SOAK_REPORT set, one JSON line per stage goes there."""
    stats = campaign(links[stage], SOAK_KILLS, tmp_path, seed=1)
    assert stats.kills == SOAK_KILLS and stats.completions >= 1
    print(stats)
    if os.environ.get("TCD_SOAK_REPORT"):
        with open(os.environ["TCD_SOAK_REPORT"], "a") as report:
            record = {**vars(stats), "reference_seconds": round(links[stage].seconds, 2)}
            report.write(json.dumps(record) + "\n")
