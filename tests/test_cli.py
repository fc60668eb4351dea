"""``gradex explain`` end to end."""

import json

import pytest
from PIL import Image

from gradex import cli, images


def test_demo_writes_panels_and_results(tmp_path):
    assert cli.main(["explain", "--demo", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["model"] == "efficientnet_lite0" and report["method"] == "gradcam"
    assert report["target_layer"] == "_swish#1" and len(report["stages"]) == 5
    assert [r["target"] for r in report["images"]] == [285, 967, 665, 652]
    for record in report["images"]:
        assert len(record["top"]) == 5 and record["top"][0]["class"] == record["target"]
        with Image.open(tmp_path / record["panel"]) as panel:
            assert panel.size[0] > 2 * panel.size[1]
    assert report["skipped"] == [] and report["timings"]["warmup_batch_s"] > 0
    # The four photos are one batch: all warm-up, no steady state to quote.
    assert report["timings"]["warmup_batch_images"] == 4
    assert report["timings"]["ms_per_image"] is None


def test_bad_files_are_skipped_and_the_rest_explained(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    cat = images.demo_photos()[0]
    (inputs / "cat.png").write_bytes(cat.read_bytes())
    (inputs / "broken.jpg").write_text("not an image")
    # A grey photo is explained (it was skipped as "not an RGB image" before issue 14).
    Image.open(cat).convert("L").resize((60, 40)).save(inputs / "grey.png")
    out = tmp_path / "out"
    code = cli.main(
        [
            "explain",
            str(inputs),
            "--out",
            str(out),
            "--batch-size",
            "2",
            "--method",
            "layercam",
            "--target",
            "281",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.jpg: cannot read as an image" in err and "grey.png" not in err
    report = json.loads((out / "results.json").read_text())
    assert [r["panel"] for r in report["images"]] == ["cat.gradex.png", "grey.gradex.png"]
    for record in report["images"]:
        assert record["target"] == 281 and record["target_name"] == "tabby"
    assert len(report["skipped"]) == 1


def test_no_gradual_and_duplicate_names(tmp_path):
    cat = images.demo_photos()[0]
    out = tmp_path / "out"
    assert cli.main(["explain", str(cat), str(cat), "--out", str(out), "--no-gradual"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert [r["panel"] for r in report["images"]] == ["chelsea.gradex.png", "chelsea_2.gradex.png"]
    assert report["gradual"] is False and report["stages"] == []


def test_excitation_method_and_the_papers_ge(tmp_path):
    cat = images.demo_photos()[0]
    out = tmp_path / "out"
    args = ["explain", str(cat), "--out", str(out), "--method", "contrastive-excitation"]
    assert cli.main([*args, "--paper"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["method"] == "contrastive excitation"
    assert report["stage_weighting"] == "global" and report["normalize"] == "standardize"
    assert cli.main(args) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["stage_weighting"] == "local" and report["normalize"] == "minmax"


def test_usage_errors_exit_2(tmp_path, capsys):
    assert cli.main(["explain", "--out", str(tmp_path)]) == 2
    assert "no images" in capsys.readouterr().err
    assert cli.main(["explain", "--demo", "--out", str(tmp_path), "--model", "resnet18"]) == 2
    assert "needs a local weights file" in capsys.readouterr().err


def test_a_missing_device_is_a_usage_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the check is for machines without a GPU")
    assert cli.main(["explain", "--demo", "--out", str(tmp_path), "--device", "cuda"]) == 2
    assert "no CUDA device is available" in capsys.readouterr().err
    assert cli.main(["explain", "--demo", "--out", str(tmp_path), "--device", "gpu0"]) == 2
    assert "--device" in capsys.readouterr().err


def test_the_command_line_needs_neither_pyarrow_nor_ray_unless_asked():
    """`gradex explain` works with the base install: the dataset job's parser is built for every
    command, but pyarrow (the dataset extra) and Ray load only when explain-dataset runs."""
    import subprocess
    import sys

    probe = (
        "import sys, gradex, gradex.cli, gradex.dataset\n"
        "gradex.cli._parser().parse_args(['explain', '--demo'])\n"
        "print(sorted(m for m in ('pyarrow', 'ray', 'pandas', 'duckdb') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
