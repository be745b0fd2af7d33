"""Shared fixtures: small synthetic sets and the real TextVR annotation files (when present)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.synth import SynthSettings, generate

REPO = Path(__file__).resolve().parents[1]
SHARED_TEXTVR = REPO.parent / "shared" / "data" / "textvr"

# Short videos keep the suite fast; every other setting is the generator's default.
FAST_SYNTH = SynthSettings(min_seconds=3.0, max_seconds=3.5)


@pytest.fixture(scope="session")
def textvr_files() -> Path:
    """The real TextVR test annotations from ../shared/data/textvr/ (not in a user's clone)."""
    if not (SHARED_TEXTVR / "TextVR_test.json").exists():
        pytest.skip(f"real TextVR annotations not found at {SHARED_TEXTVR} (only in our checkout)")
    return SHARED_TEXTVR


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-video synthetic set with ground-truth OCR JSON, generated once per session."""
    out = tmp_path_factory.mktemp("synth")
    generate(out, 12, seed=3, with_ocr_json=True, settings=FAST_SYNTH, progress=False)
    return out


@pytest.fixture
def synth_copy(synth_set: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic set that a test may modify."""
    return Path(shutil.copytree(synth_set, tmp_path / "synth"))


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (for crash and lock tests)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def tcd_process(*args: str) -> subprocess.Popen:
    """Start `tcd ARGS...` in a fresh interpreter (for kill and concurrency tests)."""
    return subprocess.Popen(
        [sys.executable, "-c", "from cli.main import main; main()", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
