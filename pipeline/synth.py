"""The synthetic TextVR-like set: short videos whose scene text and scene both matter.

`generate(out, n_videos, seed)` writes a TextVR-layout folder::

    out/Video/<Domain>/synth_00000.mp4         3-8 s, 384x216, 10 fps, H.264
    out/TextVR_train.json, TextVR_test.json    annotations (TEXTVR_FORMAT.md)
    out/TextVR_test_rand.json                  the test file with video blocks permuted
    out/Kwai_VideoOCR/<Domain>/synth_*.json    ground-truth OCR tracks (with_ocr_json=True)
    out/synth_meta.json                        per-video truth: scene, key text, intervals

Each video shows one of four scenes (street, sport, kitchen, road: distinct colours, shapes
and motion) with one *key text* on a sign, plate, scoreboard, banner or menu board, plus
distractor text, each visible over its own time interval and drifting slightly. Queries name
both the key text and the scene ("The bakery SUNRISE BREAD is on a busy street"). Built-in
hard negatives: pairs of videos sharing the key text in different scenes, many videos of the
same scene, distractors that are other videos' key texts, and key text shown in only part of
the video. Output is a pure function of (n_videos, seed, settings).

This is the `simple` profile of `tcd data synth`; the `temporal` profile (2-4 shots per video,
dense text, overlays, labelled hard-negative families) is `pipeline.synth_temporal`, which
writes its videos and annotations with this module's writer (`write_videos`,
`write_textvr_files`).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from cache.atomic import atomic_path
from pipeline.errors import DatasetError


@dataclass(frozen=True)
class SynthSettings:
    # 384 wide: the chroma rows (192 px) then fill whole 64-byte lines, so no uninitialised
    # padding reaches x264 and the encoded bytes are identical run to run (320 was not).
    width: int = 384
    height: int = 216
    fps: int = 10
    min_seconds: float = 3.0
    max_seconds: float = 8.0
    test_fraction: float = 1 / 3
    shared_text_fraction: float = 0.3  # share of videos in same-text / different-scene pairs
    partial_text_fraction: float = 0.3  # share of videos whose key text shows < half the time


# -- vocabulary -----------------------------------------------------------------------------
SCENES: dict[str, dict[str, Any]] = {
    "street": {
        "domain": "Street_View_Outdoor",
        "phrases": ["on a busy street", "along a city street", "in a shopping street"],
        "kinds": ["shop", "banner", "plate"],
    },
    "sport": {
        "domain": "Sports",
        "phrases": ["at a football match", "on a sports field", "during a game on the pitch"],
        "kinds": ["scoreboard", "banner", "shop"],
    },
    "kitchen": {
        "domain": "Cooking",
        "phrases": [
            "in a kitchen",
            "while someone cooks in a kitchen",
            "next to a kitchen counter",
        ],
        "kinds": ["menu", "shop", "banner"],
    },
    "road": {
        "domain": "Driving",
        "phrases": ["on the road while driving", "seen from a car on a highway", "on a motorway"],
        "kinds": ["plate", "banner", "shop"],
    },
}
SHOPS = {
    "bakery": ["BREAD", "BAKERY", "BUNS"],
    "cafe": ["COFFEE", "CAFE", "ESPRESSO"],
    "pharmacy": ["PHARMACY", "CHEMIST", "HEALTH"],
    "bookshop": ["BOOKS", "READERS", "PAGES"],
    "pizzeria": ["PIZZA", "SLICE", "OVEN"],
    "florist": ["FLOWERS", "BLOOM", "GARDEN"],
    "hotel": ["HOTEL", "INN", "SUITES"],
    "bank": ["BANK", "SAVINGS", "CREDIT"],
}
NAMES = (
    "SUNRISE GOLDEN BLUE SILVER ROYAL URBAN MAPLE CEDAR NORTH OCEAN RIVER STAR LUCKY "
    "GREEN PRIME METRO HAPPY ALPHA DELTA NOVA ORBIT PEARL RUBY TIGER EAGLE FALCON LOTUS "
    "PANDA COMET SUMMIT HARBOR VELVET AMBER CORAL IVORY JADE ONYX RAVEN SOLAR ZENITH"
).split()
TEAMS = "TIGERS LIONS WOLVES HAWKS BEARS SHARKS EAGLES BULLS RAMS FOXES JETS KINGS".split()
DISHES = "TOMATO SOUP|FISH TACOS|BEEF STEW|PAD THAI|LEMON CAKE|RAMEN|PANCAKES|CURRY RICE".split("|")
BANNERS = "BIG SALE|GRAND OPENING|WELCOME TO|SUMMER FEST|CITY MARATHON|FOOD MARKET".split("|")
DISTRACTORS = (
    "EXIT|OPEN|NO PARKING|STOP|SALE|PUSH|TAXI|BUS STOP|24H|FREE WIFI|ONE WAY|ENTRANCE|"
    "PULL|PARKING|TOILETS|CASH ONLY"
).split("|")
TEMPLATES = {
    "shop": [
        "The {shop} {text} is {scene}",
        "A sign for the {shop} {text} {scene}",
        "You can see the {shop} called {text} {scene}",
    ],
    "banner": [
        "A banner reading {text} hangs {scene}",
        "The banner says {text} {scene}",
        "An advertisement for {text} {scene}",
    ],
    "plate": [
        "A car with number plate {text} {scene}",
        "The licence plate {text} is visible {scene}",
        "A vehicle registered {text} {scene}",
    ],
    "scoreboard": [
        "The scoreboard shows {text} {scene}",
        "The score is {text} {scene}",
        "A board with the result {text} {scene}",
    ],
    "menu": [
        "A menu board lists {text} {scene}",
        "The menu offers {text} {scene}",
        "Today's special {text} is written {scene}",
    ],
}
FONT_FILES = [
    "DejaVuSans-Bold.ttf",
    "DejaVuSans.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif.ttf",
]


@dataclass
class TextItem:
    """One rendered text: what it says, when it shows, where, and how it looks."""

    text: str
    start: float
    end: float
    x: float
    y: float
    dx: float  # drift in pixels per second
    dy: float
    size: int
    font: int
    fg: tuple[int, int, int]
    bg: tuple[int, int, int]
    key: bool = False


@dataclass
class VideoPlan:
    index: int
    scene: str
    kind: str
    key_text: str
    seconds: float
    split: str
    captions: list[str]
    texts: list[TextItem] = field(default_factory=list)
    shop: str = ""
    tint: tuple[int, int, int] = (0, 0, 0)

    @property
    def rel_path(self) -> str:
        return f"{SCENES[self.scene]['domain']}/synth_{self.index:05d}.mp4"


# -- planning (cheap, sequential, all randomness lives here) ---------------------------------
def _key_text(rng: random.Random, kind: str) -> tuple[str, str]:
    """(text, shop type) for a key text of this kind."""
    if kind == "shop":
        shop = rng.choice(sorted(SHOPS))
        return f"{rng.choice(NAMES)} {rng.choice(SHOPS[shop])}", shop
    if kind == "plate":
        letters = "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(2))
        return f"{letters} {rng.randint(1000, 9999)}", ""
    if kind == "scoreboard":
        a, b = rng.sample(TEAMS, 2)
        return f"{a} {rng.randint(0, 5)}:{rng.randint(0, 5)} {b}", ""
    if kind == "menu":
        return f"{rng.choice(DISHES)} {rng.randint(3, 19)}.{rng.choice(['00', '50', '90'])}", ""
    return f"{rng.choice(BANNERS)} {rng.choice(NAMES)}", ""


def plan_videos(n_videos: int, seed: int, settings: SynthSettings) -> list[VideoPlan]:
    """Decide every video's scene, texts, timings and queries (deterministic per seed)."""
    rng = random.Random(seed)
    scenes = sorted(SCENES)
    plans: list[VideoPlan] = []
    used: set[str] = set()
    i = 0
    while i < n_videos:
        pair = i + 1 < n_videos and rng.random() < settings.shared_text_fraction
        group_scenes = rng.sample(scenes, 2) if pair else [rng.choice(scenes)]
        # a kind that every scene of the group allows, so one text fits all of them
        kinds = sorted(set.intersection(*(set(SCENES[s]["kinds"]) for s in group_scenes)))
        kind = rng.choice(kinds)
        for _ in range(100):
            text, shop = _key_text(rng, kind)
            if text not in used:
                break
        used.add(text)
        split = "test" if rng.random() < settings.test_fraction else "train"
        for scene in group_scenes:
            seconds = round(rng.uniform(settings.min_seconds, settings.max_seconds), 1)
            n_captions = 1 if split == "test" else rng.randint(2, 3)
            captions = [
                template.format(text=text, shop=shop, scene=rng.choice(SCENES[scene]["phrases"]))
                for template in rng.sample(TEMPLATES[kind], n_captions)
            ]
            tint = (rng.randint(-25, 25), rng.randint(-25, 25), rng.randint(-25, 25))
            plans.append(
                VideoPlan(i, scene, kind, text, seconds, split, captions, shop=shop, tint=tint)
            )
            i += 1
    key_texts = [p.key_text for p in plans]
    for plan in plans:
        plan.texts = _plan_texts(rng, plan, key_texts, settings)
    return plans


def _plan_texts(
    rng: random.Random, plan: VideoPlan, key_texts: list[str], settings: SynthSettings
) -> list[TextItem]:
    """The key text and 1-3 distractors, each in its own horizontal band (no overlaps)."""
    seconds = plan.seconds
    n_distractors = rng.randint(1, 3)
    bands = rng.sample(range(4), 1 + n_distractors)
    if rng.random() < settings.partial_text_fraction:
        length = seconds * rng.uniform(0.25, 0.45)
    else:
        length = seconds * rng.uniform(0.6, 1.0)
    start = rng.uniform(0, seconds - length)
    items = [_text_item(rng, plan.key_text, start, length, bands[0], settings, key=True)]
    for band in bands[1:]:
        text = rng.choice(DISTRACTORS)
        if rng.random() < 0.3:  # another video's key text, to mislead a text-only search
            text = rng.choice([k for k in key_texts if k != plan.key_text] or [text])
        length = seconds * rng.uniform(0.2, 0.7)
        begin = rng.uniform(0, seconds - length)
        items.append(_text_item(rng, text, begin, length, band, settings, key=False))
    return items


def _text_item(
    rng: random.Random,
    text: str,
    start: float,
    length: float,
    band: int,
    settings: SynthSettings,
    key: bool,
) -> TextItem:
    """Style and place one text so that it stays inside the frame while it drifts."""
    w, h = settings.width, settings.height
    size = rng.randint(16, 24) if key else rng.randint(13, 20)
    font = rng.randrange(len(FONT_FILES))
    while size > 10 and _panel_size(text, font, size)[0] > w - 8:
        size -= 1
    pw, ph = _panel_size(text, font, size)
    dx, dy = rng.uniform(-6, 6), rng.uniform(-1, 1)
    if abs(dx) * length > w - pw - 8:
        dx = 0.0
    lo, hi = 4 + max(0.0, -dx * length), w - pw - 4 - max(0.0, dx * length)
    band_h = h / 4
    y_lo = band * band_h + 2 + max(0.0, -dy * length)
    y_hi = max(y_lo, (band + 1) * band_h - ph - 2 - max(0.0, dy * length))
    bg = tuple(rng.randint(0, 255) for _ in range(3))
    light = sum(bg) / 3 > 127
    fg = tuple(rng.randint(0, 60) if light else rng.randint(200, 255) for _ in range(3))
    return TextItem(
        text=text,
        start=round(start, 2),
        end=round(start + length, 2),
        x=rng.uniform(lo, max(lo, hi)),
        y=rng.uniform(y_lo, y_hi),
        dx=dx,
        dy=dy,
        size=size,
        font=font,
        fg=fg,  # type: ignore[arg-type]
        bg=bg,  # type: ignore[arg-type]
        key=key,
    )


# -- rendering ------------------------------------------------------------------------------
RenderFn = Callable[[Any, float, SynthSettings], Image.Image]


@lru_cache(maxsize=64)
def _font(index: int, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A DejaVu font shipped with matplotlib; Pillow's own font if matplotlib is absent."""
    spec = find_spec("matplotlib")
    if spec and spec.origin:
        path = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / FONT_FILES[index]
        if path.exists():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size)


def _clip(color: tuple[int, ...], tint: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + t)) for c, t in zip(color, tint, strict=True))  # type: ignore[return-value]


def _draw_scene(draw: ImageDraw.ImageDraw, plan: VideoPlan, t: float, w: int, h: int) -> None:
    c = lambda rgb: _clip(rgb, plan.tint)  # noqa: E731
    seed = plan.index * 7919
    if plan.scene == "street":
        draw.rectangle([0, 0, w, h * 0.35], fill=c((150, 190, 225)))
        offset = (t * 18) % 80  # the camera pans along the facades
        for k in range(-1, w // 60 + 2):
            shade = 90 + (seed + k * 37) % 90
            x0 = k * 80 - offset
            top = h * (0.08 + ((seed + k * 13) % 20) / 100)
            draw.rectangle([x0, top, x0 + 74, h * 0.8], fill=c((shade, shade - 20, shade - 40)))
            for wy in range(int(top) + 8, int(h * 0.75), 18):
                for wx in (x0 + 10, x0 + 40):
                    draw.rectangle([wx, wy, wx + 14, wy + 9], fill=c((60, 70, 90)))
        draw.rectangle([0, h * 0.8, w, h], fill=c((120, 120, 120)))
    elif plan.scene == "sport":
        for k in range(8):
            shade = (40, 150, 50) if k % 2 else (50, 165, 60)
            draw.rectangle([k * w / 8, 0, (k + 1) * w / 8, h], fill=c(shade))
        draw.line([w / 2, 0, w / 2, h], fill=(240, 240, 240), width=2)
        draw.ellipse(
            [w / 2 - 30, h / 2 - 30, w / 2 + 30, h / 2 + 30], outline=(240, 240, 240), width=2
        )
        for k in range(6):  # players run around
            phase = t * (0.8 + 0.1 * k) + k
            px = w / 2 + math.cos(phase) * w * 0.35
            py = h / 2 + math.sin(phase * 1.3) * h * 0.35
            color = (200, 30, 30) if k % 2 else (30, 60, 200)
            draw.ellipse([px - 5, py - 5, px + 5, py + 5], fill=color)
        bx, by = w / 2 + math.sin(t * 2.1) * w * 0.3, h / 2 + math.cos(t * 1.7) * h * 0.3
        draw.ellipse([bx - 3, by - 3, bx + 3, by + 3], fill=(255, 255, 255))
    elif plan.scene == "kitchen":
        shake = math.sin(t * 3) * 2
        for ty in range(0, int(h * 0.6), 20):
            for tx in range(0, w, 20):
                draw.rectangle([tx + shake, ty, tx + 18 + shake, ty + 18], fill=c((235, 225, 200)))
        draw.rectangle([0, h * 0.6, w, h], fill=c((140, 90, 50)))
        for k in range(3):
            px = 50 + k * 100 + shake
            draw.ellipse([px - 22, h * 0.62, px + 22, h * 0.62 + 26], fill=(50, 50, 55))
            steam = (t * 20 + k * 15) % 40
            draw.ellipse(
                [px - 6, h * 0.55 - steam, px + 6, h * 0.55 - steam + 12], fill=(225, 225, 230)
            )
    else:  # road
        draw.rectangle([0, 0, w, h * 0.4], fill=c((170, 200, 230)))
        draw.rectangle([0, h * 0.4, w, h], fill=c((70, 140, 60)))
        draw.polygon([(w * 0.45, h * 0.4), (w * 0.55, h * 0.4), (w, h), (0, h)], fill=(80, 80, 85))
        for k in range(6):  # lane marks rush toward the viewer
            z = ((k / 6) + t * 0.5) % 1.0
            y0, y1 = h * 0.4 + z * z * h * 0.6, h * 0.4 + min(1.0, z + 0.06) ** 2 * h * 0.6
            draw.polygon(
                [
                    (w / 2 - 1 - z * 4, y0),
                    (w / 2 + 1 + z * 4, y0),
                    (w / 2 + 1 + z * 5, y1),
                    (w / 2 - 1 - z * 5, y1),
                ],
                fill=(240, 240, 240),
            )


def _panel_size(text: str, font: int, size: int) -> tuple[int, int]:
    """Width and height of the sign panel around `text` (margins 6 px wide, 5 px high)."""
    left, top, right, bottom = _font(font, size).getbbox(text)
    return right - left + 12, bottom - top + 10


def _text_box(item: TextItem, t: float) -> tuple[float, float, float, float, Any]:
    x = item.x + item.dx * (t - item.start)
    y = item.y + item.dy * (t - item.start)
    pw, ph = _panel_size(item.text, item.font, item.size)
    return x, y, x + pw, y + ph, _font(item.font, item.size)


def render_frame(plan: VideoPlan, t: float, settings: SynthSettings) -> Image.Image:
    image = Image.new("RGB", (settings.width, settings.height))
    draw = ImageDraw.Draw(image)
    _draw_scene(draw, plan, t, settings.width, settings.height)
    for item in plan.texts:
        if item.start <= t <= item.end:
            x0, y0, x1, y1, font = _text_box(item, t)
            draw.rectangle([x0, y0, x1, y1], fill=item.bg)
            left, top, _, _ = font.getbbox(item.text)
            draw.text((x0 + 6 - left, y0 + 5 - top), item.text, font=font, fill=item.fg)
    return image


def _ocr_tracks(plan: VideoPlan, settings: SynthSettings) -> dict[str, Any]:
    """Kwai-format ground-truth OCR: one track per text item, frame index -> box + 2 zeros."""
    tracks: dict[str, Any] = {}
    n_frames = int(round(plan.seconds * settings.fps))
    for k, item in enumerate(plan.texts):
        frames = {}
        for f in range(n_frames):
            t = f / settings.fps
            if item.start <= t <= item.end:
                x0, y0, x1, y1, _ = _text_box(item, t)
                box = [x0, y0, x1, y0, x1, y1, x0, y1]
                frames[str(f)] = [round(v, 1) for v in box] + [0, 0]
        if frames:
            tracks[str(k)] = {"text": item.text, "score": 1.0, "tracks": frames}
    return tracks


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range RGB -> planar YUV 4:2:0, laid out as PyAV's `yuv420p` array.

    Done in numpy because FFmpeg's swscale path was seen to give run-to-run differences in
    the encoded bytes; with defined input, single-threaded x264 output is identical per seed.
    """
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    h, w = y.shape
    u = u.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    v = v.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    planes = np.concatenate([y.ravel(), u.ravel(), v.ravel()])
    return np.clip(np.round(planes), 0, 255).astype(np.uint8).reshape(h * 3 // 2, w)


def write_video(
    plan: Any, path: Path, settings: SynthSettings, render: RenderFn | None = None
) -> None:
    """Encode the video with H.264 (one encoder thread, so bytes are identical per seed).

    `render(plan, t, settings)` draws the frame at `t` seconds (default: `render_frame`); any
    plan with a `seconds` attribute will do (the temporal profile passes its own renderer).
    """
    render = render or render_frame
    n_frames = int(round(plan.seconds * settings.fps))
    # a killed generator leaves no half-written .mp4 (the suffix tells PyAV the container)
    with atomic_path(path, suffix=".mp4") as tmp, av.open(str(tmp), "w") as container:
        stream = container.add_stream(
            "libx264",
            rate=settings.fps,
            options={"crf": "20", "preset": "veryfast", "threads": "1"},
        )
        stream.width, stream.height, stream.pix_fmt = settings.width, settings.height, "yuv420p"
        # PyAV otherwise picks its own thread count, and threaded x264 output varies run to run
        stream.codec_context.thread_count = 1
        stream.codec_context.thread_type = "NONE"
        for f in range(n_frames):
            rgb = np.asarray(render(plan, f / settings.fps, settings))
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(rgb), format="yuv420p")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _write_one(args: tuple[Any, Path, SynthSettings, bool, RenderFn | None]) -> None:
    plan, out, settings, with_ocr_json, render = args
    write_video(plan, out / "Video" / plan.rel_path, settings, render)
    if with_ocr_json:
        ocr_path = out / "Kwai_VideoOCR" / Path(plan.rel_path).with_suffix(".json")
        ocr_path.parent.mkdir(parents=True, exist_ok=True)
        ocr_path.write_text(json.dumps(_ocr_tracks(plan, settings)))


def generate(
    out: str | Path,
    n_videos: int,
    seed: int = 0,
    with_ocr_json: bool = False,
    settings: SynthSettings | None = None,
    workers: int = 1,
    progress: bool = True,
) -> list[VideoPlan]:
    """Write the synthetic set to `out` (see the module docstring) and return its plans."""
    settings = settings or SynthSettings()
    check_settings(n_videos, settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_videos(n_videos, seed, settings)
    write_videos(out, plans, settings, with_ocr_json, workers, progress)
    _write_annotations(out, plans, seed, settings)
    return plans


def check_settings(n_videos: int, settings: SynthSettings) -> None:
    """Refuse sets the generator cannot make (or cannot make byte-identical per seed)."""
    if n_videos < 2:
        raise DatasetError("the synthetic set needs at least 2 videos")
    if settings.width < 320 or settings.height < 180 or settings.fps < 10:
        raise DatasetError("synthetic videos must be at least 320x180 at 10 fps")
    if settings.width % 128 or settings.height % 2:
        raise DatasetError(
            "synthetic video width must be a multiple of 128 and height even "
            "(byte-identical H.264 output per seed needs it)"
        )


def write_videos(
    out: Path,
    plans: list[Any],
    settings: SynthSettings,
    with_ocr_json: bool,
    workers: int,
    progress: bool,
    render: RenderFn | None = None,
) -> None:
    """Write every plan's video (and its ground-truth OCR JSON) with `workers` processes.

    `render` (see `write_video`) must be a module-level function: it travels to the workers.
    """
    jobs = [(plan, out, settings, with_ocr_json, render) for plan in plans]
    bar = dict(total=len(jobs), desc="synth", unit="video", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(tqdm(pool.map(_write_one, jobs, chunksize=4), **bar))
    else:
        for job in tqdm(jobs, **bar):
            _write_one(job)


def _write_annotations(
    out: Path, plans: list[VideoPlan], seed: int, settings: SynthSettings
) -> None:
    write_textvr_files(out, plans, seed)
    meta = {
        "seed": seed,
        "settings": asdict(settings),
        "videos": [
            {
                "path": p.rel_path,
                "scene": p.scene,
                "kind": p.kind,
                "key_text": p.key_text,
                "split": p.split,
                "seconds": p.seconds,
                "texts": [asdict(t) for t in p.texts],
            }
            for p in plans
        ],
    }
    (out / "synth_meta.json").write_text(json.dumps(meta, indent=1))


def write_textvr_files(out: Path, plans: list[Any], seed: int) -> None:
    """TextVR_train.json, TextVR_test.json and the scrambled TextVR_test_rand.json.

    A plan needs `rel_path`, `captions`, `seconds` and `split`."""

    def entry(plan: Any) -> dict[str, Any]:
        return {
            "path": plan.rel_path,
            "captions_info": [
                {"caption": text, "caption_info": {"duration": plan.seconds, "desc_id": k}}
                for k, text in enumerate(plan.captions)
            ],
            "videos_info": {
                "source": "synthetic",
                "split": plan.split,
                "Kwai_OCR": str(Path(plan.rel_path).with_suffix(".json")),
            },
        }

    for split in ("train", "test"):
        entries = [entry(p) for p in plans if p.split == split]
        (out / f"TextVR_{split}.json").write_text(json.dumps(entries, indent=1))
        if split == "test":  # the scrambled form: captions stay, video blocks are permuted
            order = list(range(len(entries)))
            random.Random(seed + 1).shuffle(order)
            rand = [
                {**entries[j], "captions_info": entries[i]["captions_info"]}
                for i, j in enumerate(order)
            ]
            (out / "TextVR_test_rand.json").write_text(json.dumps(rand, indent=1))
