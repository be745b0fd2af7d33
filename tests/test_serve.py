"""`tcd serve`'s API with FastAPI's TestClient: hits equal `tcd search --json`, video details,
files served only from inside the dataset root, bad queries answered with a 4xx JSON error;
`tcd show` and `tcd search --queries` on the same work dir."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from heads.run_dir import RunDir

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

runner = CliRunner()
LINKED = "linked_out.mp4"  # the test video that is a symlink to a file outside the root


def served_work(synth_set: Path, root: Path) -> tuple[Path, Path, str]:
    """A copy of the synthetic set in which one test video is a symlink to a file outside the
    dataset root (the manifest records it as unreadable), with every stage run (Kwai OCR);
    returns (work dir, synth copy, the linked video's id)."""
    from pipeline.ocr import OcrSettings
    from pipeline.settings import PipelineSettings, save_settings
    from tests.test_stages import make_work, run_all

    synth = Path(shutil.copytree(synth_set, root / "synth"))
    tests = json.loads((synth / "TextVR_test.json").read_text())
    entry = tests[0]
    video = synth / "Video" / entry["path"]
    outside = root / "outside.mp4"
    shutil.copy(video, outside)
    linked = Path(entry["path"]).with_name(LINKED)
    (synth / "Video" / linked).symlink_to(outside)
    tests.append({**entry, "path": str(linked)})
    (synth / "TextVR_test.json").write_text(json.dumps(tests))
    work = make_work(synth, root)
    run_all(work)
    save_settings(work.path, PipelineSettings(ocr=OcrSettings(engine="kwai")))
    return work.path, synth, str(linked)


@pytest.fixture(scope="module")
def served(synth_set, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    return served_work(synth_set, root)


@pytest.fixture(scope="module")
def client(served):
    from cli.serve_app import create_app
    from cli.serve_cmd import build_service

    service = build_service(served[0])
    service.warm()
    return TestClient(create_app(service), base_url="http://localhost:8000")


def first_test_query(synth: Path) -> tuple[str, str]:
    entry = json.loads((synth / "TextVR_test.json").read_text())[1]
    return entry["captions_info"][0]["caption"], entry["path"]


def test_api_hits_equal_tcd_search_json(served, client):
    work, synth, linked = served
    query, target = first_test_query(synth)
    result = runner.invoke(app, ["search", "--work", str(work), query, "--json", "--top-k", "5"])
    assert result.exit_code == 0, result.output
    expected = json.loads(result.stdout)["results"]
    response = client.get("/api/search", params={"q": query, "top_k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["split"] == "test" and body["run"] == "zero-shot"
    hits = body["results"]
    assert [{k: v for k, v in h.items() if k not in ("thumbnail", "media")} for h in hits] == (
        expected
    )
    assert target in [hit["video"] for hit in hits]  # zero-shot: near the top, not always first
    assert {"S_to", "caption", "start", "end"} <= set(hits[0])
    assert linked not in {hit["video"] for hit in hits}  # its stages failed: never a result
    thumb = client.get(hits[0]["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    media = client.get(hits[0]["media"], headers={"Range": "bytes=0-99"})
    assert media.status_code == 206 and len(media.content) == 100
    scored = client.get("/api/search", params={"q": query, "min_score": hits[1]["score"]})
    assert [h["video"] for h in scored.json()["results"]] == [h["video"] for h in hits[:2]]


def test_failed_videos_never_appear_even_when_every_video_is_asked_for(served, client):
    work, synth, linked = served
    hits = client.get("/api/search", params={"q": "a sign", "top_k": 100}).json()["results"]
    n_test = len(json.loads((synth / "TextVR_test.json").read_text()))
    assert len(hits) == n_test - 1 and linked not in {hit["video"] for hit in hits}
    # ... and `tcd search` says how many it cannot return
    result = runner.invoke(app, ["search", "--work", str(work), "a sign", "--top-k", "1"])
    assert result.exit_code == 0, result.output
    assert f"1 video(s) of {n_test} in split 'test' have no features" in result.stderr


def test_blanks_around_a_query_do_not_count_toward_its_length(client):
    query = " " * 50 + "x" * 1000 + " " * 50
    assert client.get("/api/search", params={"q": query}).status_code == 200
    assert client.get("/api/search", params={"q": query + "x"}).status_code == 400


def test_video_details_and_tcd_show(served, client):
    work, synth, linked = served
    _, target = first_test_query(synth)
    details = client.get(f"/api/videos/{target}").json()
    assert details["video"]["id"] == target and details["media"].startswith("/media/")
    assert all(s["state"] == "done" for s in details["stages"].values())
    assert details["ocr_lines"] and len(details["windows"]) == 12
    times = [line["t"] for line in details["ocr_lines"]]
    assert times == sorted(times) and {"text", "score", "t", "box"} <= set(details["ocr_lines"][0])
    failed = client.get(f"/api/videos/{linked}").json()
    assert "outside the dataset root" in failed["error"] and failed["media"] is None
    assert failed["failed"] and failed["ocr_lines"] == []
    shown = runner.invoke(app, ["show", "--work", str(work), target])
    assert shown.exit_code == 0, shown.output
    assert "OCR lines (" in shown.output and "window captions (12)" in shown.output
    assert details["ocr_lines"][0]["text"] in shown.output
    shown = runner.invoke(app, ["show", "--work", str(work), linked])
    assert shown.exit_code == 0 and "failed" in shown.output
    unknown = runner.invoke(app, ["show", "--work", str(work), "no/such.mp4"])
    assert unknown.exit_code != 0 and "no video 'no/such.mp4'" in str(unknown.exception)


@pytest.mark.parametrize(
    "path",
    [
        "/media/../../etc/passwd",
        "/media/%2e%2e/%2e%2e/etc/passwd",
        "/media/%2Fetc%2Fpasswd",
        "/media//etc/passwd",
        "/thumbs/%2e%2e/%2e%2e/etc/passwd?t=1",
        "/media/no/such/video.mp4",
        "/api/videos/no/such/video.mp4",
        "/api/videos/%2e%2e/%2e%2e/etc/passwd",
    ],
)
def test_nothing_outside_the_manifest_is_served(client, path):
    response = client.get(path)
    assert response.status_code == 404 and response.json() == {"error": "not found"}
    assert "root:" not in response.text


def test_unknown_paths_and_methods_answer_in_the_api_error_form(client):
    assert client.get("/api/nosuch").json() == {"error": "not found"}
    response = client.post("/api/search?q=x")
    assert response.status_code == 405 and response.json() == {"error": "Method Not Allowed"}
    assert response.headers["allow"] == "GET"


def test_a_host_header_naming_another_host_is_refused(served, client):
    """DNS rebinding: a page whose name now points at 127.0.0.1 read the API and the videos
    (any Host was answered); a loopback name or the served host is answered, and every name
    where the server listens on all addresses."""
    from cli.serve_app import create_app

    evil = {"host": "attacker.example:8000"}
    for path in ("/api/info", "/api/search?q=EXIT", "/"):
        response = client.get(path, headers=evil)
        assert response.status_code == 400 and "unknown host 'attacker.example'" in response.text
    for name in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000"):
        assert client.get("/api/info", headers={"host": name}).status_code == 200
    anywhere = TestClient(create_app(_service(served[0]), host="0.0.0.0"))
    assert anywhere.get("/api/info", headers=evil).status_code == 200
    named = TestClient(create_app(_service(served[0]), "search.lab", ("proxy.lab",)))
    for name in ("search.lab:8000", "SEARCH.LAB.", "proxy.lab"):
        assert named.get("/api/info", headers={"host": name}).status_code == 200
    assert named.get("/api/info", headers=evil).status_code == 400


def _service(work: Path):
    from cli.serve_cmd import build_service

    return build_service(work)


def test_what_the_server_cannot_answer_is_a_json_5xx_and_media_answers_head(served, tmp_path):
    """A split whose features the settings no longer match was a 400 (the client's fault); a
    bug was a plain-text 500; HEAD on a video was a 405."""
    from cli.serve_app import create_app
    from pipeline.ocr import OcrSettings
    from pipeline.settings import CaptionSettings, PipelineSettings, save_settings

    work = Path(shutil.copytree(served[0], tmp_path / "work"))
    save_settings(
        work, PipelineSettings(ocr=OcrSettings(engine="kwai"), captions=CaptionSettings(xi=0.5))
    )
    service = _service(work)
    app = create_app(service)
    client = TestClient(app, base_url="http://localhost", raise_server_exceptions=False)
    response = client.get("/api/search", params={"q": "EXIT"})
    assert response.status_code == 503, response.text
    assert "cannot be searched: no ocr_text features" in response.json()["error"]

    def broken(video: str) -> dict:
        raise RuntimeError("a bug")

    service.details = broken
    video = next(iter(service._row))
    response = client.get(f"/api/videos/{video}")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error (RuntimeError); the server log has it"}
    response = client.head(f"/media/{video}")
    assert response.status_code == 200 and int(response.headers["content-length"]) > 0


def test_a_symlink_out_of_the_root_is_not_served(served, client):
    _, _, linked = served
    for path in (f"/media/{linked}", f"/thumbs/{linked}?t=1"):
        response = client.get(path)
        assert response.status_code == 404 and response.json() == {"error": "not found"}


def test_a_thumbnail_time_too_large_for_the_frame_index_is_a_json_400(client):
    for t in ("1e308", "-1e308", "nan"):  # t * 100 overflowed to inf: a plain-text 500
        response = client.get("/thumbs/any.mp4", params={"t": t})
        assert response.status_code == 400, response.text
        assert "t must be a number of seconds up to" in response.json()["error"]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"q": ""}, "the query is empty"),
        ({"q": "   "}, "the query is empty"),
        ({}, "the query is empty"),
        ({"q": "x" * 10_000}, "at most 1000"),
        ({"q": "a sign", "k": 0}, "k must be between"),
        ({"q": "a sign", "k": -5}, "k must be between"),
        ({"q": "a sign", "k": 10**12}, "k must be between"),
        ({"q": "a sign", "k": "many"}, "k:"),
        ({"q": "a sign", "top_k": 0}, "top_k must be between"),
        ({"q": "a sign", "top_k": 10**9}, "top_k must be between"),
        ({"q": "a sign", "min_score": "nan"}, "min_score"),
        ({"q": "a sign", "split": "nope"}, "no split 'nope'"),
    ],
)
def test_bad_queries_get_a_4xx_json_error(client, params, message):
    response = client.get("/api/search", params=params)
    assert 400 <= response.status_code < 500, response.text
    assert message in response.json()["error"]


def test_the_page_is_served_and_escapes_by_construction(client):
    page = client.get("/")
    assert page.status_code == 200 and "<title>tcd search</title>" in page.text
    assert "innerHTML" not in page.text  # every text is placed with textContent


def test_search_queries_file_writes_json_lines(served, tmp_path):
    work, synth, _ = served
    query, target = first_test_query(synth)
    listed = tmp_path / "queries.txt"
    listed.write_text(f"{query}\n\na sign\n")
    result = runner.invoke(app, ["search", "--work", str(work), "--queries", str(listed)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["query"] for line in lines] == [query, "a sign"]
    assert target in [hit["video"] for hit in lines[0]["results"]]
    as_json = tmp_path / "queries.json"
    as_json.write_text(json.dumps([query]))
    result = runner.invoke(app, ["search", "--work", str(work), "--queries", str(as_json)])
    assert result.exit_code == 0 and json.loads(result.stdout)["query"] == query
    both = runner.invoke(app, ["search", "--work", str(work), "q", "--queries", str(as_json)])
    assert both.exit_code != 0 and "not both" in str(both.exception)
    neither = runner.invoke(app, ["search", "--work", str(work)])
    assert neither.exit_code != 0 and "no query: give one" in str(neither.exception)


def test_a_queries_file_saved_with_a_byte_order_mark_reads_as_without(tmp_path):
    """Windows editors start UTF-8 files with a BOM: it stayed in the first query (and a
    JSON list failed to parse)."""
    from retrieval.search import read_queries

    for name, text in (("q.txt", "a sign\nOPEN\n"), ("q.json", '["a sign", "OPEN"]')):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())
        assert read_queries(path) == ["a sign", "OPEN"], name
    windows = tmp_path / "crlf.txt"  # lines end at "\n" (a "\r" before it dropped), not U+2028
    windows.write_bytes("a sign\r\nSALE\u2028TODAY\r\n".encode())
    assert read_queries(windows) == ["a sign", "SALE\u2028TODAY"]


def test_a_folder_without_captions_is_searched_zero_shot(served, client, synth_set, tmp_path):
    """`tcd data folder` with no table -> stages -> search: split `all`, no trained head."""
    from cache import WorkDir
    from pipeline.ocr import OcrSettings
    from pipeline.settings import PipelineSettings, save_settings
    from tests.test_stages import run_all

    work = tmp_path / "w"
    videos = ["data", "folder", "--videos", str(synth_set / "Video"), "--work", str(work), "-q"]
    result = runner.invoke(app, videos)
    assert result.exit_code == 0 and "videos: 12 added" in result.output, result.output
    assert WorkDir(work).status()["videos"]["by_split"] == {"all": 12}
    # imported OCR, one empty file: no scene text anywhere, and no OCR engine to run
    imported = tmp_path / "ocr"
    imported.mkdir()
    (imported / f"{sorted((synth_set / 'Video').rglob('*.mp4'))[0].stem}.jsonl").write_text("")
    ocr = OcrSettings(engine="import", import_dir=str(imported))
    run_all(WorkDir(work), ocr=ocr)
    save_settings(work, PipelineSettings(ocr=ocr))
    result = runner.invoke(app, ["search", "--work", str(work), "a sign", "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["results"]) == 10  # split `all`, run zero-shot
    # `tcd index` builds the split search reads (it defaulted to `test`, which has no video)
    result = runner.invoke(app, ["index", "--work", str(work), "--run", "zero-shot"])
    assert result.exit_code == 0 and "flat index of 12 videos" in result.output, result.output
    assert RunDir(work, "zero-shot").index_path("all").exists()
    # a run of another work dir with the same encoders is accepted by path, read only
    other_run = served[0] / "runs" / "zero-shot"
    listed = sorted(p.name for p in other_run.iterdir())
    result = runner.invoke(app, ["search", "--work", str(work), "--run", str(other_run), "sign"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in other_run.iterdir()) == listed  # nothing written there
    # its OCR (kwai) is not this work dir's (imported): said as such, not as settings changed
    assert "of another work dir was trained on other features" in result.stderr
    assert "tcd train" not in result.stderr
    # ... and refused, naming both, when its encoders differ
    settings = work / "settings.toml"
    settings.write_text(settings.read_text().replace('"minilm"', '"other-text-model"'))
    result = runner.invoke(app, ["search", "--work", str(work), "--run", str(other_run), "sign"])
    message = str(result.exception)
    assert result.exit_code != 0 and "'minilm'" in message and "'other-text-model'" in message
    # a path that holds no run says where it looked, and that paths are not the work dir's
    missing = ["search", "--work", str(work), "--run", "runs/nothing", "sign"]
    result = runner.invoke(app, missing)
    message = str(result.exception)
    assert "runs/nothing: no such run (no config.toml); --run runs/nothing is" in message
    assert "read from the current directory, not the work dir" in message
    assert "tcd train" not in message
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["data", "folder", "--videos", str(empty), "--work", str(work)])
    assert result.exit_code != 0 and "no video files" in str(result.exception)
