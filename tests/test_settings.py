import re
import typing
from dataclasses import dataclass, field
from typing import Literal

import pytest

from cache import SettingsError, load_settings, settings_key
from cache.keys import added_setting, as_written_before, keyed_form
from cache.settings import apply_overrides
from pipeline.settings import OcrEngine, OcrSettings, PipelineSettings


@dataclass(frozen=True)
class Captions:
    xi: float = 1.0
    frames: int = 12
    mode: Literal["window", "instances"] = "window"


@dataclass(frozen=True)
class Root:
    captions: Captions = field(default_factory=Captions)
    name: str = "demo"
    tags: list[str] = field(default_factory=list)


def test_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_text('name = "run1"\n[captions]\nxi = 0.5\n')
    settings = load_settings(Root, path, ["captions.frames=8", "tags=['a', 'b']"])
    assert settings == Root(Captions(xi=0.5, frames=8), name="run1", tags=["a", "b"])
    assert load_settings(Root) == Root()


def test_ints_become_floats_and_bare_words_strings():
    settings = load_settings(Root, overrides=["captions.xi=1", "name=minilm"])
    assert settings.captions.xi == 1.0 and isinstance(settings.captions.xi, float)
    assert settings.name == "minilm"


@dataclass(frozen=True)
class Gate:
    mode: str = "fast"
    # added later, with a new default behaviour: what ran before it existed was "off"
    reuse: str = added_setting("on", before="off")
    iou: float = added_setting(0.7)  # added later, its default what ran before


@dataclass(frozen=True)
class WithGate:
    gate: Gate = field(default_factory=Gate)


def test_a_setting_added_with_a_new_default_keys_and_loads_as_what_ran_before(tmp_path):
    # keys leave it out at its value before it existed, not at its new default
    assert keyed_form(Gate(reuse="off")) == {"mode": "fast"}
    assert keyed_form(Gate()) == {"mode": "fast", "reuse": "on"}
    # a file written before it existed reads as what ran then; a fresh start takes the default
    old = as_written_before(WithGate, {"gate": {"mode": "fast"}})
    assert old == {"gate": {"mode": "fast", "reuse": "off"}}
    assert load_settings(WithGate, base=old).gate == Gate(reuse="off")
    assert as_written_before(WithGate, {}) == {"gate": {"reuse": "off"}}
    # layers over the saved table, and --set, still win
    config = tmp_path / "cfg.toml"
    config.write_text('[gate]\nreuse = "on"\n')
    assert load_settings(WithGate, [config], base=old).gate.reuse == "on"
    assert load_settings(WithGate, overrides=["gate.reuse=on"], base=old).gate.reuse == "on"


@pytest.mark.parametrize(
    "override, message",
    [
        ("captions.xj=0.5", "unknown setting 'captions.xj'"),
        ("captions.frames=many", "captions.frames: expected int"),
        ("captions.mode=grid", "not one of"),
        ("captions.frames=true", "expected a number"),
        ("captions", "not of the form key=value"),
        ("name.x=1", "name: expected str"),
    ],
)
def test_bad_overrides_are_typed_errors(override, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(Root, overrides=[override])


def test_bad_file_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("xi = = 1")
    with pytest.raises(SettingsError, match="broken.toml: not valid TOML"):
        load_settings(Root, path)
    with pytest.raises(SettingsError, match="missing.toml: settings file not found"):
        load_settings(Root, tmp_path / "missing.toml")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("captions.separator= | ", {"captions": {"separator": " | "}}),  # shell dropped `"`
        ('captions.separator=" | "', {"captions": {"separator": " | "}}),
        ("ocr.engine = kwai", {"ocr": {"engine": "kwai"}}),  # spaces on both sides of `=`
        ("captions.xi= 0.5 ", {"captions": {"xi": 0.5}}),  # TOML
    ],
)
def test_an_unquoted_text_keeps_its_spaces(override, expected):
    """`--set captions.separator=" | "` reached the program as `captions.separator= | `,
    and the separator silently became `|` (another captions key, other captions)."""
    assert apply_overrides({}, [override]) == expected


def test_overrides_do_not_mutate_input():
    data = {"captions": {"xi": 1.0}}
    apply_overrides(data, ["captions.xi=0.2"])
    assert data == {"captions": {"xi": 1.0}}


def test_settings_key_is_stable_and_chained():
    a = settings_key(Captions(), upstream="ocr1")
    assert a == settings_key(Captions(), upstream="ocr1")
    assert len(a) == 16
    assert a != settings_key(Captions(xi=0.5), upstream="ocr1")
    assert a != settings_key(Captions(), upstream="ocr2")
    # equal fields in another settings class never share a key
    assert settings_key({"xi": 1.0, "frames": 12, "mode": "window"}) != settings_key(Captions())


@pytest.mark.parametrize(
    "override, message",
    [
        ("captions.xi=-1", "captions.xi must be > 0, got -1.0"),
        ("captions.xi=nan", "captions.xi must be > 0"),
        ("captions.frames=0", "captions.frames must be in 1..1024"),
        ("captions.min_score=1.5", "captions.min_score must be in [0, 1]"),
        ("captions.max_instances=-3", "captions.max_instances must be >= 0"),
        ("ocr.fps=0", "ocr.fps must be > 0"),
        ("ocr.max_frames=0", "ocr.max_frames must be >= 1"),
        ("ocr.engine=tesseract", "not one of"),
        ("encode.vision_model=' '", "encode.vision_model must be a name"),
    ],
)
def test_pipeline_settings_out_of_range_are_refused(override, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(PipelineSettings, overrides=[override])


def test_the_engine_choices_are_the_settings_choices():
    hint = typing.get_type_hints(OcrSettings)["engine"]
    assert typing.get_args(hint) == tuple(OcrEngine)


@pytest.mark.parametrize(
    "engine, unread, read",
    [
        ("rapidocr", ["ocr.paddle_det_dir=/m/det", "ocr.import_dir=ocr"], "ocr.rec_batch=16"),
        ("paddleocr", ["ocr.det_limit_side=512", "ocr.rec_batch=16"], "ocr.paddle_det_dir=/m"),
        ("kwai", ["ocr.fps=1", "ocr.max_frames=8", "ocr.import_format=kwai"], None),
        ("import", ["ocr.fps=1", "ocr.det_limit_side=512"], "ocr.import_dir=ocr"),
    ],
)
def test_only_the_settings_an_ocr_engine_reads_key_its_group(engine, unread, read):
    """A setting left from another engine (`import_dir` set for an import, the paddleocr
    model folders) must not rebuild this engine's OCR, captions and their encoding."""
    from pipeline.settings import StageGroups

    def key(*sets: str) -> str:
        settings = load_settings(PipelineSettings, None, [f"ocr.engine={engine}", *sets])
        return StageGroups.keys(settings)["ocr"]

    base = key()
    assert all(key(s) == base for s in unread), engine
    if read is not None:
        assert key(read) != base


def test_a_model_folder_keys_its_groups_by_its_files(tmp_path):
    """A model saved anew into the same folder must not reuse what the old weights computed;
    a name that is no folder (built-in, hub id) keys its groups as before folders were keyed."""
    from pipeline.settings import StageGroups

    folder = tmp_path / "my-clip"
    (folder / ".cache").mkdir(parents=True)  # a download's metadata, not the model
    (folder / "config.json").write_text("{}")
    weights = folder / "model.safetensors"
    weights.write_bytes(b"a" * 1000)
    paddle = ("ocr.engine=paddleocr", f"ocr.paddle_det_dir={folder}")

    def keys(*sets: str, model: str = str(folder)) -> dict[str, str]:
        models = [f"encode.vision_model={model}", f"encode.text_model={model}"]
        return StageGroups.keys(load_settings(PipelineSettings, None, [*models, *sets]))

    base, base_paddle = keys(), keys(*paddle)
    (folder / ".cache" / "etag").write_text("x")
    assert (keys(), keys(*paddle)) == (base, base_paddle)
    weights.write_bytes(b"b" * 1000)  # same name, same size, new weights
    new, new_paddle = keys(), keys(*paddle)
    assert [new[s] != base[s] for s in base] == [False, False, True, True, True], (base, new)
    assert new_paddle["ocr"] != base_paddle["ocr"]

    @dataclass(frozen=True)
    class FrameSettings:  # the frames group's key before model folders were keyed
        model: str
        frames: int

    named = keys(model="openai/clip-vit-base-patch32")
    assert named["frames"] == settings_key(FrameSettings("openai/clip-vit-base-patch32", 12))


def test_rate_and_cap_key_no_ocr_that_reads_the_segment_centres_alone():
    """At ocr.max_frames <= T a sampling engine reads the T segment centres and nothing else:
    a changed ocr.fps or ocr.max_frames there reran OCR for the same frames."""
    from pipeline.ocr import ocr_sample_times
    from pipeline.settings import CaptionSettings, StageGroups

    def key(**ocr) -> str:
        settings = PipelineSettings(ocr=OcrSettings(**ocr), captions=CaptionSettings(frames=12))
        return StageGroups.keys(settings)["ocr"]

    def times(**ocr):
        return ocr_sample_times(30.0, OcrSettings(**ocr), 12).tolist()

    assert times(max_frames=8) == times(max_frames=12, fps=2.0) == times(max_frames=1)
    assert key(max_frames=8) == key(max_frames=12, fps=2.0) == key(max_frames=1)
    assert times(max_frames=13) != times(max_frames=14)  # one sample more at ocr.fps
    assert key(max_frames=13) != key(max_frames=14) and key(max_frames=13) != key(max_frames=12)
    assert key(fps=1.0) != key(fps=2.0)  # the default cap (64) reads the rate's samples
    assert key(max_frames=8) != key() and times(max_frames=8) != times()
