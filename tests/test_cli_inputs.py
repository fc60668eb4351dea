"""What the command line reads: regular files only, and no image whose decoding or resizing would
take unbounded memory. Such files are skipped by name, the rest explained, the exit status 1."""

import contextlib
import json
import os
import struct
import threading
import zlib

import pytest
from PIL import Image

from gradex import cli, images


def _png(path, width, height, rows: bytes | None = None):
    """A PNG written chunk by chunk: IHDR says ``width`` x ``height`` (RGB, 8 bits); ``rows`` is
    the raw scanline data, or None for a file that stops after a few bytes of it."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    data = b"\x89PNG\r\n\x1a\n" + chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    )
    if rows is None:
        data += chunk(b"IDAT", zlib.compress(b"\x00" * 4))
    else:
        data += chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(data)


def _explain(folder, out):
    return cli.main(["explain", str(folder), "--out", str(out), "--no-gradual"])


def test_images_beyond_the_size_limits_are_skipped_by_name(tmp_path, capsys):
    photos = tmp_path / "in"
    photos.mkdir()
    Image.new("RGB", (64, 64), (90, 120, 200)).save(photos / "a_good.png")
    # 2x400 pixels: the resize of the short side to 224 would make it 224x44,800.
    Image.new("RGB", (2, 400), (200, 10, 10)).save(photos / "strip.png")
    out = tmp_path / "out"
    assert _explain(photos, out) == 1
    err = capsys.readouterr().err
    assert "strip.png: 2x400 pixels, an aspect ratio over the limit of 50:1" in err
    report = json.loads((out / "results.json").read_text())
    assert [r["panel"] for r in report["images"]] == ["a_good.gradex.png"]
    assert [s["file"].rsplit("/", 1)[1] for s in report["skipped"]] == ["strip.png"]
    assert "limit of 50:1" in report["skipped"][0]["reason"]


def test_the_limits_are_checked_from_the_header_before_decoding(tmp_path):
    # Headers only, no pixel data: refused for their size, which decoding would never reach.
    thin = tmp_path / "thin.png"
    _png(thin, 1, 30000)
    with pytest.raises(images.ImageError, match=r"thin.png: 1x30000 pixels, an aspect ratio over"):
        images.load_rgb(thin)
    big = tmp_path / "big.png"
    _png(big, 9500, 9500)  # 90,250,000 pixels: between PIL's warning and its error
    with pytest.raises(
        images.ImageError,
        match=r"big.png: 9500x9500 pixels \(90,250,000\) is over the limit of 89,478,485 pixels",
    ):
        images.load_rgb(big)
    huge = tmp_path / "huge.png"
    _png(huge, 30000, 30000)  # over twice PIL's limit: PIL refuses it in open()
    with pytest.raises(images.ImageError, match=r"huge.png: over the limit of 89,478,485 pixels"):
        images.load_rgb(huge)
    # A complete small image within the limits still reads.
    ok = tmp_path / "ok.png"
    _png(ok, 3, 2, rows=(b"\x00" + b"\x10\x20\x30" * 3) * 2)
    assert images.load_rgb(ok).getpixel((2, 1)) == (16, 32, 48)


def test_fifos_and_folders_named_like_images_are_skipped_without_blocking(tmp_path, capsys):
    photos = tmp_path / "in"
    photos.mkdir()
    Image.new("RGB", (64, 64), (90, 120, 200)).save(photos / "a_good.png")
    fifo = photos / "x.jpg"
    os.mkfifo(fifo)
    (photos / "y.png").mkdir()
    other_fifo = tmp_path / "named.png"
    os.mkfifo(other_fifo)
    out = tmp_path / "out"
    result = {}
    run = threading.Thread(
        target=lambda: result.update(
            code=cli.main(["explain", str(photos), str(other_fifo), "--out", str(out)])
        ),
        daemon=True,
    )
    run.start()
    run.join(timeout=120)
    blocked = run.is_alive()
    while run.is_alive():  # a regression: open a writer end, so the reader sees end-of-file
        for path in (fifo, other_fifo):
            with contextlib.suppress(OSError):  # no reader (yet): nothing to unblock
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        run.join(timeout=1)
    assert not blocked, "gradex explain blocked on a FIFO"
    assert result["code"] == 1
    err = capsys.readouterr().err
    assert "x.jpg: not a regular file (a FIFO)" in err
    assert "named.png: not a regular file (a FIFO)" in err
    # A folder named like an image is a subfolder: named in the note, walked with --recursive.
    assert "1 subfolder(s) not explained: add --recursive" in err
    report = json.loads((out / "results.json").read_text())
    assert [r["panel"] for r in report["images"]] == ["a_good.gradex.png"]
    assert len(report["skipped"]) == 2
