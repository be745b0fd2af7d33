"""The OCR stage: every text line of every sampled frame, per video.

Sampled frames (`ocr_sample_times`): the T segment centres that captions and encode use,
always, plus frames at `ocr.fps`, so every caption window holds at least its centre's sample
at any xi. The ocr group of a decoding engine is therefore keyed by T too (`StageGroups`).

Engines: `rapidocr` (default; PP-OCR det/rec ONNX models bundled in the wheel, CPU or the CUDA
provider when onnxruntime-gpu is installed), `paddleocr` (optional; local model dirs), `import`
(reads OCR files of any spotter, no decoding: `pipeline.ocr_import`) and `kwai` (the import of
TextVR's Kwai_VideoOCR JSON, under its old name and cache key).

Cache layout of group `stages/ocr/<key>` (one chunk per row):
    lines    str   JSON list of {"text", "score", "box": [[x, y] x 4], "t": seconds, "track"}
    n_lines  int32 number of lines
    warning  str   why the row's frames are not all real ('' if they are: see `read_frames`)
`track` is the engine's track id where it has one (imports) and -1 otherwise.

Report phases: decoding frames (and reading imported OCR files) is read time, engine calls compute,
loading the engine setup.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cache import UNREADABLE_VIDEO, Shard, StageGroup, WorkDir
from pipeline.ocr_import import (
    TIME_DECIMALS,
    Line,
    OcrError,
    annotation_paths,
    line_time,
    read_imported_ocr,
    read_kwai_ocr,  # noqa: F401 (its old home, for existing callers)
    require_some_file,
)
from pipeline.settings import (
    ENGINE_READS,
    CaptionSettings,
    OcrSettings,
    PipelineSettings,
    StageGroups,
    gate_mode,
    import_format,
    resolve_settings,
    samples_frames,
)
from pipeline.stage import OVER, StageClock, StageReport, guarded, run_stage
from pipeline.video import Decoder, ocr_times, read_frames, require_decoder, segment_centres


def ocr_sample_times(duration: float, settings: OcrSettings, frames: int) -> np.ndarray:
    """The times (s, sorted) a decoding engine reads in a video of `duration` s.

    The `frames` (T) segment centres that captions and encode use (`segment_centres`), always,
    whatever `max_frames`; then the samples at `settings.fps` (`ocr_times`), thinned uniformly
    to the `max_frames - T` places the centres leave (none when `max_frames <= T`). A sample
    on a centre's millisecond is that centre. So a video gets at most max(max_frames, T)
    frames, and every caption window, centred on its segment centre, holds a sample at any xi.
    """
    centres = segment_centres(duration, frames)
    others = ocr_times(duration, settings.fps, max(0, settings.max_frames - frames))
    on_centre = np.isin(np.round(others, TIME_DECIMALS), np.round(centres, TIME_DECIMALS))
    return np.sort(np.concatenate([centres, others[~on_centre]]))


LATE_LINE_S = 0.5  # an imported line this far past a video's end is reported (a warning)


def run_ocr(
    work: WorkDir,
    settings: OcrSettings,
    batch_size: int = 8,
    decoder: str = Decoder.auto,
    retry_failed: bool = False,
    progress: bool = True,
    shard: Shard | None = None,
    captions: CaptionSettings | None = None,
    threads: int = 1,
) -> StageReport:
    """Run OCR on every pending video of the manifest (or of this shard's rows).

    `captions` gives T (`captions.frames`), whose segment centres are read besides the
    `ocr.fps` samples (`ocr_sample_times`) and which keys the group; by default the work
    dir's saved settings (`W/settings.toml`) give it, as they give a stage command's.
    `threads`: onnxruntime's intra-op threads per engine (`RapidOcrEngine`)."""
    if samples_frames(settings):
        require_decoder(decoder)
        if captions is None:
            captions = resolve_settings(work.path).captions
    captions = captions or CaptionSettings()  # imports: T keys nothing (`StageGroups`)
    frames = captions.frames
    group = StageGroups.resolve(work, PipelineSettings(ocr=settings, captions=captions)).ocr
    imported = import_format(settings)  # None for an engine that decodes frames
    if imported:
        require_some_file(settings, work)  # refused before anything is stored

    readers: list[Any] = []

    def produce(rows: np.ndarray, clock: StageClock) -> Iterator[tuple[int, Any]]:
        # read under the manifest lock `run_stage` holds, as `rows` were chosen (read before
        # it, a `tcd data` in between gave rows out of range, or old paths under new keys)
        videos = work.manifest.videos.read(["path", "fps", "duration", "error"])
        files = annotation_paths(settings, work) if imported else []
        with clock.setting_up():  # only when there is work: loading the models takes seconds
            reader = None if imported else make_reader(settings, threads)
            readers.append(reader)
        for row in rows:
            video = {name: values[row] for name, values in videos.items()}

            def compute(video: dict[str, Any] = video, row: int = int(row)) -> dict[str, Any]:
                warnings: list[str] = []
                if imported:
                    lines = read_imported_ocr(files[row], float(video["fps"]), imported)
                    if files[row] is None or not files[row].is_file():
                        warnings.append(f"no OCR file ({files[row] or 'none named'}): no text")
                    duration = float(video["duration"])
                    late = sum(line["t"] > duration + LATE_LINE_S for line in lines)
                    if duration > 0 and late:  # no window holds them: times in milliseconds?
                        warnings.append(
                            f"{late} of {len(lines)} OCR lines lie after the video's end "
                            f"({duration:g} s) and reach no caption: are its times in seconds?"
                        )
                else:
                    if video["error"]:
                        raise OcrError(UNREADABLE_VIDEO + str(video["error"]))
                    if hasattr(reader, "start_video"):
                        reader.start_video()
                    lines = spot_video(
                        reader,
                        video["path"],
                        ocr_sample_times(float(video["duration"]), settings, frames),
                        batch_size,
                        decoder,
                        clock,
                        warnings.append,
                    )
                return {
                    "lines": json.dumps(lines, ensure_ascii=False),
                    "n_lines": len(lines),
                    "warning": "; ".join(warnings),
                }

            yield guarded(int(row), compute)

    arrays = {
        "lines": ((), str, ""),
        "n_lines": ((), "int32", 0),
        "warning": ((), str, ""),
    }

    def figures() -> dict[str, float]:
        """The share of frames (and boxes) a gate read rather than reused, this run."""
        counts = getattr(readers[0], "counts", None) if readers else None
        if counts is None or not counts.frames:
            return {}
        shares = {"frames_read_share": counts.frames_read / counts.frames}
        if counts.frames_regional:  # frames detected in their changed regions only
            shares["frames_regional_share"] = counts.frames_regional / counts.frames
        if counts.area_detected:  # a gate that runs the detector (not "frame")
            shares["detected_area_share"] = counts.area_detected / counts.frames
        # what the shares are over, so shards' and Ray tasks' merge (`merge_figures`)
        shares |= {OVER: counts.frames, f"{OVER}boxes_": counts.boxes}
        if counts.boxes:
            shares["boxes_read_share"] = counts.boxes_read / counts.boxes
            for reason, n in counts.read_because.items():  # why boxes were recognised
                shares[f"boxes_read_{reason}_share"] = n / counts.boxes
        return shares

    return run_stage(work, group, arrays, produce, retry_failed, progress, shard, figures)


def read_lines(group: StageGroup, row: int) -> list[Line]:
    """The OCR lines cached for one video row."""
    return json.loads(str(group.group["lines"][row]) or "[]")


# -- engines --------------------------------------------------------------------------------
_ENGINES: dict[tuple[Any, ...], Any] = {}  # per process: each engine loads once


def make_engine(settings: OcrSettings, threads: int = 1) -> Any:
    """The decoding engine `settings` name, loaded once per process (a Ray actor or an
    `extract` run reuses it across calls): one per engine settings, so gate variants (a
    benchmark's loop) share it."""
    reads = tuple(getattr(settings, name) for name in ENGINE_READS.get(settings.engine, ()))
    key = (settings.engine, reads, threads)
    if key not in _ENGINES:
        if settings.engine == "rapidocr":
            _ENGINES[key] = RapidOcrEngine(settings, threads)
        elif settings.engine == "paddleocr":
            _ENGINES[key] = PaddleOcrEngine(settings, threads)
        else:
            raise OcrError(f"unknown OCR engine {settings.engine!r}")
    return _ENGINES[key]


def make_reader(settings: OcrSettings, threads: int = 1) -> Any:
    """What reads a video's frames: the engine itself (`ocr.reuse = "off"`) or a temporal
    gate around it (`pipeline.ocr_reuse`); a gate's `start_video()` is called per video.
    "frame+boxes" (the default) over an engine that reads whole frames only (paddleocr) is
    the frame gate; "boxes" there is refused."""
    from pipeline.ocr_reuse import BoxGate, FrameGate  # OpenCV: only where a gate is built

    engine = make_engine(settings, threads)
    mode, whole_frames = gate_mode(settings), not hasattr(engine, "detect")
    if mode == "frame+boxes" and whole_frames:  # an engine gate_mode does not name
        mode = "frame"
    if mode == "frame":
        return FrameGate(engine, settings.reuse_frame_diff, settings.reuse_block_px)
    if mode in ("boxes", "frame+boxes"):
        if whole_frames:
            raise OcrError(
                f'ocr.reuse = "{settings.reuse}" needs an engine with separate detection and '
                f'recognition (rapidocr), not {settings.engine}; use "frame" or "off"'
            )
        frame_diff = settings.reuse_frame_diff if mode == "frame+boxes" else None
        return BoxGate(
            engine,
            settings.reuse_iou,
            settings.reuse_diff,
            frame_diff,
            settings.reuse_shift,
            settings.reuse_edge,
            settings.reuse_frame_texts,
            settings.reuse_regions,
            settings.reuse_block_px,
        )
    return engine


class RapidOcrEngine:
    """rapidocr with its bundled PP-OCR models; frames are read one image at a time.

    onnxruntime runs `threads` intra-op threads (1 measured faster than 2 on 2 cores:
    parallelise by processes, `--shard` or `--executor ray`); it ignores OMP_NUM_THREADS,
    so the count is always set here. `detect` and `recognize` are the two halves of a call,
    for the "boxes" gate (`pipeline.ocr_reuse.BoxGate`).
    """

    def __init__(self, settings: OcrSettings, threads: int = 1):
        try:
            import onnxruntime
            from rapidocr import RapidOCR
        except ImportError as exc:
            raise OcrError(f"the rapidocr engine needs rapidocr and onnxruntime ({exc})") from None
        cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        self.engine = RapidOCR(
            params={
                "Global.log_level": "critical",
                "Global.use_cls": False,  # scene text here is upright; the classifier costs ~20%
                "Det.limit_side_len": settings.det_limit_side,
                "Det.limit_type": "min",
                "Rec.rec_batch_num": settings.rec_batch,
                "EngineConfig.onnxruntime.use_cuda": cuda,
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
        )
        self._det_sizes: dict[tuple[int, int], tuple[int, ...]] = {}

    def __call__(self, frames: np.ndarray) -> list[list[tuple[str, float, list]]]:
        out = []
        for frame in frames:
            result = self.engine(np.ascontiguousarray(frame[..., ::-1]))  # RGB -> BGR
            texts = result.txts or ()
            boxes = result.boxes if result.boxes is not None else ()
            out.append(
                [
                    (str(t), float(s), np.asarray(b, dtype=float).reshape(4, 2).tolist())
                    for t, s, b in zip(texts, result.scores or (), boxes, strict=False)
                ]
            )
        return out

    def detect(
        self, frame: np.ndarray, regions: list[tuple[int, int, int, int]] | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One RGB frame's text boxes (N x 4 x 2, frame pixels) and the crops the recogniser
        reads, as a whole call makes them. With `regions` ((x0, y0, x1, y1) frame pixels),
        the detector runs on those parts of the frame only, each at the scale the whole
        frame gets, so it costs about their area (`pipeline.ocr_reuse`: the changed parts);
        a box is clipped to its region. A frame rapidocr would rescale (not
        `detects_in_place`) is detected whole whatever `regions` says."""
        from rapidocr.main import RapidOCRError
        from rapidocr.utils.process_img import map_boxes_to_original

        image = np.ascontiguousarray(frame[..., ::-1])
        if regions is not None and self.detects_in_place(image.shape):
            return self._detect_regions(image, regions)
        resized, record = self.engine.preprocess_img(image)
        try:
            crops, detected = self.engine.detect_and_crop(resized, record)
        except RapidOCRError:  # no text found
            return np.zeros((0, 4, 2)), []
        boxes = map_boxes_to_original(detected.boxes, record, *image.shape[:2])
        return np.asarray(boxes, dtype=float).reshape(-1, 4, 2), list(crops)

    def crop(self, frame: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
        """The crops the recogniser reads for `boxes` (N x 4 x 2, frame pixels) of one RGB
        frame, cut from the image the detector sees as `detect` cuts them (a box the gate
        carries onto a frame it did not detect, read again there: `BoxGate`)."""
        from rapidocr.utils.process_img import apply_vertical_padding

        image = np.ascontiguousarray(frame[..., ::-1])
        if self.detects_in_place(image.shape):  # as `_detect_regions` cuts them
            return list(self.engine.crop_text_regions(image, boxes.astype(np.float32)))
        engine = self.engine
        resized, record = engine.preprocess_img(image)
        if engine.cfg.Global.use_vertical_padding:
            resized, record = apply_vertical_padding(
                resized, record, engine.width_height_ratio, engine.min_height
            )
        scale = record["preprocess"]
        pad = record.get("padding_1", {"top": 0, "left": 0})
        seen = np.array(boxes, dtype=np.float64)  # `map_boxes_to_original`, undone
        seen[..., 0] = seen[..., 0] / scale["ratio_w"] + pad["left"]
        seen[..., 1] = seen[..., 1] / scale["ratio_h"] + pad["top"]
        return list(engine.crop_text_regions(resized, seen.astype(np.float32)))

    def detects_in_place(self, shape: tuple[int, ...]) -> bool:
        """Whether rapidocr detects a frame of this shape as it is (neither shrunk under its
        max_side_len nor padded for being flat), so a region's pixels are the detector's."""
        height, width = shape[:2]
        engine, ratio = self.engine, self.engine.width_height_ratio
        return (
            engine.min_side_len <= min(height, width)
            and max(height, width) <= engine.max_side_len
            and height > engine.min_height
            and (ratio == -1 or width / height <= ratio)
        )

    def _detect_regions(
        self, image: np.ndarray, regions: list[tuple[int, int, int, int]]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """`detect` on parts of a BGR image. Each region is widened, into the image, to a
        window the detector sees as a multiple of 32 pixels at the whole image's scale (so
        nothing is padded: `DetPreProcess` resizes a whole image to such sides); the boxes
        whose centre lies in the region are kept, clipped to it, as rapidocr keeps boxes
        over 3 pixels a side."""
        import cv2  # with rapidocr, as the gate that asks for regions

        detector = self.engine._load_det_model()  # rapidocr's TextDetector (pinned version)
        prepare = detector.get_preprocess()
        height, width = image.shape[:2]
        if (height, width) not in self._det_sizes:  # the whole image's size for the detector
            self._det_sizes[(height, width)] = prepare.resize(
                np.zeros((height, width, 1), np.uint8)
            ).shape
        full_h, full_w = self._det_sizes[(height, width)][:2]
        found = []
        for x0, y0, x1, y1 in regions:
            left, right, size_w = detector_window(x0, x1, width, full_w)
            top, bottom, size_h = detector_window(y0, y1, height, full_h)
            part = cv2.resize(image[top:bottom, left:right], (size_w, size_h))
            tensor = prepare.permute(prepare.normalize(part))[None].astype(np.float32)
            shape = (bottom - top, right - left)  # boxes in the window's pixels
            boxes, _ = detector.postprocess_op(detector.session(tensor), shape)
            for box in np.asarray(boxes, dtype=float).reshape(-1, 4, 2) + (left, top):
                centre_x, centre_y = box.mean(axis=0)
                if not (x0 <= centre_x < x1 and y0 <= centre_y < y1):
                    continue  # outside the region: the gate keeps what it had there
                box[:, 0], box[:, 1] = box[:, 0].clip(x0, x1), box[:, 1].clip(y0, y1)
                if np.ptp(box[:, 0]) > 3 and np.ptp(box[:, 1]) > 3:
                    found.append(box)
        if not found:
            return np.zeros((0, 4, 2)), []
        boxes = detector.sorted_boxes(np.stack(found).astype(np.float32))
        crops = self.engine.crop_text_regions(image, boxes)
        return boxes.astype(float), list(crops)

    def recognize(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """Text and score of each crop, in `rec_batch` batches; ('', 0) for a crop a whole
        call would drop (blank text or a score under rapidocr's text_score)."""
        result = self.engine.recognize_txt(crops)
        minimum = self.engine.text_score
        return [
            (str(t), float(s)) if str(t).strip() and s >= minimum else ("", 0.0)
            for t, s in zip(result.txts, result.scores, strict=True)
        ]


def detector_window(start: int, stop: int, size: int, detector_size: int) -> tuple[int, int, int]:
    """Along one axis of an image of `size` pixels that the detector sees as `detector_size`
    (a multiple of 32): the window [a, b) holding [start, stop) whose detector length is a
    multiple of 32, widened forward unless the image ends there, and that length."""
    scale = detector_size / size
    length = min(detector_size, -(-round((stop - start) * scale) // 32) * 32)
    pixels = min(size, round(length / scale))
    first = max(0, min(start, size - pixels))
    return first, first + pixels, length


class PaddleOcrEngine:
    """PaddleOCR (optional extra). Offline it needs local detection and recognition model dirs.
    On CPUs it runs `threads` inference threads (`--threads`, as rapidocr; PaddleOCR's own
    default, 10 in its 3.x sources, ignores the machine and a Ray actor's CPU share)."""

    def __init__(self, settings: OcrSettings, threads: int = 1):
        try:
            from paddleocr import PaddleOCR
        except ImportError:
            raise OcrError(
                "the paddleocr engine needs the optional packages paddleocr and paddlepaddle "
                "(see requirements-gpu.txt); the default engine is rapidocr"
            ) from None
        missing = [
            name
            for name, path in (
                ("ocr.paddle_det_dir", settings.paddle_det_dir),
                ("ocr.paddle_rec_dir", settings.paddle_rec_dir),
            )
            if not path or not Path(path).is_dir()
        ]
        if missing:
            raise OcrError(
                f"paddleocr cannot download models offline: set {' and '.join(missing)} to local "
                "model folders (e.g. --set ocr.paddle_det_dir=/models/PP-OCRv5_server_det)"
            )
        self.engine = PaddleOCR(
            text_detection_model_dir=settings.paddle_det_dir,
            text_recognition_model_dir=settings.paddle_rec_dir,
            use_doc_orientation_classify=False,
            use_doc_unwarping=False,
            use_textline_orientation=False,
            cpu_threads=threads,
        )

    def __call__(self, frames: np.ndarray) -> list[list[tuple[str, float, list]]]:
        out = []
        for result in self.engine.predict(list(frames[..., ::-1])):
            out.append(
                [
                    (str(t), float(s), np.asarray(p, dtype=float).reshape(4, 2).tolist())
                    for t, s, p in zip(
                        result["rec_texts"], result["rec_scores"], result["rec_polys"], strict=False
                    )
                ]
            )
        return out


def spot_video(
    engine: Any,
    path: str,
    times: np.ndarray,
    batch_size: int,
    decoder: str,
    clock: StageClock,
    warn: Callable[[str], None],
) -> list[Line]:
    """Decode the frames at `times` (sorted; `ocr_sample_times`) batch by batch (streaming)
    and OCR them; `warn` hears of a truncated stream, `clock` times the engine calls."""
    lines: list[Line] = []
    for batch_times, frames in read_frames(path, times, batch_size, decoder, warn):
        with clock.computing():
            found_per_frame = engine(frames)
        for t, found in zip(batch_times, found_per_frame, strict=True):
            for text, score, box in found:
                lines.append(
                    {
                        "text": text,
                        "score": round(score, 4),
                        "box": box,
                        "t": line_time(t),
                        "track": -1,
                    }
                )
    return lines
