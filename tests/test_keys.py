import os

import pytest

from cache import content_key, text_key
from cache.keys import EDGE_BYTES
from tests.conftest import run_python


def test_content_key_sees_size_mtime_and_edges(tmp_path):
    path = tmp_path / "v.mp4"
    data = bytearray(os.urandom(3 * EDGE_BYTES))
    path.write_bytes(data)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    base = content_key(path)
    assert base == content_key(path)

    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    assert content_key(path) != base  # mtime

    for offset in (10, len(data) - 10):  # same size, same mtime, edited first or last MiB
        edited = bytearray(data)
        edited[offset] ^= 0xFF
        path.write_bytes(edited)
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
        assert content_key(path) != base

    path.write_bytes(data + b"x")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert content_key(path) != base  # size


def test_text_key():
    assert text_key("a sign") == text_key("a sign")
    assert text_key("a sign") != text_key("a sign ")


FOLDER_MANIFEST = """
import sys
from cache import WorkDir
from pipeline.datasets import read_folder
from pipeline.manifest import build_manifest
work = WorkDir(sys.argv[2], create=True)
build_manifest(work, read_folder(sys.argv[1]), progress=False)
videos = work.manifest.videos.read(["id", "error"])
print(dict(zip(videos["id"], videos["error"])))
"""


def test_a_fifo_named_like_a_video_is_an_unreadable_video_not_a_hang(tmp_path):
    """Reading a FIFO waits for a writer forever, holding the manifest lock."""
    (tmp_path / "vids").mkdir()
    (tmp_path / "vids" / "ok.mp4").write_bytes(b"")
    pipe = tmp_path / "vids" / "pipe.mp4"
    os.mkfifo(pipe)
    done = run_python(FOLDER_MANIFEST, str(tmp_path / "vids"), str(tmp_path / "w"), timeout=30)
    assert done.returncode == 0, done.stderr
    assert f"'pipe.mp4': '{pipe}: not a regular file'" in done.stdout
    with pytest.raises(OSError, match="not a regular file"):
        content_key(pipe)
    with pytest.raises(OSError, match="not a regular file"):
        content_key(tmp_path)
