"""The `temporal` synthetic profile: multi-shot videos whose queries need text *and* time.

`generate(out, n_videos, seed)` writes the same TextVR layout as `pipeline.synth` (the
`simple` profile), with the same writer (one x264 thread, width a multiple of 128, so the
bytes are identical per seed)::

    out/Video/<Domain>/synth_00000.mp4         4-10 s, 384x216, 10 fps, 2-4 shots
    out/TextVR_train.json, TextVR_test.json    annotations (TEXTVR_FORMAT.md)
    out/TextVR_test_rand.json                  the test file with video blocks permuted
    out/Kwai_VideoOCR/<Domain>/synth_*.json    ground-truth OCR tracks (with_ocr_json=True)
    out/synth_meta.json                        per video: shots, texts, family, twin/partner
    out/synth_groups.json                      test caption id -> {"group", "twin"}

Each video is 2 to 4 shots joined by hard cuts, each shot one of eight scene styles, one per
TextVR domain (street -> Street_View_Outdoor, indoor -> Street_View_Indoor, road -> Driving,
sport -> Sports, kitchen -> Cooking, news -> News_Movie, game -> Games, activity -> Activity),
each with its own colour layout, geometry and motion. The video's folder is the domain of its
*key shot*: the shot its queries name.

Every shot carries its own 2-4 texts (signs, plates, scoreboards, menus, headlines, game HUD
text) that stay on screen for most of the shot, drift, may be small, blurred, cut by the frame
edge or crossed by a passing object (a person, a pole, a hand), so OCR makes real mistakes.
Overlays (channel logo, news ticker, watermark) persist over a whole video and come from a
small pool shared by many videos. A query names one text and the scene on screen with it.

Every video belongs to a pair of one hard-negative *family* (the wrong video nearest to the
right one shares with it):

    twin-swap  the same scenes and the same texts, with the key text shown during the other
               scene (each twin's query names the key text with its own scene)
    same-text  the key text, shown in other scenes (neither video has the other's key scene)
    overlay    the persistent overlay text the query names (with a scene no other video of
               the split shows under that overlay)
    near-miss  a key text one or two characters off, in the same key scene

Both videos of a pair are in one split. Pairs are dealt in blocks of the four families, and
one pair in three of each family goes to test, so each family holds about a quarter of the
queries of each split; `generate` refuses a set where a family holds under 15% of a split's
queries once that split has 60 videos or more. Output is a pure function of
(n_videos, seed, settings).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter

from pipeline.errors import DatasetError
from pipeline.synth import (
    BANNERS,
    DISTRACTORS,
    FONT_FILES,
    NAMES,
    SHOPS,
    TextItem,
    _clip,
    _font,
    _key_text,
    _panel_size,
    _text_box,
    check_settings,
    write_textvr_files,
    write_videos,
)

FAMILIES = ("twin-swap", "same-text", "overlay", "near-miss")
MIN_FAMILY_SHARE = 0.15  # of a split's queries, checked once the split has >= 60 videos
FAMILY_CHECK_MIN_VIDEOS = 60


@dataclass(frozen=True)
class TemporalSettings:
    # 384 wide for byte-identical H.264 output (see SynthSettings)
    width: int = 384
    height: int = 216
    fps: int = 10
    min_seconds: float = 4.0
    max_seconds: float = 10.0
    min_shots: int = 2
    max_shots: int = 4
    min_shot_seconds: float = 1.5  # max_shots of them (+25%) must fit in max_seconds
    test_fraction: float = 1 / 3  # one pair in three of each family (see the docstring)


# -- vocabulary -----------------------------------------------------------------------------
STYLES: dict[str, dict[str, Any]] = {
    "street": {
        "domain": "Street_View_Outdoor",
        "phrases": [
            "while the camera moves along a busy street",
            "as the camera pans along the shop fronts of a city street",
            "on a street lined with brick buildings",
        ],
        "kinds": ["shop", "banner", "plate"],
        "words": ["OPEN", "BUS STOP", "NO PARKING", "ONE WAY", "TAXI", "HOTEL", "SALE"],
        "occluders": ["person", "pole"],
    },
    "indoor": {
        "domain": "Street_View_Indoor",
        "phrases": [
            "while walking through a shopping mall",
            "in a brightly lit indoor shopping arcade",
            "as the camera moves down a mall corridor",
        ],
        "kinds": ["shop", "banner"],
        "words": ["EXIT", "TOILETS", "ELEVATOR", "FOOD COURT", "PUSH", "INFO", "LEVEL 2"],
        "occluders": ["person"],
    },
    "road": {
        "domain": "Driving",
        "phrases": [
            "while driving down a road at night",
            "seen from the driver's seat at night",
            "as the car drives past street lamps at night",
        ],
        "kinds": ["plate", "roadsign", "banner"],
        "words": ["STOP", "SLOW", "DETOUR", "NO ENTRY", "TOLL", "GAS", "MOTEL"],
        "occluders": ["pole"],
    },
    "sport": {
        "domain": "Sports",
        "phrases": [
            "during a football match on a green pitch",
            "while players run across the field",
            "at a football game",
        ],
        "kinds": ["scoreboard", "banner"],
        "words": ["GOAL", "HOME", "AWAY", "TICKETS", "GATE 4", "HALF TIME", "FANS"],
        "occluders": ["person"],
    },
    "kitchen": {
        "domain": "Cooking",
        "phrases": [
            "while someone chops food on a wooden counter",
            "in a kitchen as a meal is prepared",
            "next to a pan on the stove while cooking",
        ],
        "kinds": ["menu", "banner"],
        "words": ["SALT", "SUGAR", "FLOUR", "OLIVE OIL", "RICE", "SPICES", "TEA"],
        "occluders": ["hand"],
    },
    "news": {
        "domain": "News_Movie",
        "phrases": [
            "while a news anchor speaks in the studio",
            "during a television news broadcast",
            "as the presenter reads the news",
        ],
        "kinds": ["headline", "banner"],
        "words": ["LIVE", "BREAKING", "WEATHER", "UPDATE", "EXCLUSIVE", "REPORT"],
        "occluders": ["hand"],
    },
    "game": {
        "domain": "Games",
        "phrases": [
            "in a video game level",
            "while a game character jumps across platforms",
            "during a retro video game",
        ],
        "kinds": ["hud", "banner"],
        "words": ["PRESS START", "1UP", "BONUS", "GAME OVER", "HIGH SCORE", "READY", "COMBO"],
        "occluders": ["block"],
    },
    "activity": {
        "domain": "Activity",
        "phrases": [
            "while people exercise on a sunny beach",
            "as people play volleyball by the sea",
            "during an outdoor activity on the beach",
        ],
        "kinds": ["banner", "shop"],
        "words": ["BEACH", "SURF", "ICE CREAM", "LIFEGUARD", "SWIM", "RENTALS"],
        "occluders": ["person"],
    },
}
HEADLINES = (
    "STORM HITS|MAYOR VISITS|FIRE AT|NEW MUSEUM IN|FESTIVAL IN|RECORD HEAT IN|FLOODS IN|"
    "STRIKE AT|NEW BRIDGE IN|ELECTION IN|SNOW IN|MARATHON IN"
).split("|")
EVENTS = "FESTIVAL FAIR EXPO CUP OPEN RUN CONCERT MARKET".split()
HUD_WORDS = ["LEVEL", "STAGE", "WORLD", "ROUND"]
TEMPLATES = {
    "shop": [
        "The sign {text} appears {scene}",
        "A shop sign reading {text} is visible {scene}",
        "You can read the {shop} sign {text} {scene}",
    ],
    "banner": [
        "A banner reading {text} shows up {scene}",
        "The banner says {text} {scene}",
        "An advertisement for {text} is seen {scene}",
    ],
    "plate": [
        "A car with number plate {text} is seen {scene}",
        "The licence plate {text} is visible {scene}",
        "The number plate {text} appears {scene}",
    ],
    "roadsign": [
        "A road sign shows {text} {scene}",
        "The sign {text} points the way {scene}",
        "A signpost reading {text} appears {scene}",
    ],
    "scoreboard": [
        "The scoreboard shows {text} {scene}",
        "The score {text} is displayed {scene}",
        "A board with the result {text} appears {scene}",
    ],
    "menu": [
        "A menu board lists {text} {scene}",
        "The menu offers {text} {scene}",
        "Today's special {text} is written up {scene}",
    ],
    "headline": [
        "The headline {text} is shown {scene}",
        "A caption reading {text} appears {scene}",
        "The news caption says {text} {scene}",
    ],
    "hud": [
        "The screen reads {text} {scene}",
        "The game shows {text} {scene}",
        "The text {text} appears on screen {scene}",
    ],
    "logo": [
        "The channel logo {text} is shown {scene}",
        "A {text} logo sits in the corner {scene}",
        "The broadcaster's logo {text} appears {scene}",
    ],
    "ticker": [
        "A ticker at the bottom reads {text} {scene}",
        "The scrolling ticker says {text} {scene}",
        "A news ticker shows {text} {scene}",
    ],
    "watermark": [
        "The watermark {text} is visible {scene}",
        "A faint {text} watermark is on screen {scene}",
        "The video is marked {text} {scene}",
    ],
}
OVERLAYS = {  # the base pool; larger sets add generated logos (see `overlay_pool`)
    "logo": ["CITY24", "NEWS NOW", "TV5 LIVE", "SPORT ONE", "CHEF TV"],
    "ticker": ["MARKETS RISE TODAY", "STORM WARNING IN NORTH", "LIVE COVERAGE ALL DAY"],
    "watermark": ["@TRAVELMIA", "@DAILYVLOG", "SAMPLE", "PREVIEW"],
}
OVERLAY_PROBABILITY = {"logo": 0.55, "ticker": 0.3, "watermark": 0.3}
VIDEOS_PER_OVERLAY = 20  # the pool grows past its base size for sets above 12 * 20 videos
LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"
TOP, BOTTOM, BANDS = 30, 194, 4  # text bands between the logo row and the ticker bar


@dataclass
class Shot:
    start: float
    end: float
    scene: str
    tint: tuple[int, int, int]
    variant: int  # seeds the layout (facade heights, colours, phases)

    @property
    def domain(self) -> str:
        return STYLES[self.scene]["domain"]


@dataclass
class TemporalText(TextItem):
    """A text of one shot (`shot` >= 0) or an overlay over the whole video (`shot` = -1)."""

    shot: int = -1
    overlay: str = ""  # "" | "logo" | "ticker" | "watermark"
    kind: str = ""  # what it is: shop, plate, ..., distractor, logo, ticker, watermark
    blur: float = 0.0  # Gaussian blur radius on the text patch
    alpha: int = 255  # < 255: drawn see-through, without a panel (watermarks)


@dataclass
class Occluder:
    """An object passing in front of a text (drawn after the texts, before the overlays)."""

    shot: int
    start: float
    end: float
    x: float
    y: float
    dx: float
    width: float
    height: float
    shape: str  # person | pole | hand | block
    color: tuple[int, int, int]


@dataclass
class TemporalPlan:
    index: int
    family: str
    split: str
    seconds: float
    shots: list[Shot]
    key_shot: int  # the shot the queries name
    query_text: str  # the text the queries name (the key text, or the overlay text)
    kind: str  # that text's kind (shop, plate, ..., logo, ticker, watermark)
    captions: list[str] = field(default_factory=list)
    texts: list[TemporalText] = field(default_factory=list)
    occluders: list[Occluder] = field(default_factory=list)
    partner: int = -1  # the family's nearest wrong video (the twin for twin-swap), -1: none
    shop: str = ""

    @property
    def rel_path(self) -> str:
        return f"{self.shots[self.key_shot].domain}/synth_{self.index:05d}.mp4"

    def shot_at(self, t: float) -> int:
        for i, shot in enumerate(self.shots):
            if t < shot.end - 1e-6:
                return i
        return len(self.shots) - 1


# -- planning (cheap, sequential, all randomness lives here) ---------------------------------
@dataclass
class _Video:
    """A video while its group is planned: scenes in shot order, the scene its queries name,
    and its overlays by type."""

    scenes: list[str]
    key_scene: str
    n_shots: int = 0
    overlays: dict[str, str] = field(default_factory=dict)  # type -> text


@dataclass
class _Group:
    family: str
    split: str
    videos: list[_Video]
    kind: str = ""
    texts: list[str] = field(default_factory=list)  # key text per video ("" for overlay)
    shop: str = ""
    claim: str = ""  # overlay family: the overlay text both videos carry


def overlay_pool(n_videos: int) -> dict[str, str]:
    """Overlay text -> type: the base pool, plus generated logos for large sets."""
    pool = {text: kind for kind, texts in OVERLAYS.items() for text in texts}
    extra = max(0, math.ceil(n_videos / VIDEOS_PER_OVERLAY) - len(pool))
    for k in range(extra):
        pool[f"{NAMES[k % len(NAMES)]} TV{k // len(NAMES) + 2}"] = "logo"
    return pool


def plan_videos(
    n_videos: int, seed: int, settings: TemporalSettings | None = None
) -> list[TemporalPlan]:
    """Decide every video's shots, texts, overlays, family and queries (deterministic)."""
    settings = settings or TemporalSettings()
    if n_videos < 2:
        raise DatasetError("the synthetic set needs at least 2 videos")
    if not 2 <= settings.min_shots <= settings.max_shots <= len(STYLES):
        raise DatasetError(f"shots per video must be 2 to {len(STYLES)}, min <= max")
    if settings.max_shots * settings.min_shot_seconds * 1.25 > settings.max_seconds:
        raise DatasetError(
            f"{settings.max_shots} shots of at least {settings.min_shot_seconds} s do not fit "
            f"in {settings.max_seconds} s (with a quarter to spare)"
        )
    rng = random.Random(seed)
    pool = overlay_pool(n_videos)
    groups = _plan_groups(rng, n_videos, settings)
    claimed = _claim_overlays(rng, groups, pool, settings)
    taken = set(pool)
    for group in groups:
        _key_texts(rng, group, taken)
    _add_overlays(rng, groups, pool, claimed)
    plans: list[TemporalPlan] = []
    for group in groups:
        first = len(plans)
        for k, video in enumerate(group.videos):
            plans.append(_plan_video(rng, len(plans), group, k, video, settings))
        if len(group.videos) == 2:
            plans[first].partner, plans[first + 1].partner = first + 1, first
    _fill_texts(rng, groups, plans, taken, settings)
    _partner_single_overlays(plans)
    for plan in plans:
        plan.captions = _captions(rng, plan)
    return plans


def _plan_groups(rng: random.Random, n_videos: int, settings: TemporalSettings) -> list[_Group]:
    """Pairs dealt in shuffled blocks of the four families; one pair in three to test."""
    groups: list[_Group] = []
    dealt = {family: 0 for family in FAMILIES}
    test_slot = {family: rng.randrange(3) for family in FAMILIES}
    block: list[str] = []
    left = n_videos
    while left > 0:
        if not block:
            block = rng.sample(FAMILIES, len(FAMILIES))
        family = block.pop() if left >= 2 else "overlay"  # an odd last video: an overlay single
        size = min(2, left)
        k = dealt[family]
        dealt[family] += 1
        if k % 3 == 0 and k:
            test_slot[family] = rng.randrange(3)
        if not groups:  # small sets still get both splits: the first pair tests ...
            test_slot[family] = 0
        elif len(groups) == 1 and k == 0:  # ... and the second trains
            test_slot[family] = rng.choice((1, 2))
        split = "test" if k % 3 == test_slot[family] else "train"
        groups.append(_scenes(rng, family, split, size, settings))
        left -= size
    return groups


def _n_shots(rng: random.Random, settings: TemporalSettings) -> int:
    return rng.randint(settings.min_shots, settings.max_shots)


def _common_kinds(*scenes: str) -> list[str]:
    return sorted(set.intersection(*(set(STYLES[s]["kinds"]) for s in scenes)))


def _scenes(
    rng: random.Random, family: str, split: str, size: int, settings: TemporalSettings
) -> _Group:
    """The scenes of each video of a new group (overlay groups get theirs when they claim)."""
    names = sorted(STYLES)
    if family == "twin-swap":
        scenes = rng.sample(names, _n_shots(rng, settings))
        a, b = rng.sample(scenes, 2)
        videos = [
            _Video(rng.sample(scenes, len(scenes)), a),
            _Video(rng.sample(scenes, len(scenes)), b),
        ]
        return _Group(family, split, videos, kind=rng.choice(_common_kinds(a, b)))
    if family == "same-text":
        a, b = rng.sample(names, 2)
        videos = []
        for key, other in ((a, b), (b, a)):
            rest = [s for s in names if s not in (key, other)]
            scenes = [key, *rng.sample(rest, _n_shots(rng, settings) - 1)]
            videos.append(_Video(rng.sample(scenes, len(scenes)), key))
        return _Group(family, split, videos, kind=rng.choice(_common_kinds(a, b)))
    if family == "near-miss":
        key = rng.choice(names)
        videos = []
        for _ in range(2):
            rest = [s for s in names if s != key]
            scenes = [key, *rng.sample(rest, _n_shots(rng, settings) - 1)]
            videos.append(_Video(rng.sample(scenes, len(scenes)), key))
        return _Group(family, split, videos, kind=rng.choice(_common_kinds(key)))
    videos = [_Video([], "", n_shots=_n_shots(rng, settings)) for _ in range(size)]
    return _Group("overlay", split, videos)


def _claim_overlays(
    rng: random.Random, groups: list[_Group], pool: dict[str, str], settings: TemporalSettings
) -> dict[tuple[str, str], set[str]]:
    """Give each overlay-family video an overlay and scenes that make its query unique.

    Per (split, overlay O): `claimed` holds the scenes queries name with O, `shown` the
    scenes of the videos claiming O. A new claim (O, S) needs S outside both, and the
    claimer's other scenes outside `claimed`; videos that carry O without claiming it avoid
    `claimed` too (`_add_overlays`). So no other video of the split shows S under O.
    Returns `claimed`.
    """
    names = sorted(STYLES)
    claimed: dict[tuple[str, str], set[str]] = {}
    shown: dict[tuple[str, str], set[str]] = {}
    for group in groups:
        if group.family != "overlay":
            continue
        need = len(group.videos)
        options = []
        for text in pool:
            done = claimed.get((group.split, text), set())
            seen = shown.get((group.split, text), set())
            free = [s for s in names if s not in seen and s not in done]
            # room for the claims and for at least min_shots - 1 other scenes per claimer
            if len(free) >= need and len(names) - len(done) - need >= settings.min_shots - 1:
                options.append((len(done), text, free))
        if not options:
            raise DatasetError(
                "the overlay pool cannot give every overlay query a scene of its own; "
                "make fewer videos (or lower synth_temporal.VIDEOS_PER_OVERLAY)"
            )
        fewest = min(option[0] for option in options)
        _, text, free = rng.choice([option for option in options if option[0] == fewest])
        keys = rng.sample(free, need)
        done = claimed.setdefault((group.split, text), set())
        seen = shown.setdefault((group.split, text), set())
        done.update(keys)
        rest = [s for s in names if s not in done]
        for video, key in zip(group.videos, keys, strict=True):
            # other scenes: those already shown under this overlay first (keeps room for more)
            others = sorted(rest, key=lambda s: (s not in seen, rng.random()))
            scenes = [key, *others[: min(video.n_shots, len(others) + 1) - 1]]
            video.scenes, video.key_scene = rng.sample(scenes, len(scenes)), key
            video.overlays[pool[text]] = text
            seen.update(scenes)
        group.claim, group.kind = text, pool[text]
    return claimed


def _make_key_text(rng: random.Random, kind: str) -> tuple[str, str]:
    """(text, shop type) for a key text of this kind."""
    if kind == "roadsign":
        return f"{rng.choice(NAMES)} {rng.randint(2, 95)} KM", ""
    if kind == "headline":
        return f"{rng.choice(HEADLINES)} {rng.choice(NAMES)}", ""
    if kind == "hud":
        return f"{rng.choice(HUD_WORDS)} {rng.randint(2, 99)} {rng.choice(NAMES)}", ""
    if kind == "banner" and rng.random() < 0.5:
        return f"{rng.choice(NAMES)} {rng.choice(EVENTS)} {rng.randint(2020, 2029)}", ""
    return _key_text(rng, kind)


def near_miss(rng: random.Random, text: str, taken: set[str]) -> str:
    """`text` with one or two letters or digits replaced (same length), not in `taken`."""
    positions = [i for i, ch in enumerate(text) if ch.isalnum()]
    for _ in range(200):
        chars = list(text)
        for i in rng.sample(positions, min(len(positions), rng.choice((1, 2)))):
            alphabet = "0123456789" if text[i].isdigit() else LETTERS
            chars[i] = rng.choice([ch for ch in alphabet if ch != text[i]])
        candidate = "".join(chars)
        if candidate not in taken:
            return candidate
    raise DatasetError(f"no near-miss text left for {text!r}")


def _key_texts(rng: random.Random, group: _Group, taken: set[str]) -> None:
    if group.family == "overlay":
        group.texts = ["" for _ in group.videos]
        return
    for _ in range(200):
        text, shop = _make_key_text(rng, group.kind)
        if text not in taken:
            break
    else:
        raise DatasetError(f"ran out of distinct {group.kind} texts; make fewer videos")
    taken.add(text)
    group.shop = shop
    if group.family == "near-miss":
        other = near_miss(rng, text, taken)
        taken.add(other)
        group.texts = [text, other]
    else:
        group.texts = [text, text]


def _add_overlays(
    rng: random.Random,
    groups: list[_Group],
    pool: dict[str, str],
    claimed: dict[tuple[str, str], set[str]],
) -> None:
    """Persistent overlays beside the claimed ones: any pool text whose claimed scenes the
    video does not show (so claimed queries stay unique). Twins carry the same overlays."""
    for group in groups:
        for video in group.videos[:1] if group.family == "twin-swap" else group.videos:
            for kind, chance in OVERLAY_PROBABILITY.items():
                if kind in video.overlays or rng.random() >= chance:
                    continue
                options = [
                    text
                    for text, k in pool.items()
                    if k == kind and not claimed.get((group.split, text), set()) & set(video.scenes)
                ]
                if options:
                    video.overlays[kind] = rng.choice(options)
        if group.family == "twin-swap":
            group.videos[1].overlays = dict(group.videos[0].overlays)


def _plan_video(
    rng: random.Random,
    index: int,
    group: _Group,
    k: int,
    video: _Video,
    settings: TemporalSettings,
) -> TemporalPlan:
    """Shot timings (hard cuts on the frame grid) and the query target of one video."""
    n = len(video.scenes)
    lo = max(settings.min_seconds, n * settings.min_shot_seconds * 1.25)
    seconds = round(rng.uniform(lo, max(lo, settings.max_seconds)), 1)
    weights = [rng.uniform(0.3, 1.3) for _ in range(n)]
    spare = seconds - n * settings.min_shot_seconds
    cuts, total = [0.0], 0.0
    for weight in weights[:-1]:
        total += settings.min_shot_seconds + spare * weight / sum(weights)
        cuts.append(round(total, 1))
    cuts.append(seconds)
    shots = [
        Shot(
            start=cuts[i],
            end=cuts[i + 1],
            scene=scene,
            tint=(rng.randint(-20, 20), rng.randint(-20, 20), rng.randint(-20, 20)),
            variant=rng.randrange(1 << 30),
        )
        for i, scene in enumerate(video.scenes)
    ]
    return TemporalPlan(
        index=index,
        family=group.family,
        split=group.split,
        seconds=seconds,
        shots=shots,
        key_shot=video.scenes.index(video.key_scene),
        query_text=group.texts[k] or group.claim,
        kind=group.kind,
        shop=group.shop,
    )


# -- texts and occluders --------------------------------------------------------------------
@dataclass(frozen=True)
class _Look:
    """What a text looks like; where and when it shows is decided per video (`_place`)."""

    text: str
    kind: str
    size: int
    font: int
    fg: tuple[int, int, int]
    bg: tuple[int, int, int]
    blur: float
    cut: bool  # cut by the frame edge (a key text enters through it)
    key: bool


def _colors(rng: random.Random) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    bg = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
    light = sum(bg) / 3 > 127
    fg = tuple(rng.randint(0, 60) if light else rng.randint(200, 255) for _ in range(3))
    return fg, bg  # type: ignore[return-value]


def _key_look(rng: random.Random, text: str, kind: str) -> _Look:
    fg, bg = _colors(rng)
    blur = round(rng.uniform(0.5, 0.8), 2) if rng.random() < 0.15 else 0.0
    return _Look(
        text, kind, rng.randint(16, 24), rng.randrange(len(FONT_FILES)), fg, bg, blur,
        cut=rng.random() < 0.15, key=True,
    )  # fmt: skip


def _distractor_look(rng: random.Random, scene: str, avoid: set[str]) -> _Look:
    """A text that is no query's answer: a scene word, a common sign, or a made-up shop."""
    for _ in range(100):
        r = rng.random()
        if r < 0.4:
            text = rng.choice(STYLES[scene]["words"])
        elif r < 0.65:
            text = rng.choice(DISTRACTORS + BANNERS)
        else:
            text = f"{rng.choice(NAMES)} {rng.choice(rng.choice(list(SHOPS.values())))}"
        if text not in avoid:
            break
    fg, bg = _colors(rng)
    size = rng.randint(10, 12) if rng.random() < 0.3 else rng.randint(13, 22)
    blur = round(rng.uniform(1.0, 2.0), 2) if rng.random() < 0.3 else 0.0
    return _Look(
        text, "distractor", size, rng.randrange(len(FONT_FILES)), fg, bg, blur,
        cut=rng.random() < 0.25, key=False,
    )  # fmt: skip


def _fill_texts(
    rng: random.Random,
    groups: list[_Group],
    plans: list[TemporalPlan],
    taken: set[str],
    settings: TemporalSettings,
) -> None:
    """Texts per shot (twins: the same looks, the key scene's and the other's swapped),
    overlays, and the objects that pass in front of texts."""
    index = 0
    for group in groups:
        looks: dict[str, list[_Look]] = {}  # scene -> looks, shared by twins
        for k, video in enumerate(group.videos):
            plan = plans[index + k]
            if group.family != "twin-swap" or k == 0:
                looks = {}
                for scene in video.scenes:
                    has_key = scene == video.key_scene and bool(group.texts[k])
                    n = rng.randint(2, 3) if has_key else rng.randint(3, 4)
                    shot_looks: list[_Look] = []
                    if has_key:
                        shot_looks.append(_key_look(rng, group.texts[k], group.kind))
                    while len(shot_looks) < n + has_key:
                        avoid = taken | {look.text for look in shot_looks}
                        shot_looks.append(_distractor_look(rng, scene, avoid))
                    looks[scene] = shot_looks
                by_scene = looks
            else:  # the twin: the key text moves to this twin's key scene
                a, b = group.videos[0].key_scene, video.key_scene
                by_scene = {**looks, a: looks[b], b: looks[a]}
            for i, shot in enumerate(plan.shots):
                shot_looks = by_scene[shot.scene]
                bands = rng.sample(range(BANDS), len(shot_looks))
                for look, band in zip(shot_looks, bands, strict=True):
                    plan.texts.append(_place(rng, look, i, shot, band, settings))
                plan.occluders.extend(_occluders(rng, plan, i, settings))
            for kind, text in sorted(video.overlays.items()):
                plan.texts.append(_overlay(rng, text, kind, plan, settings))
            if group.family == "overlay":
                for item in plan.texts:
                    item.key = item.text == plan.query_text and bool(item.overlay)
        index += len(group.videos)


def _place(
    rng: random.Random, look: _Look, i: int, shot: Shot, band: int, settings: TemporalSettings
) -> TemporalText:
    """When and where a text shows in its shot: mostly on screen, drifting within its band;
    a cut text stays partly outside the frame (a key text enters through the edge)."""
    w = settings.width
    size = look.size
    while size > 9 and _panel_size(look.text, look.font, size)[0] > w * 0.8:
        size -= 1
    pw, ph = _panel_size(look.text, look.font, size)
    shot_length = shot.end - shot.start
    length = shot_length * (rng.uniform(0.6, 1.0) if look.key else rng.uniform(0.4, 1.0))
    start = shot.start + rng.uniform(0, shot_length - length)
    end = min(start + length, shot.end - 0.5 / settings.fps)  # off before the cut's frame
    length = end - start
    band_h = (BOTTOM - TOP) / BANDS
    dy = rng.uniform(-2, 2)
    y_lo = TOP + band * band_h + 1 + max(0.0, -dy * length)
    y_hi = TOP + (band + 1) * band_h - ph - 1 - max(0.0, dy * length)
    if y_hi < y_lo:
        dy, y_lo, y_hi = 0.0, TOP + band * band_h + 1, TOP + (band + 1) * band_h - ph - 1
    y = rng.uniform(y_lo, max(y_lo, y_hi))
    side = rng.choice((-1, 1))
    span = max(length, 0.1)
    if look.cut and look.key:  # enters through the edge, fully inside by its last frame
        out0, inside = rng.uniform(0.2, 0.5) * pw, w - pw - 4
        speed = min(max(rng.uniform(10, 30), (4 + out0) / span), (inside + out0) / span)
        x, dx = (-out0, speed) if side < 0 else (w - pw + out0, -speed)
    elif look.cut:  # stays a quarter to three quarters outside, drifting outwards
        out0 = rng.uniform(0.25, 0.5) * pw
        speed = min(rng.uniform(0, 4), (0.75 * pw - out0) / span)
        x, dx = (-out0, -speed) if side < 0 else (w - pw + out0, speed)
    else:
        dx = rng.uniform(-15, 15)
        if abs(dx) * length > w - pw - 8:
            dx = 0.0
        lo, hi = 4 + max(0.0, -dx * length), w - pw - 4 - max(0.0, dx * length)
        x = rng.uniform(lo, max(lo, hi))
    return TemporalText(
        text=look.text,
        start=round(start, 2),
        end=round(end, 2),
        x=x,
        y=y,
        dx=dx,
        dy=dy,
        size=size,
        font=look.font,
        fg=look.fg,
        bg=look.bg,
        key=look.key,
        shot=i,
        kind=look.kind,
        blur=look.blur,
    )


def _overlay(
    rng: random.Random, text: str, kind: str, plan: TemporalPlan, settings: TemporalSettings
) -> TemporalText:
    """A persistent overlay; a channel looks the same in every video (style seeded by text)."""
    style = random.Random(text)
    w, h = settings.width, settings.height
    font = style.choice((0, 2, 3))
    fg, bg = _colors(style)
    x, y, dx, size, alpha = 6.0, 5.0, 0.0, 14, 255
    if kind == "ticker":
        size, y = 12, h - 19.0
        bg = (style.randint(120, 200), style.randint(0, 40), style.randint(0, 60))
        fg = (255, 255, 255)
        x, dx = rng.uniform(w * 0.2, w * 0.5), -rng.uniform(8, 18)
    elif kind == "watermark":
        size, alpha, fg = 15, 120, (255, 255, 255)
        x = w - _panel_size(text, font, size)[0] - 4
    return TemporalText(
        text=text,
        start=0.0,
        end=plan.seconds,
        x=x,
        y=y,
        dx=dx,
        dy=0.0,
        size=size,
        font=font,
        fg=fg,
        bg=bg,
        overlay=kind,
        kind=kind,
        alpha=alpha,
    )


OCCLUDER_SIZE = {"person": (22, 34), "pole": (8, 14), "hand": (30, 44), "block": (24, 36)}


def _occluders(
    rng: random.Random, plan: TemporalPlan, i: int, settings: TemporalSettings
) -> list[Occluder]:
    """0-2 objects crossing the shot, each passing in front of one of its texts (the key text
    at most once) somewhere in the middle of the text's time on screen."""
    shot = plan.shots[i]
    texts = [t for t in plan.texts if t.shot == i]
    out = []
    for _ in range(rng.choice((0, 1, 1, 2))):
        keys = [t for t in texts if t.key]
        target = keys[0] if keys and rng.random() < 0.35 else rng.choice(texts)
        if target.key:
            texts = [t for t in texts if not t.key] or texts
        shape = rng.choice(STYLES[shot.scene]["occluders"])
        width = rng.uniform(*OCCLUDER_SIZE[shape])
        pw, ph = _panel_size(target.text, target.font, target.size)
        span = target.end - target.start
        t_c = rng.uniform(target.start + 0.2 * span, target.end - 0.2 * span)
        cx = target.x + target.dx * (t_c - target.start) + pw * rng.uniform(0.2, 0.8)
        dx = rng.choice((-1, 1)) * rng.uniform(60, 120)
        ty = target.y + target.dy * (t_c - target.start)
        if shape == "pole":
            y, height = 0.0, float(settings.height)
        elif shape == "person":
            y, height = ty - rng.uniform(8, 16), ph + rng.uniform(30, 60)
        elif shape == "hand":
            y, height = ty + ph * rng.uniform(0.2, 0.5), float(settings.height)
        else:
            y, height = ty - 4, ph + 8
        color = {
            "person": (rng.randint(20, 200), rng.randint(20, 200), rng.randint(20, 200)),
            "pole": (rng.randint(60, 110),) * 3,
            "hand": (rng.randint(200, 235), rng.randint(150, 185), rng.randint(120, 150)),
            "block": (rng.randint(180, 255), rng.randint(60, 220), rng.randint(0, 60)),
        }[shape]
        out.append(
            Occluder(
                shot=i,
                start=shot.start,
                end=round(shot.end - 0.5 / settings.fps, 2),
                x=cx - width / 2 - dx * (t_c - shot.start),
                y=y,
                dx=dx,
                width=width,
                height=height,
                shape=shape,
                color=color,  # type: ignore[arg-type]
            )
        )
    return out


def _partner_single_overlays(plans: list[TemporalPlan]) -> None:
    """An odd last overlay video's nearest wrong video: another carrier of its overlay."""
    for plan in plans:
        if plan.family == "overlay" and plan.partner < 0:
            for other in plans:
                if (
                    other is not plan
                    and other.split == plan.split
                    and any(t.overlay and t.text == plan.query_text for t in other.texts)
                ):
                    plan.partner = other.index
                    break


def _captions(rng: random.Random, plan: TemporalPlan) -> list[str]:
    """Queries naming the text and the scene on screen with it (train 2-3, test 1)."""
    n = 1 if plan.split == "test" else rng.randint(2, 3)
    phrases = STYLES[plan.shots[plan.key_shot].scene]["phrases"]
    return [
        template.format(text=plan.query_text, shop=plan.shop or "shop", scene=rng.choice(phrases))
        for template in rng.sample(TEMPLATES[plan.kind], n)
    ]


# -- rendering ------------------------------------------------------------------------------
Tint = Callable[[tuple[int, int, int]], tuple[int, int, int]]
BRICKS = [(170, 50, 35), (190, 70, 40), (150, 40, 30), (180, 60, 50), (160, 55, 45)]
SHOPFRONTS = [(250, 120, 90), (120, 190, 220), (240, 200, 80), (150, 210, 140), (230, 150, 200)]
SHIRTS = [(220, 40, 40), (40, 90, 220), (250, 200, 40), (40, 170, 90), (240, 240, 240)]


def _hash(*values: int) -> int:
    """A small deterministic integer hash (layouts that must not depend on frame order)."""
    x = 0x9E3779B9
    for v in values:
        x = ((x ^ (v & 0xFFFFFFFF)) * 0x85EBCA6B) & 0xFFFFFFFF
        x ^= x >> 13
    return x


def _street(d: ImageDraw.ImageDraw, s: Shot, t: float, w: int, h: int, c: Tint) -> None:
    """Brick facades under a blue sky, panning sideways."""
    d.rectangle([0, 0, w, h], fill=c((150, 190, 230)))
    pan = s.variant % 97 + t * 28
    first, offset = int(pan // 90), pan % 90
    for k in range(-1, w // 90 + 2):
        r = _hash(s.variant, first + k)
        x0 = k * 90 - offset
        top = h * (0.05 + (r % 14) / 100)
        d.rectangle([x0, top, x0 + 86, h * 0.8], fill=c(BRICKS[r % len(BRICKS)]))
        for row, wy in enumerate(range(int(top) + 10, int(h * 0.64), 24)):
            for col, wx in enumerate((x0 + 12, x0 + 50)):
                lit = (r >> (8 + row * 2 + col)) & 1
                d.rectangle(
                    [wx, wy, wx + 22, wy + 14], fill=c((235, 220, 150) if lit else (55, 65, 90))
                )
        d.rectangle([x0 + 30, h * 0.66, x0 + 56, h * 0.8], fill=c((70, 45, 35)))
    d.rectangle([0, h * 0.8, w, h], fill=c((145, 145, 140)))
    d.rectangle([0, h * 0.8, w, h * 0.82], fill=c((205, 205, 200)))


def _indoor(d: ImageDraw.ImageDraw, s: Shot, t: float, w: int, h: int, c: Tint) -> None:
    """A warm mall corridor in one-point perspective; shop fronts stream past."""
    vx, vy = w / 2 + s.variant % 41 - 20, h * 0.42
    d.rectangle([0, 0, w, h], fill=c((226, 230, 238)))
    d.polygon([(0, 0), (w, 0), (vx + 36, vy - 22), (vx - 36, vy - 22)], fill=c((248, 250, 255)))
    d.polygon([(0, h), (w, h), (vx + 36, vy + 22), (vx - 36, vy + 22)], fill=c((172, 182, 198)))
    d.rectangle([vx - 36, vy - 22, vx + 36, vy + 22], fill=c((255, 255, 255)))
    for k in range(6):
        z = (k / 6 + t * 0.22 + (s.variant % 13) / 13) % 1.0
        zz = 0.1 + z * z
        for side in (-1, 1):
            x = vx + side * (36 + (w / 2 + 40) * zz)
            shade = SHOPFRONTS[_hash(s.variant, k, side + 1) % len(SHOPFRONTS)]
            x2 = x - side * 50 * zz
            d.rectangle(
                [min(x, x2), vy - 10 - 45 * zz, max(x, x2), vy + 8 + 70 * zz], fill=c(shade)
            )
            top, bottom = vy - 22 - (vy - 22) * zz, vy + 22 + (h - vy - 22) * zz
            d.line([x, top, x, bottom], fill=(255, 255, 250), width=max(1, int(2 + 8 * zz)))
        ly = vy - 22 - (vy - 22) * zz * 0.9
        d.ellipse(
            [vx - 8 - 40 * zz, ly - 2 - 4 * zz, vx + 8 + 40 * zz, ly + 2 + 4 * zz],
            fill=(255, 255, 235),
        )


def _road(d: ImageDraw.ImageDraw, s: Shot, t: float, w: int, h: int, c: Tint) -> None:
    """Driving at night: lamps, lane marks and posts rush towards the camera."""
    hz = h * 0.42
    for k in range(6):
        d.rectangle(
            [0, k * hz / 6, w, (k + 1) * hz / 6 + 1], fill=c((10 + k * 4, 12 + k * 5, 30 + k * 8))
        )
    d.rectangle([0, hz, w, h], fill=c((22, 26, 20)))
    d.polygon([(w * 0.47, hz), (w * 0.53, hz), (w * 1.1, h), (-w * 0.1, h)], fill=c((48, 48, 54)))
    phase = (s.variant % 17) / 17
    for k in range(7):
        z = (k / 7 + t * 0.7 + phase) % 1.0
        z2 = min(1.0, z + 0.05)
        y0, y1 = hz + z * z * (h - hz), hz + z2 * z2 * (h - hz)
        a, b = 1 + z * 6, 1 + z2 * 6
        d.polygon(
            [(w / 2 - a, y0), (w / 2 + a, y0), (w / 2 + b, y1), (w / 2 - b, y1)],
            fill=(250, 205, 40),
        )
    for k in range(4):
        z = (k / 4 + t * 0.7 + phase + 0.1) % 1.0
        y, off, tall = hz + z * z * (h - hz), w * 0.05 + z * z * w * 0.75, 4 + z * z * 90
        for side in (-1, 1):
            x = w / 2 + side * off
            d.rectangle([x - 1 - z, y - tall, x + 1 + z, y], fill=(70, 70, 75))
            glow = 3 + z * 14
            d.ellipse([x - glow, y - tall - glow, x + glow, y - tall + glow], fill=(255, 175, 60))
    cx = w / 2 + math.sin(t * 0.7 + phase * 6) * 20
    d.rectangle([cx - 26, hz + 10, cx + 26, hz + 34], fill=(35, 35, 45))
    for side in (-1, 1):
        d.ellipse([cx + side * 20 - 5, hz + 16, cx + side * 20 + 5, hz + 24], fill=(255, 30, 30))
    d.rectangle([0, h * 0.9, w, h], fill=(10, 10, 12))
    d.arc([w * 0.28, h * 0.84, w * 0.72, h * 1.5], 190, 350, fill=(4, 4, 4), width=10)


def _sport(d: ImageDraw.ImageDraw, s: Shot, t: float, w: int, h: int, c: Tint) -> None:
    """A striped green pitch, panning slowly, with running players and a ball."""
    pan = s.variant % 60 + t * 12
    stripe = w / 8
    for k in range(-2, 10):
        x0 = k * stripe - pan % (2 * stripe)
        d.rectangle([x0, 0, x0 + stripe, h], fill=c((45, 150, 55) if k % 2 else (60, 170, 65)))
    mid = w / 2 - pan % w + (w if pan % w > w / 2 else 0)
    d.line([mid, 0, mid, h], fill=(240, 240, 240), width=2)
    d.ellipse([mid - 32, h / 2 - 32, mid + 32, h / 2 + 32], outline=(240, 240, 240), width=2)
    d.rectangle([4, 4, w - 4, h - 4], outline=(240, 240, 240), width=2)
    for k in range(8):
        phase = t * (0.8 + 0.1 * k) + k + s.variant % 7
        px = w / 2 + math.cos(phase) * w * 0.4
        py = h / 2 + math.sin(phase * 1.3) * h * 0.38
        color = (200, 30, 30) if k % 2 else (30, 60, 200)
        d.ellipse([px - 6, py - 6, px + 6, py + 6], fill=color)
    bx, by = w / 2 + math.sin(t * 2.1) * w * 0.3, h / 2 + math.cos(t * 1.7) * h * 0.3
    d.ellipse([bx - 4, by - 4, bx + 4, by + 4], fill=(255, 255, 255))


def _kitchen(d: ImageDraw.ImageDraw, s: Shot, t: float, w: int, h: int, c: Tint) -> None:
    """Looking down on a wooden counter: a cutting board, a chopping knife, a stirred pan."""
    d.rectangle([0, 0, w, h], fill=c((205, 110, 35)))
    for k, y in enumerate(range(-4, h, 11)):
        wobble = math.sin(k + s.variant % 7) * 3
        d.line([0, y + wobble, w, y - wobble], fill=c((172, 84, 24)), width=2)
    d.rounded_rectangle([w * 0.12, h * 0.18, w * 0.6, h * 0.88], radius=10, fill=c((232, 196, 140)))
    for k in range(6):
        vx = w * 0.18 + k * 18
        d.ellipse(
            [vx, h * 0.55, vx + 14, h * 0.55 + 14], fill=(210, 40, 30) if k % 2 else (90, 170, 60)
        )
    kx, lift = w * 0.2 + (t * 25) % (w * 0.3), abs(math.sin(t * 7)) * 12
    d.polygon(
        [
            (kx, h * 0.4 - lift),
            (kx + 70, h * 0.42 - lift),
            (kx + 70, h * 0.5 - lift),
            (kx, h * 0.5 - lift),
        ],
        fill=(200, 205, 210),
    )
    d.rectangle([kx + 70, h * 0.43 - lift, kx + 110, h * 0.49 - lift], fill=(40, 30, 25))
    cx, cy, r = w * 0.8, h * 0.5, h * 0.3
    d.ellipse([cx - r - 6, cy - r - 6, cx + r + 6, cy + r + 6], fill=(90, 90, 95))
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(40, 40, 42))
    for k in range(7):
        angle = t * 1.5 + k * 0.9
        fx, fy = cx + math.cos(angle) * r * 0.55, cy + math.sin(angle) * r * 0.55
        d.ellipse([fx - 6, fy - 6, fx + 6, fy + 6], fill=(240, 200, 60) if k % 2 else (220, 80, 40))


def _news(d: ImageDraw.ImageDraw, s: Shot, t: float, w: int, h: int, c: Tint) -> None:
    """A navy studio: screens and a turning globe behind an anchor at a desk."""
    d.rectangle([0, 0, w, h], fill=c((12, 35, 135)))
    for k in range(4):
        d.rectangle(
            [k * w / 4 + 6, h * 0.08, (k + 1) * w / 4 - 6, h * 0.55],
            outline=c((60, 100, 180)),
            width=2,
        )
    gx, gy, gr = w * 0.8, h * 0.32, h * 0.2
    d.ellipse([gx - gr, gy - gr, gx + gr, gy + gr], outline=(90, 150, 230), width=2)
    for k in range(3):
        squeeze = abs(math.cos(t * 0.8 + k))
        d.ellipse([gx - gr * squeeze, gy - gr, gx + gr * squeeze, gy + gr], outline=(90, 150, 230))
    ax, bob = w * 0.45 + s.variant % 40 - 20, math.sin(t * 2.2) * 2
    d.polygon(
        [(ax - 55, h * 0.78), (ax + 55, h * 0.78), (ax + 40, h * 0.52), (ax - 40, h * 0.52)],
        fill=(30, 30, 40),
    )
    d.polygon([(ax - 10, h * 0.52), (ax + 10, h * 0.52), (ax, h * 0.66)], fill=(235, 235, 240))
    d.ellipse([ax - 17, h * 0.27 + bob, ax + 17, h * 0.52 + bob], fill=(222, 178, 148))
    d.chord([ax - 18, h * 0.25 + bob, ax + 18, h * 0.41 + bob], 180, 360, fill=(50, 35, 25))
    d.rectangle([0, h * 0.72, w, h], fill=c((185, 192, 210)))
    d.rectangle([0, h * 0.72, w, h * 0.75], fill=(200, 30, 40))


def _game(d: ImageDraw.ImageDraw, s: Shot, t: float, w: int, h: int, c: Tint) -> None:
    """A purple retro game: neon grid floor, scrolling block platforms, a jumping sprite."""
    hz = h * 0.6
    for k in range(8):
        y0 = k * hz / 8
        d.rectangle([0, y0, w, y0 + hz / 8 + 1], fill=c((150 + k * 12, 20 + k * 6, 150 + k * 10)))
    d.rectangle([0, hz, w, h], fill=(15, 5, 30))
    for k in range(8):
        z = (k / 8 + t * 0.5) % 1.0
        d.line(
            [0, hz + z * z * (h - hz), w, hz + z * z * (h - hz)],
            fill=(255, 40, 200),
            width=1 + int(z * 2),
        )
    for k in range(-6, 7):
        d.line([w / 2 + k * 12, hz, w / 2 + k * 90, h], fill=(40, 230, 255), width=1)
    scroll = s.variant % 200 + t * 45
    for k in range(-1, w // 80 + 2):
        r = _hash(s.variant, int(scroll // 80) + k)
        x0, y0 = k * 80 - scroll % 80, h * (0.22 + (r % 30) / 100)
        for b in range(2 + r % 3):
            d.rectangle(
                [x0 + b * 16, y0, x0 + b * 16 + 15, y0 + 15],
                fill=(250, 200, 30),
                outline=(120, 60, 0),
            )
        d.ellipse([x0 + 20, y0 - 20, x0 + 30, y0 - 10], fill=(255, 240, 80))
    jump = abs(math.sin(t * 3.0)) * 40
    d.rectangle([w * 0.3, hz - 30 - jump, w * 0.3 + 16, hz - jump], fill=(230, 30, 40))


def _activity(d: ImageDraw.ImageDraw, s: Shot, t: float, w: int, h: int, c: Tint) -> None:
    """A sunny beach: sky, sea with rolling waves, sand, people jumping with a ball."""
    d.rectangle([0, 0, w, h * 0.22], fill=c((120, 195, 245)))
    d.ellipse([w * 0.82, h * 0.03, w * 0.82 + 24, h * 0.03 + 24], fill=(255, 240, 120))
    d.rectangle([0, h * 0.22, w, h * 0.68], fill=c((20, 95, 185)))
    for k in range(5):
        y = h * 0.25 + ((k * 0.09 + t * 0.04) % 0.42) * h
        for x in range(0, w, 24):
            d.arc([x, y - 3, x + 24, y + 3], 0, 180, fill=(235, 245, 255), width=2)
    d.rectangle([0, h * 0.68, w, h], fill=c((238, 212, 140)))
    ux = w * 0.1 + s.variant % 60
    d.polygon([(ux - 40, h * 0.78), (ux + 40, h * 0.78), (ux, h * 0.66)], fill=(230, 60, 50))
    d.line([ux, h * 0.66, ux, h * 0.98], fill=(90, 70, 50), width=3)
    for k in range(4):
        px = (w * (0.2 + k * 0.22) + t * 8 * (k - 1.5)) % w
        jump = abs(math.sin(t * 4 + k)) * 14
        py = h * 0.8 - jump
        d.ellipse([px - 6, py - 30, px + 6, py - 18], fill=(222, 178, 148))
        d.rectangle([px - 8, py - 18, px + 8, py + 6], fill=SHIRTS[(k + s.variant) % len(SHIRTS)])
        d.line([px - 5, py + 6, px - 8, py + 24], fill=(222, 178, 148), width=3)
        d.line([px + 5, py + 6, px + 8, py + 24], fill=(222, 178, 148), width=3)
    bx = w * 0.3 + (math.sin(t * 1.6) + 1) * w * 0.2
    by = h * 0.3 + abs(math.cos(t * 1.6)) * h * 0.15
    d.ellipse([bx - 6, by - 6, bx + 6, by + 6], fill=(255, 255, 255))


SCENE_DRAW = {
    "street": _street,
    "indoor": _indoor,
    "road": _road,
    "sport": _sport,
    "kitchen": _kitchen,
    "news": _news,
    "game": _game,
    "activity": _activity,
}


@lru_cache(maxsize=1024)
def _patch(
    text: str,
    font: int,
    size: int,
    fg: tuple[int, int, int],
    bg: tuple[int, int, int],
    blur: float,
    alpha: int,
) -> Image.Image:
    """The sign panel with its text (RGBA; no panel and see-through when alpha < 255)."""
    pw, ph = _panel_size(text, font, size)
    see_through = alpha < 255
    patch = Image.new("RGBA", (pw, ph), (0, 0, 0, 0) if see_through else (*bg, 255))
    face = _font(font, size)
    left, top, _, _ = face.getbbox(text)
    ImageDraw.Draw(patch).text((6 - left, 5 - top), text, font=face, fill=(*fg, alpha))
    if blur:
        patch = patch.filter(ImageFilter.GaussianBlur(blur))
    return patch


def _paste_text(image: Image.Image, item: TemporalText, t: float) -> None:
    x0, y0, _, _, _ = _text_box(item, t)
    patch = _patch(item.text, item.font, item.size, item.fg, item.bg, item.blur, item.alpha)
    image.paste(patch, (round(x0), round(y0)), patch)


def _draw_occluder(d: ImageDraw.ImageDraw, occ: Occluder, t: float) -> None:
    x, y, w, h = occ.x + occ.dx * (t - occ.start), occ.y, occ.width, occ.height
    if occ.shape == "person":
        d.ellipse([x + w * 0.2, y, x + w * 0.8, y + w * 0.6], fill=(222, 178, 148))
        d.rounded_rectangle([x, y + w * 0.55, x + w, y + h], radius=w / 4, fill=occ.color)
    elif occ.shape == "hand":
        d.rectangle([x + w * 0.25, y + w * 0.5, x + w * 0.75, y + h], fill=occ.color)
        d.ellipse([x, y, x + w, y + w * 0.9], fill=occ.color)
    elif occ.shape == "block":
        d.rectangle([x, y, x + w, y + h], fill=occ.color, outline=(40, 20, 0), width=2)
    else:
        d.rectangle([x, y, x + w, y + h], fill=occ.color)


def render_frame(plan: TemporalPlan, t: float, settings: TemporalSettings) -> Image.Image:
    """The frame at `t` s: the current shot's scene, its texts, the objects passing in front
    of them, then the overlays."""
    w, h = settings.width, settings.height
    image = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(image)
    i = plan.shot_at(t)
    shot = plan.shots[i]
    SCENE_DRAW[shot.scene](draw, shot, t - shot.start, w, h, lambda rgb: _clip(rgb, shot.tint))
    for item in plan.texts:
        if item.shot == i and item.start <= t <= item.end:
            _paste_text(image, item, t)
    for occ in plan.occluders:
        if occ.shot == i and occ.start <= t <= occ.end:
            _draw_occluder(draw, occ, t)
    for item in plan.texts:
        if item.overlay == "ticker":
            draw.rectangle([0, item.y - 2, w, h], fill=item.bg)
    for item in plan.texts:
        if item.overlay and item.start <= t <= item.end:
            _paste_text(image, item, t)
    return image


# -- the set --------------------------------------------------------------------------------
def generate(
    out: str | Path,
    n_videos: int,
    seed: int = 0,
    with_ocr_json: bool = False,
    settings: TemporalSettings | None = None,
    workers: int = 1,
    progress: bool = True,
) -> list[TemporalPlan]:
    """Write the temporal synthetic set to `out` (see the module docstring); return its plans."""
    settings = settings or TemporalSettings()
    check_settings(n_videos, settings)  # type: ignore[arg-type]
    plans = plan_videos(n_videos, seed, settings)
    check_families(plans)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_videos(out, plans, settings, with_ocr_json, workers, progress, render_frame)  # type: ignore[arg-type]
    write_textvr_files(out, plans, seed)
    _write_meta(out, plans, seed, settings)
    return plans


def family_counts(plans: list[TemporalPlan], split: str) -> dict[str, int]:
    """Queries (captions) per family in one split."""
    counts = dict.fromkeys(FAMILIES, 0)
    for plan in plans:
        if plan.split == split:
            counts[plan.family] += len(plan.captions)
    return counts


def check_families(plans: list[TemporalPlan]) -> None:
    """The promise of the docstring: once a split has >= 60 videos, every family holds at
    least 15% of its queries. A failure is a generator bug, raised as `DatasetError`."""
    for split in ("train", "test"):
        videos = sum(plan.split == split for plan in plans)
        counts = family_counts(plans, split)
        total = sum(counts.values())
        if videos < FAMILY_CHECK_MIN_VIDEOS:
            continue
        for family, count in counts.items():
            if count < MIN_FAMILY_SHARE * total:
                raise DatasetError(
                    f"{split}: the {family} family holds {count} of {total} queries "
                    f"(under {MIN_FAMILY_SHARE:.0%})"
                )


def caption_groups(plans: list[TemporalPlan]) -> dict[str, dict[str, str]]:
    """Test caption id (`<video id>#<k>`) -> {"group": family[, "twin": video id]}."""
    groups: dict[str, dict[str, str]] = {}
    for plan in plans:
        if plan.split != "test":
            continue
        for k in range(len(plan.captions)):
            entry = {"group": plan.family}
            if plan.family == "twin-swap":
                entry["twin"] = plans[plan.partner].rel_path
            groups[f"{plan.rel_path}#{k}"] = entry
    return groups


def _write_meta(
    out: Path, plans: list[TemporalPlan], seed: int, settings: TemporalSettings
) -> None:
    def path(index: int) -> str | None:
        return plans[index].rel_path if index >= 0 else None

    videos, queries = [], []
    for plan in plans:
        twin = path(plan.partner) if plan.family == "twin-swap" else None
        videos.append(
            {
                "path": plan.rel_path,
                "split": plan.split,
                "seconds": plan.seconds,
                "family": plan.family,
                "query_text": plan.query_text,
                "kind": plan.kind,
                "key_shot": plan.key_shot,
                "twin": twin,
                "partner": path(plan.partner),
                "shots": [
                    {"start": s.start, "end": s.end, "scene": s.scene, "domain": s.domain}
                    for s in plan.shots
                ],
                "texts": [asdict(t) for t in plan.texts],
                "occluders": [asdict(o) for o in plan.occluders],
            }
        )
        for k, caption in enumerate(plan.captions):
            query = {
                "id": f"{plan.rel_path}#{k}",
                "video": plan.rel_path,
                "split": plan.split,
                "caption": caption,
                "family": plan.family,
            }
            if twin:
                query["twin"] = twin
            queries.append(query)
    meta = {
        "profile": "temporal",
        "seed": seed,
        "settings": asdict(settings),
        "families": list(FAMILIES),
        "videos": videos,
        "queries": queries,
    }
    (out / "synth_meta.json").write_text(json.dumps(meta, indent=1))
    (out / "synth_groups.json").write_text(json.dumps(caption_groups(plans), indent=1))
