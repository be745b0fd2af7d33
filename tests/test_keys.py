import os

from cache import content_key, text_key
from cache.keys import EDGE_BYTES


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
