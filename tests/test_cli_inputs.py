"""What the command line reads: regular files only, and no image whose decoding or resizing would
take unbounded memory. Such files are skipped by name, the rest explained, the exit status 1."""

import contextlib
import json
import os
import struct
import threading
import zlib

import numpy as np
import pytest
import torch
import torchvision
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


# Photos as users have them: grey, 16-bit, transparent, and phone photos stored sideways.


def test_grey_16_bit_and_transparent_images_are_explained_not_skipped(tmp_path, capsys):
    photos = tmp_path / "in"
    photos.mkdir()
    cat = images.load_rgb(images.demo_photos()[0]).resize((96, 64))
    cat.convert("L").save(photos / "grey.jpg")
    cat.convert("L").save(photos / "grey.png")
    grey16 = (np.asarray(cat.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(photos / "grey16.png")
    cat.convert("RGBA").save(photos / "rgba.png")
    out = tmp_path / "out"
    assert _explain(photos, out) == 0, capsys.readouterr().err
    report = json.loads((out / "results.json").read_text())
    assert report["skipped"] == []
    by_file = {r["file"].rsplit("/", 1)[1]: r for r in report["images"]}
    assert sorted(by_file) == ["grey.jpg", "grey.png", "grey16.png", "rgba.png"]
    # The 16-bit copy is the 8-bit grey photo to the model: the same classes and probabilities.
    assert by_file["grey16.png"]["top"] == by_file["grey.png"]["top"]


def test_a_phone_photo_is_explained_upright(tmp_path, capsys):
    photos = tmp_path / "in"
    photos.mkdir()
    cat = images.load_rgb(images.demo_photos()[0])
    cat.save(photos / "a_upright.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display: how phones store portraits
    cat.transpose(Image.Transpose.ROTATE_90).save(photos / "b_phone.jpg", exif=exif, quality=95)
    out = tmp_path / "out"
    assert cli.main(["explain", str(photos), "--out", str(out)]) == 0, capsys.readouterr().err
    upright, phone = json.loads((out / "results.json").read_text())["images"]
    assert upright["target"] == phone["target"] == 285  # Egyptian cat
    for a, b in zip(upright["top"], phone["top"], strict=True):
        assert a["class"] == b["class"] and abs(a["prob"] - b["prob"]) < 0.02


# Checkpoints and class names as users have them.


def test_a_fine_tuned_ddp_checkpoint_with_labels_and_a_target_by_name(tmp_path, capsys):
    model = torchvision.models.resnet18(num_classes=10)
    weights = tmp_path / "checkpoint.pth"
    state = torch.nn.DataParallel(model).state_dict()  # every key starts with "module."
    torch.save({"epoch": 30, "model": state, "args": {"lr": 0.01}}, weights)
    labels = tmp_path / "classes.txt"
    names = ["airplane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    labels.write_text("\n".join(names) + "\n")
    image = tmp_path / "a.jpg"
    images.load_rgb(images.demo_photos()[0]).resize((64, 48)).save(image)
    out = tmp_path / "out"
    args = ["explain", str(image), "--model", "resnet18", "--weights", str(weights)]
    args += ["--labels", str(labels), "--target", "Horse", "--out", str(out)]
    assert cli.main(args) == 0, capsys.readouterr().err
    report = json.loads((out / "results.json").read_text())
    (record,) = report["images"]
    assert record["target"] == 7 and record["target_name"] == "horse"
    assert {entry["name"] for entry in record["top"]} <= set(names)
    assert report["labels"] == str(labels) and report["weights"] == str(weights)
    assert (out / record["panel"]).stat().st_size > 0


def test_a_timm_model_by_name_from_safetensors(tmp_path, capsys):
    timm = pytest.importorskip("timm")
    save_file = pytest.importorskip("safetensors.torch").save_file
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    weights = tmp_path / "model.safetensors"
    save_file(model.state_dict(), weights)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"0": "ok", "1": "scratch", "2": "dent"}))
    image = tmp_path / "part.png"
    images.load_rgb(images.demo_photos()[0]).resize((80, 64)).save(image)
    out = tmp_path / "out"
    args = ["explain", str(image), "--model", "timm:test_resnet", "--weights", str(weights)]
    args += ["--labels", str(labels), "--target", "dent", "--out", str(out)]
    assert cli.main(args) == 0, capsys.readouterr().err
    report = json.loads((out / "results.json").read_text())
    assert report["model"] == "timm:test_resnet" and report["target_layer"]
    assert report["images"][0]["target_name"] == "dent"
