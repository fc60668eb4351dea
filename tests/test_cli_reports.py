"""Where ``gradex evaluate`` and ``gradex bench`` write: never over a file gradex did not write.
Such a file at one of their names stops the run before any work, with one ``gradex: error:`` line
naming ``--out`` and the file; gradex's own earlier files (those committed before gradex marked
its PNGs too) are replaced, so a rerun into the same folder works."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from gradex import cli
from gradex.benchmark import harness as bench_harness
from gradex.benchmark import measure
from gradex.benchmark import report as bench_report
from gradex.evaluation import harness as evaluate_harness

ROOT = Path(__file__).resolve().parents[1]
# The smallest evaluation; it is refused before it starts, or stopped where its work begins.
EVALUATE = ["evaluate", "--quick", "--no-photos", "--methods", "gradcam", "--images", "1"]
EVALUATE += ["--grids", "1", "--faithfulness-images", "1", "--sanity-images", "1"]
BENCH = ["bench", "--quick", "--device", "cpu"]


class WorkBegan(RuntimeError):
    pass


@pytest.fixture
def no_work(monkeypatch):
    """The commands' work stops where it would begin: a run that gets there raises WorkBegan
    (a RuntimeError: the command line prints it as its one error line and exits with 2)."""

    def run(*args, **kwargs):
        raise WorkBegan("the work began")

    monkeypatch.setattr(evaluate_harness, "run", run)
    monkeypatch.setattr(bench_harness, "run", run)


def _digests(folder):
    return {
        p.name: hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else None
        for p in folder.iterdir()
    }


def _refused(capsys, *words):
    """The run printed nothing but one ``gradex: error:`` line naming ``words``."""
    captured = capsys.readouterr()
    assert captured.out == "", captured.out  # nothing ran
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradex: error: "), captured.err
    for word in words:
        assert word in lines[0], lines[0]
    assert "the work began" not in lines[0]


def _foreign(path):
    """Someone else's file at ``path``, of the kind its name says."""
    if path.suffix == ".png":
        Image.new("RGB", (8, 8), (1, 2, 3)).save(path)
    elif path.suffix == ".json":
        path.write_text('{"my": "numbers"}\n')
    else:
        path.write_text("# My project\n\nDo not lose this.\n")


def test_evaluate_out_dot_keeps_the_projects_readme(tmp_path, monkeypatch, capsys, no_work):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("# My project\n\nDo not lose this.\n")
    (tmp_path / "setup.py").write_text("")
    before = _digests(tmp_path)
    assert cli.main([*EVALUATE, "--out", "."]) == 2
    _refused(capsys, "--out .", "README.md", "did not write")
    assert _digests(tmp_path) == before  # nothing written, nothing left behind


@pytest.mark.parametrize("name", ["evaluation.json", "examples.png", "metrics.png", "README.md"])
def test_evaluate_refuses_a_foreign_file_at_any_of_its_names(tmp_path, capsys, no_work, name):
    out = tmp_path / "out"
    out.mkdir()
    _foreign(out / name)
    before = _digests(out)
    assert cli.main([*EVALUATE, "--out", str(out)]) == 2
    _refused(capsys, f"--out {out}", name, "did not write")
    assert _digests(out) == before


def test_evaluate_refuses_a_link_even_to_its_own_report(tmp_path, capsys, no_work):
    out = tmp_path / "out"
    out.mkdir()
    theirs = tmp_path / "theirs.md"
    shutil.copy(ROOT / "docs" / "evaluation" / "README.md", theirs)  # a gradex report, linked
    (out / "README.md").symlink_to(theirs)
    kept = theirs.read_bytes()
    assert cli.main([*EVALUATE, "--out", str(out)]) == 2
    _refused(capsys, "--out", "README.md")
    assert (out / "README.md").is_symlink() and theirs.read_bytes() == kept


def test_evaluate_raw_never_replaces_a_foreign_file(tmp_path, capsys, no_work):
    out = tmp_path / "out"
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    assert cli.main([*EVALUATE, "--out", str(out), "--raw", str(notes)]) == 2
    _refused(capsys, f"--raw {notes}", "will not replace")
    assert notes.read_text() == "mine\n"
    # Nor one of the report's own files, which the report would then overwrite.
    assert cli.main([*EVALUATE, "--out", str(out), "--raw", str(out / "metrics.png")]) == 2
    _refused(capsys, "--raw", "report's files")


def _without_gradex_mark(path: Path) -> None:
    """Rewrite the PNG at ``path`` without gradex's tEXt mark: a figure of a report written
    before gradex marked its PNGs (matplotlib's own Software chunk stays)."""
    data = path.read_bytes()
    chunks, at = [data[:8]], 8
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        chunk = data[at : at + 12 + length]
        if chunk[4:8] != b"tEXt" or not chunk[8:].startswith(b"gradex\x00"):
            chunks.append(chunk)
        at += 12 + length
    path.write_bytes(b"".join(chunks))


def test_evaluate_reruns_into_its_own_committed_report(tmp_path, capsys, no_work):
    # docs/evaluation is an earlier gradex report: every file is recognised, and the run gets
    # to its work.
    out = tmp_path / "evaluation"
    shutil.copytree(ROOT / "docs" / "evaluation", out)
    assert cli.main([*EVALUATE, "--out", str(out)]) == 2
    assert "gradex: error: the work began" in capsys.readouterr().err
    # So is one whose figures predate gradex's mark on its PNGs.
    for figure in out.glob("*.png"):
        _without_gradex_mark(figure)
        assert Image.open(figure).text.get("Software", "").startswith("Matplotlib")
        assert "gradex" not in Image.open(figure).text
    assert cli.main([*EVALUATE, "--out", str(out)]) == 2
    assert "gradex: error: the work began" in capsys.readouterr().err
    # An unmarked matplotlib figure counts as gradex's only beside a gradex evaluation.json.
    (out / "evaluation.json").write_text('{"my": "numbers"}\n')
    assert cli.main([*EVALUATE, "--out", str(out)]) == 2
    _refused(capsys, "--out", "evaluation.json")
    (out / "evaluation.json").unlink()
    assert cli.main([*EVALUATE, "--out", str(out)]) == 2
    _refused(capsys, "--out", "examples.png")


def _bench_stem():
    return bench_report.stem(measure.device_name(torch.device("cpu")))


@pytest.mark.parametrize("suffix", [".json", ".md", ".png"])
def test_bench_refuses_a_foreign_results_file(tmp_path, capsys, no_work, suffix):
    name = _bench_stem() + suffix
    _foreign(tmp_path / name)
    before = _digests(tmp_path)
    assert cli.main([*BENCH, "--out", str(tmp_path)]) == 2
    _refused(capsys, f"--out {tmp_path}", name, "did not write")
    assert _digests(tmp_path) == before


def test_bench_refuses_a_foreign_file_at_its_tagged_name(tmp_path, capsys, no_work):
    name = bench_report.stem(measure.device_name(torch.device("cpu")), "My run") + ".md"
    assert name.endswith("_my_run.md")
    _foreign(tmp_path / name)
    assert cli.main([*BENCH, "--out", str(tmp_path), "--tag", "My run"]) == 2
    _refused(capsys, "--out", name)
    # Without the tag the names differ: nothing is in the way.
    assert cli.main([*BENCH, "--out", str(tmp_path)]) == 2
    assert "gradex: error: the work began" in capsys.readouterr().err


def test_bench_results_committed_before_the_mark_are_its_own(tmp_path):
    # bench/results holds earlier runs (a CPU's, with tags, and an H200's): all recognised.
    shutil.copytree(ROOT / "bench" / "results", tmp_path / "results")
    for device, tag in [
        ("Intel(R) Xeon(R) Processor", ""),
        ("Intel(R) Xeon(R) Processor", "b64"),
        ("Intel(R) Xeon(R) Processor", "lite0 local weighting"),
        ("NVIDIA H200", ""),
    ]:
        folder = bench_report.output_folder(tmp_path / "results", device, tag)
        assert all(path.exists() for path in folder.paths.values()), folder.paths
    # Its plot is gradex's only beside its gradex JSON.
    (tmp_path / "results" / "e2e_nvidia_h200.json").write_text("[]\n")
    with pytest.raises(ValueError, match=r"e2e_nvidia_h200\.json that gradex did not write"):
        bench_report.output_folder(tmp_path / "results", "NVIDIA H200")
    (tmp_path / "results" / "e2e_nvidia_h200.json").unlink()
    with pytest.raises(ValueError, match=r"e2e_nvidia_h200\.png that gradex did not write"):
        bench_report.output_folder(tmp_path / "results", "NVIDIA H200")


def test_bench_rerun_replaces_its_own_files(tmp_path, monkeypatch, capsys):
    # The results of an earlier run, re-rendered twice into the same folder: the second run
    # replaces the first one's files (now marked PNG included) and leaves nothing else.
    recorded = json.loads(
        (ROOT / "bench" / "results" / "e2e_intel_r_xeon_r_processor_b64.json").read_text()
    )
    recorded["machine"]["device"] = measure.device_name(torch.device("cpu"))
    monkeypatch.setattr(bench_harness, "run", lambda *args, **kwargs: recorded)
    stem = _bench_stem()
    for _ in range(2):
        assert cli.main([*BENCH, "--out", str(tmp_path)]) == 0, capsys.readouterr().err
        written = sorted(p.name for p in tmp_path.iterdir())
        assert written == [f"{stem}.json", f"{stem}.md", f"{stem}.png"]
    assert json.loads((tmp_path / f"{stem}.json").read_text()) == recorded
    head = (tmp_path / f"{stem}.png").read_bytes()[:64]
    assert head.startswith(b"\x89PNG") and b"tEXtgradex\x00bench plot" in head
