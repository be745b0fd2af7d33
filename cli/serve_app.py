"""The served search page (`tcd serve`): one process holds the run, each split's index and
video encodings (`retrieval.search.Searcher`) and the text encoder, and answers

- `GET /api/search?q=&top_k=&k=&split=&min_score=`: the typed hits `tcd search --json` prints,
  each with `thumbnail` (a frame at the matching window) and `media` (the video file) URLs;
- `GET /api/videos/{id}`: what the caches hold for the video (`cli.video_details`);
- `GET /media/{id}`: the video file (range requests, so a player can seek);
- `GET /thumbs/{id}?t=`: one JPEG frame at `t` seconds;
- `GET /`: the page (cli/static/index.html: search with `?q=`, a video with `?video=`).

Like the CLI it wires `pipeline` (query encoder, frames, OCR lines) to `retrieval`, so it sits
at the CLI's level. Files are served only for manifest ids, and only when the file resolves
inside the dataset root (or, for a linked video folder, beside its own link, the manifest's
rule); anything else is a 404 that says only "not found". Errors, an unknown path's
included, are JSON `{"error": ...}` with a 4xx status, or a 5xx where the server cannot
answer (a split whose features are missing: 503; a bug: 500). Requests must name the served
host or a loopback name in their Host header (`create_app`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from cache import WorkDir
from cache.errors import TcdError
from cli.common import present_splits
from retrieval.run_split import RunSplit
from retrieval.search import QueryEncoder, Searcher, check_query

STATIC = Path(__file__).resolve().parent / "static"
MAX_QUERY_CHARS = 1000
MAX_TOP_K = 1000
MAX_K = 10_000
THUMB_WIDTH = 320
MAX_THUMB_S = 1e6  # a thumbnail's time at most (11 days; its centiseconds must fit an int)
THUMB_CACHE = 512  # thumbnails kept in memory


class ApiError(TcdError):
    """A request the API answers with an error: one message and its status (4xx: the request
    is refused; 503: the server cannot answer it)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class SearchService:
    """What the server holds: the work dir, one `Searcher` per split (opened on first use),
    the query encoder and where its files may come from."""

    work: Path
    run: str
    default_split: str
    open_split: Callable[[str], RunSplit]  # split name -> the run on its features
    encode: QueryEncoder
    frame_at: Callable[[str, float], np.ndarray | None]  # path, seconds -> frame or None
    details: Callable[[str], dict[str, Any]]  # video id -> cli.video_details.video_details
    log: Callable[[str], None] = print
    _searchers: dict[str, Searcher] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        store = WorkDir(self.work)
        self.store = store
        videos = store.manifest.videos.read(["id", "path", "present", "split", "duration"])
        self.splits = present_splits(store)
        self._row = {str(v): i for i, v in enumerate(videos["id"])}
        self._videos = videos
        self.root = Path(str(store.manifest.attrs.get("root", ""))).resolve()
        self.thumbnail = functools.lru_cache(maxsize=THUMB_CACHE)(self._thumbnail)

    def searcher(self, split: str) -> Searcher:
        """The split's searcher, opened once (index loaded or rebuilt, videos encoded)."""
        if split not in self.splits:
            known = ", ".join(self.splits) or "none"
            raise ApiError(f"no split {split!r} in this work dir (splits: {known})", 404)
        with self._lock:
            if split not in self._searchers:
                try:
                    self._searchers[split] = Searcher.open(self.open_split(split), self.log)
                except TcdError as exc:  # the work dir's state, not the request: a 5xx
                    raise ApiError(f"split {split!r} cannot be searched: {exc}", 503) from None
            return self._searchers[split]

    def warm(self) -> None:
        """Open the default split and load the text encoder before the first request."""
        self.searcher(self.default_split)
        self.encode(["warm up"])

    def search(
        self, q: str, split: str | None, top_k: int, k: int, min_score: float | None
    ) -> dict[str, Any]:
        """The hits as JSON: `tcd search --json`'s fields plus `thumbnail` and `media` URLs."""
        query = check_query(q)  # (blanks around it count for nothing)
        if len(query) > MAX_QUERY_CHARS:
            raise ApiError(f"the query has {len(query)} characters; at most {MAX_QUERY_CHARS}")
        split = split or self.default_split
        searcher = self.searcher(split)
        with self._lock:  # one query at a time: torch and FAISS use every core already
            hits = searcher.search(query, self.encode, top_k=top_k, k=k, min_score=min_score)
        results = []
        for hit in hits:
            at = hit.start if hit.start is not None else 0.0
            middle = at if hit.end is None else (at + hit.end) / 2
            results.append(
                {
                    **hit.to_json(),
                    "thumbnail": f"/thumbs/{quote(hit.video)}?t={middle:.2f}",
                    "media": f"/media/{quote(hit.video)}",
                }
            )
        return {"query": query, "split": split, "run": self.run, "results": results}

    def video_file(self, video_id: str) -> Path | None:
        """The file of a present manifest video, if it may be served; None otherwise."""
        row = self._row.get(video_id)
        if row is None or not self._videos["present"][row] or not str(self.root):
            return None
        path = Path(str(self._videos["path"][row]))
        if not path.is_absolute() or not path.is_file():
            return None
        target = path.resolve()
        inside_root = target.is_relative_to(self.root) and path.absolute().is_relative_to(self.root)
        # a linked video folder is fine (the manifest allows it); a file link out is not
        beside_link = path.is_relative_to(self.root) and target.is_relative_to(
            path.parent.resolve()
        )
        return target if inside_root or beside_link else None

    def _thumbnail(self, video_id: str, centiseconds: int, width: int) -> bytes | None:
        path = self.video_file(video_id)
        if path is None:
            return None
        duration = float(self._videos["duration"][self._row[video_id]])
        frame = self.frame_at(str(path), min(centiseconds / 100, max(duration - 0.05, 0.0)))
        if frame is None:
            return None
        image = Image.fromarray(frame).convert("RGB")
        if image.width > width:
            image = image.resize((width, round(image.height * width / image.width)))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
        return buffer.getvalue()


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _not_found() -> JSONResponse:
    return _error(404, "not found")


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
ANY_ADDRESS = ("0.0.0.0", "::", "")


def host_name(header: str) -> str:
    """The name in a Host header (or a host setting), without its port, case or trailing dot
    (`[::1]:8000` -> `::1`, `Search.Lab.` -> `search.lab`)."""
    if header.startswith("["):
        name = header[1:].split("]", 1)[0]
    else:
        name = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    return name.lower().rstrip(".")


class KnownHosts:
    """ASGI middleware: a request whose Host header names none of `names` gets a JSON 400
    (a web page whose name a DNS rebinding points at this machine would otherwise read the
    API, the videos and their paths). `names` None: any name (served on every address)."""

    def __init__(self, app: Any, names: set[str] | None):
        self.app, self.names = app, names

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and self.names is not None:
            headers = dict(scope.get("headers") or ())
            name = host_name(headers.get(b"host", b"").decode("latin-1"))
            if name not in self.names:
                shown = ", ".join(sorted(self.names))
                await _error(
                    400, f"unknown host {name!r}: this server answers {shown} (--allow-host)"
                )(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    service: SearchService, host: str = "127.0.0.1", allow_hosts: tuple[str, ...] = ()
) -> FastAPI:
    """The FastAPI app over a service (tests build one around a small work dir), served on
    `host`: requests must name it, a loopback name or one of `allow_hosts` (a reverse
    proxy's name) in their Host header; any name where it is served on every address."""
    app = FastAPI(title="tcd search", docs_url=None, redoc_url=None, openapi_url=None)
    names = {*LOOPBACK_NAMES, *(host_name(h) for h in (host, *allow_hosts))}
    app.add_middleware(KnownHosts, names=None if host in ANY_ADDRESS else names)
    _answer_errors_as_json(app)
    _add_api_routes(app, service)
    _add_file_routes(app, service)
    return app


def _answer_errors_as_json(app: FastAPI) -> None:
    """Every error the API gives is `{"error": message}` with its status."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for problem in exc.errors():
            where = ".".join(str(p) for p in problem.get("loc", ())[1:]) or "request"
            parts.append(f"{where}: {problem.get('msg', 'invalid')}")
        return _error(400, "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # an unknown path or method: the API's error form, not FastAPI's {"detail": ...}
        if exc.status_code == 404:
            return _not_found()
        return _error(exc.status_code, exc.detail, exc.headers)  # a 405 keeps its Allow

    @app.exception_handler(ApiError)
    async def refused(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, str(exc))

    @app.exception_handler(TcdError)
    async def tcd_error(_: Request, exc: TcdError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(Exception)
    async def failed(_: Request, exc: Exception) -> JSONResponse:
        # a bug or the machine (uvicorn logs the traceback): the API's form, status 500
        return _error(500, f"internal error ({type(exc).__name__}); the server log has it")


def _add_api_routes(app: FastAPI, service: SearchService) -> None:
    """The JSON API: /api/search, /api/info, /api/videos/ID."""

    @app.get("/api/search")
    def api_search(
        q: str = "",
        top_k: int = 10,
        k: int = 100,
        split: str | None = None,
        min_score: float | None = None,
    ) -> dict[str, Any]:
        if not 1 <= top_k <= MAX_TOP_K:
            raise ApiError(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
        if not 1 <= k <= MAX_K:
            raise ApiError(f"k must be between 1 and {MAX_K}, got {k}")
        return service.search(q, split, top_k, k, min_score)

    @app.get("/api/info")
    def api_info() -> dict[str, Any]:
        return {"run": service.run, "split": service.default_split, "splits": service.splits}

    @app.get("/api/videos/{video_id:path}", response_model=None)
    def api_video(video_id: str) -> dict[str, Any] | JSONResponse:
        if video_id not in service._row:
            return _not_found()
        details = service.details(video_id)
        details["media"] = f"/media/{quote(video_id)}" if service.video_file(video_id) else None
        return details


def _add_file_routes(app: FastAPI, service: SearchService) -> None:
    """The page (/), the videos (/media/ID) and their thumbnails (/thumbs/ID)."""
    page = (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.api_route("/media/{video_id:path}", methods=["GET", "HEAD"], response_model=None)
    def media(video_id: str) -> FileResponse | JSONResponse:
        path = service.video_file(video_id)
        return _not_found() if path is None else FileResponse(path)

    @app.get("/thumbs/{video_id:path}", response_model=None)
    def thumb(video_id: str, t: float = 0.0, w: int = THUMB_WIDTH) -> Response:
        if not abs(t) <= MAX_THUMB_S or not 16 <= w <= 1280:  # (NaN fails too)
            raise ApiError(
                f"t must be a number of seconds up to {MAX_THUMB_S:g} and w between 16 and 1280"
            )
        jpeg = service.thumbnail(video_id, max(int(round(t * 100)), 0), w)
        if jpeg is None:
            return _not_found()
        cache = {"Cache-Control": "max-age=3600"}
        return Response(jpeg, media_type="image/jpeg", headers=cache)


@contextlib.contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0):
    """Serve `app` with uvicorn in a background thread (tests, benchmarks, the screenshot);
    yields the base URL. `port=0` picks a free port."""
    import socket

    import uvicorn

    if port == 0:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server did not start on {host}:{port} in {timeout:.0f} s")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
