"""One CLIP directory as both encoders: the towers load from it, the real stages encode frames,
captions and queries into one space, and the features say so (`shared_space`)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cache import WorkDir
from cli.common import features
from cli.main import app
from heads.run_dir import RunDir
from pipeline.models import ModelError, load_text, load_vision
from pipeline.settings import StageGroups, resolve_settings
from pipeline.synth import generate
from tests.clip_fixture import PROJECTION_DIM, tiny_two_tower_clip
from tests.conftest import FAST_SYNTH

CPU = torch.device("cpu")
runner = CliRunner()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_two_tower_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def test_both_towers_load_from_one_directory(clip_dir):
    vision, text = load_vision(str(clip_dir), CPU), load_text(str(clip_dir), CPU)
    assert vision.dim == text.dim == PROJECTION_DIM and text.kind == "clip"
    assert text.max_tokens == 77 and text.text_tokens == 75
    frames = vision(np.random.default_rng(0).integers(0, 256, (3, 216, 384, 3), np.uint8))
    texts = text(["SIAM SQUARE at night", "a café, 42 ~ signs!", "x"])
    for embeds in (frames, texts):
        assert embeds.shape == (3, PROJECTION_DIM) and embeds.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(embeds, axis=1), 1, atol=1e-5)
    # the committed byte-level vocabulary covers any text: no unknown token, ever
    ids = text.tokenizer("Any ASCII ~|{}` and ünï 🍕", add_special_tokens=False)["input_ids"]
    assert ids and text.tokenizer.unk_token_id not in ids


def test_the_helper_is_deterministic(clip_dir, tmp_path):
    again = tiny_two_tower_clip(tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (
        clip_dir / "model.safetensors"
    ).read_bytes()
    assert (again / "tokenizer.json").read_text() == (clip_dir / "tokenizer.json").read_text()


def test_a_missing_tower_or_tokenizer_is_a_model_error(clip_dir, tmp_path):
    vision_only = tmp_path / "vision-only"
    load_vision(str(clip_dir), CPU).model.save_pretrained(vision_only)
    # transformers alone would load a randomly initialised text tower from it
    with pytest.raises(ModelError, match="lacks .* weight.*CLIP text tower") as info:
        load_text(str(vision_only), CPU)
    assert str(vision_only) in str(info.value) and "\n" not in str(info.value)
    assert load_vision(str(vision_only), CPU).dim == PROJECTION_DIM  # still a vision model

    no_tokenizer = Path(shutil.copytree(clip_dir, tmp_path / "no-tokenizer"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / name).unlink()
    # transformers alone would give a tokenizer of the special tokens only
    with pytest.raises(ModelError, match="no tokenizer files"):
        load_text(str(no_tokenizer), CPU)


def invoke(*args: str) -> str:
    result = runner.invoke(app, [*args, "-q"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def computed(output: str) -> dict[str, int]:
    """Stage -> rows computed, from a stage command's summary lines; no failure allowed."""
    found = re.findall(r"^(\w+) \[\w+\]: (?:(\d+) computed, 0 failed|nothing to do)", output, re.M)
    assert len(found) == len(output.strip().splitlines()), output
    return {stage: int(n or 0) for stage, n in found}


def queries_of(work: Path) -> np.ndarray:
    return WorkDir(work).manifest.captions.column("text")


def test_the_stages_encode_into_one_space(clip_dir, tmp_path):
    root, work = tmp_path / "synth", tmp_path / "work"
    generate(root, 5, seed=2, with_ocr_json=True, settings=FAST_SYNTH, progress=False)
    invoke("data", "textvr", "--root", str(root), "--work", str(work))
    invoke("ocr", "--work", str(work), "--engine", "kwai")
    invoke("caption", "--work", str(work))
    clip = str(clip_dir)
    out = invoke(
        "encode", "--work", str(work), "--workers", "0",
        "--set", f"encode.vision_model={clip}", "--set", f"encode.text_model={clip}",
    )  # fmt: skip
    assert computed(out) == {"frames": 5, "ocr_text": 5, "queries": len(queries_of(work))}

    store = WorkDir(work)
    settings = resolve_settings(work)  # what encode saved
    assert settings.encode.vision_model == settings.encode.text_model == clip
    groups = StageGroups.resolve(store, settings)
    frames = groups.frames.group["frames"][:]
    captions = groups.ocr_text.group["captions"][:]
    queries = groups.queries.group["query"][:]
    assert frames.shape[-1] == captions.shape[-1] == queries.shape[-1] == PROJECTION_DIM
    np.testing.assert_allclose(np.linalg.norm(queries.astype(np.float32), axis=-1), 1, atol=2e-3)

    shared = {split: features(store, split) for split in ("train", "test")}
    assert all(f.shared_space for f in shared.values())
    f = shared["train"]
    assert f.frames.shape[-1] == f.queries.shape[-1] == f.captions.shape[-1] == PROJECTION_DIM
    zero_shot = f.queries.astype(np.float32) @ f.frames.astype(np.float32).mean(1).T
    assert zero_shot.shape == (len(f.queries), f.n_videos) and np.isfinite(zero_shot).all()

    # before any training, search uses the zero-shot run (made on first use), which scores
    # with both branches it has here: S_TV and S_TO, no S_TH
    result = runner.invoke(
        app, ["search", "--work", str(work), "--split", "train", str(queries_of(work)[0])]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "S_tv" in result.output and "S_to" in result.output
    assert RunDir(work, "zero-shot").config().head.kind == "zero-shot"
    assert "S_th" not in result.output

    # the same frames with MiniLM texts: two spaces (only the text half is recomputed)
    out = invoke("encode", "--work", str(work), "--workers", "0", "--text-model", "minilm")
    assert computed(out) == {"frames": 0, "ocr_text": 5, "queries": len(queries_of(work))}
    separate = features(store, "train")
    assert not separate.shared_space
    assert separate.frames.shape[-1] == PROJECTION_DIM and separate.queries.shape[-1] == 384
