"""Where the command line writes: never over an input, never over a file gradex did not write, and
an ``--out`` that cannot be written is refused before any work."""

import hashlib
import json
import os

import pytest
import torch
from PIL import Image

from gradex import cli, cli_paths


def _digests(folder):
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def _photo(path, size=(48, 40), seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 255, (size[1], size[0], 3), dtype=torch.uint8, generator=generator)
    Image.fromarray(pixels.numpy()).save(path)


def _error_line(capsys, *words):
    """The run's stderr: one ``gradex: error:`` line naming ``words``, no traceback."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradex: error: "), err
    for word in words:
        assert word in lines[0]
    return lines[0]


def test_explaining_a_folder_into_itself_keeps_every_input(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("cat.png", "dog.jpg", "dog.png"):
        _photo(photos / name)
    before = _digests(photos)

    assert cli.main(["explain", str(photos), "--out", str(photos), "--no-gradual"]) == 0
    after = _digests(photos)
    assert {name: after[name] for name in before} == before  # no input was touched
    report = json.loads((photos / "results.json").read_text())
    panels = {r["file"].rsplit("/", 1)[1]: r["panel"] for r in report["images"]}
    # dog.jpg and dog.png share a stem: two panels, none on an input
    assert panels == {
        "cat.png": "cat.gradex.png",
        "dog.jpg": "dog.gradex.png",
        "dog.png": "dog_2.gradex.png",
    }
    for panel in panels.values():
        assert cli_paths.is_gradex_png(photos / panel)
        with Image.open(photos / panel) as image:
            assert image.size[0] > image.size[1] > 40  # a panel (input | coarse map), no photo

    # Again: the earlier panels are outputs, not inputs, and are replaced in place.
    assert cli.main(["explain", str(photos), "--out", str(photos), "--no-gradual"]) == 0
    report = json.loads((photos / "results.json").read_text())
    assert sorted(r["panel"] for r in report["images"]) == sorted(panels.values())
    assert sorted(p.name for p in photos.iterdir()) == sorted(
        [*before, *panels.values(), "results.json"]
    )
    assert {name: _digests(photos)[name] for name in before} == before


def test_files_gradex_did_not_write_are_never_replaced(tmp_path, capsys):
    cat = tmp_path / "cat.png"
    _photo(cat)
    out = tmp_path / "out"
    out.mkdir()
    # Someone else's files at the names gradex would pick: a PNG and a link to a photo.
    _photo(out / "cat.gradex.png", seed=1)
    keep = tmp_path / "keep.png"
    _photo(keep, seed=2)
    (out / "cat_2.gradex.png").symlink_to(keep)
    before = {**_digests(out), "keep.png": hashlib.sha1(keep.read_bytes()).hexdigest()}

    assert cli.main(["explain", str(cat), "--out", str(out), "--no-gradual"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert [r["panel"] for r in report["images"]] == ["cat_3.gradex.png"]
    assert (
        hashlib.sha1((out / "cat.gradex.png").read_bytes()).hexdigest() == before["cat.gradex.png"]
    )
    assert hashlib.sha1(keep.read_bytes()).hexdigest() == before["keep.png"]
    assert (out / "cat_2.gradex.png").is_symlink()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left

    # A results.json that is not a gradex report stops the run before any work.
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "results.json").write_text('{"my": "results"}\n')
    assert cli.main(["explain", str(cat), "--out", str(notes)]) == 2
    _error_line(capsys, "--out", "results.json", "did not write")
    assert (notes / "results.json").read_text() == '{"my": "results"}\n'
    assert [p.name for p in notes.iterdir()] == ["results.json"]


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_an_out_that_is_or_is_under_a_file_is_a_usage_error(tmp_path, capsys, where):
    image = tmp_path / "a.jpg"
    _photo(image)
    blocker = tmp_path / "file"
    blocker.write_text("mine\n")
    out = blocker if where == "file" else blocker / "sub"
    assert cli.main(["explain", str(image), "--out", str(out)]) == 2
    _error_line(capsys, f"--out {out}")
    assert blocker.read_text() == "mine\n"


def test_an_unwritable_out_is_a_usage_error(tmp_path, capsys):
    image = tmp_path / "a.jpg"
    _photo(image)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("this user (root) may write into a read-only folder")
        assert cli.main(["explain", str(image), "--out", str(locked / "out")]) == 2
        _error_line(capsys, "--out", "cannot create the folder")
        assert cli.main(["explain", str(image), "--out", str(locked)]) == 2
        _error_line(capsys, "--out", "cannot write in this folder")
    finally:
        locked.chmod(0o700)


def test_bench_checks_its_out_before_running(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("mine\n")
    assert cli.main(["bench", "--quick", "--device", "cpu", "--out", str(blocker)]) == 2
    captured = capsys.readouterr()
    assert "gradex bench: tiny" not in captured.out  # refused before the first configuration
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gradex: error: --out {blocker}")
    assert blocker.read_text() == "mine\n"


@pytest.mark.parametrize("option", ["--out", "--raw"])
def test_evaluate_checks_its_outputs_before_running(tmp_path, capsys, option):
    blocker = tmp_path / "file"
    blocker.write_text("mine\n")
    target = blocker / "sub" if option == "--out" else blocker / "raw.pt"
    args = ["evaluate", "--quick", "--no-photos", "--methods", "gradcam", "--images", "1"]
    args += ["--grids", "1", "--faithfulness-images", "1", "--sanity-images", "1"]
    args += ["--out", str(tmp_path / "report")] if option == "--raw" else []
    assert cli.main([*args, option, str(target)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no testbed ran
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gradex: error: {option} {target}")


def test_a_rerun_removes_its_stale_panels_and_nothing_else(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed, name in enumerate(("a.png", "b.png", "c.png")):
        _photo(photos / name, seed=seed)
    out = tmp_path / "out"
    assert cli.main(["explain", str(photos), "--out", str(out), "--save-maps"]) == 0
    # Files that the earlier report does not list stay, gradex's or not: a panel of another
    # run, and someone's own PNG at a panel's name.
    (out / "other.gradex.png").write_bytes((out / "a.gradex.png").read_bytes())
    (out / "mine.gradex.png").write_bytes((photos / "a.png").read_bytes())
    # b changed into someone's own file after the run: listed, but no longer gradex's
    (out / "b.gradex.npz").write_bytes(b"my notes\n")
    (photos / "b.png").unlink()
    (photos / "c.png").unlink()
    capsys.readouterr()

    assert cli.main(["explain", str(photos), "--out", str(out), "--save-maps"]) == 0
    assert "removed 3 panel or maps file(s) of the previous run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [
        "a.gradex.npz",
        "a.gradex.png",
        "b.gradex.npz",
        "mine.gradex.png",
        "other.gradex.png",
        "results.json",
    ]
    assert (out / "b.gradex.npz").read_bytes() == b"my notes\n"


def test_a_stale_panel_that_is_now_an_input_is_kept(tmp_path):
    _photo(tmp_path / "a.png")
    out = tmp_path / "out"
    assert cli.main(["explain", str(tmp_path / "a.png"), "--out", str(out), "--no-gradual"]) == 0
    panel = out / "a.gradex.png"
    before = panel.read_bytes()
    # The next run explains the earlier panel itself: listed by the old report, not written
    # again (its own panel is a.gradex.gradex.png), but an input, so never removed.
    assert cli.main(["explain", str(panel), "--out", str(out), "--no-gradual"]) == 0
    assert panel.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == [
        "a.gradex.gradex.png",
        "a.gradex.png",
        "results.json",
    ]
