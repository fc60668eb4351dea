"""The benchmark harness (gradex bench): it runs end to end on a tiny configuration and writes
its files; its agreement check and goal arithmetic give known answers on known inputs."""

import json

import numpy as np
import pytest
import torch

from gradex import cli
from gradex.benchmark import harness, peers, report


def test_the_harness_runs_end_to_end_on_a_tiny_configuration(tmp_path, capsys):
    status = cli.main(["bench", "--quick", "--device", "cpu", "--out", str(tmp_path)])
    assert status == 0, capsys.readouterr().err
    written = sorted(p.name for p in tmp_path.iterdir())
    (json_path,) = tmp_path.glob("*.json")
    stem = json_path.stem
    assert written == [f"{stem}.json", f"{stem}.md", f"{stem}.png"]
    results = json.loads((tmp_path / f"{stem}.json").read_text())
    assert results["settings"]["reps"] == 2 and results["machine"]["versions"]["torch"]
    (config,) = results["configs"]
    assert (config["model"], config["batch"]) == ("tiny", 1) and not config["failed"]
    rows = {row["key"]: row for row in config["rows"]}
    for key in ("inference", "inference_bf16_cl", "gradex", "gradex_static", "gradex_bf16_cl"):
        assert rows[key]["n"] == 2 and rows[key]["p50_ms"] > 0 and rows[key]["img_per_s"] > 0
        assert rows[key]["p99_ms"] >= rows[key]["p50_ms"]
    assert rows["inference"]["x_inference"] == 1.0
    assert "cuda" in config["skipped"]["inference_graph"]
    for key in ("pgc_gradcam", "captum_layergradcam", "torchcam_gradcam"):
        (needed,) = harness.VARIANTS[key].needs
        if results["peers"][needed].startswith("cannot import"):
            assert "pip install" in config["skipped"][key]
        else:
            assert config["agreement"][key]["agrees"], config["agreement"][key]
            assert rows[key]["n"] == 2
    markdown = (tmp_path / f"{stem}.md").read_text()
    assert "| no-grad inference, fp32 |" in markdown and "## Goals" in markdown
    assert (tmp_path / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from gradex.cli_paths import is_gradex_png

    assert is_gradex_png(tmp_path / f"{stem}.png")  # marked: a rerun may replace it
    # A smoke test's times are no measurements, and every output says so.
    out = capsys.readouterr().out
    assert "### tiny, batch 1, " in out and "(smoke test)" in out.split("### tiny")[1][:80]
    assert out.rstrip().endswith(
        "times and x-inference ratios are NOT measurements. Run gradex "
        "bench without --quick for numbers."
    )
    assert "NOT measurements" in markdown.split("###")[0]
    assert results["settings"]["smoke_test"] and "NOT measurements" in results["note"]


def test_bad_arguments_are_refused(capsys):
    assert cli.main(["bench", "--quick", "--device", "cpu", "--reps", "1"]) == 2
    assert "--reps must be at least 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["bench", "--models", "alexnet"])


def test_agreement_of_known_maps():
    generator = torch.Generator().manual_seed(0)
    ours = torch.rand(3, 1, 7, 7, generator=generator)
    same = peers.agreement(ours, (ours * 5 + 2).squeeze(1).numpy())  # scale and shift: same map
    assert same["agrees"] and same["min_r"] == pytest.approx(1.0) and same["max_abs_diff"] < 1e-6
    inverted = peers.agreement(ours, -ours)
    assert not inverted["agrees"] and inverted["min_r"] == pytest.approx(-1.0)
    other = torch.rand(3, 1, 7, 7, generator=generator)
    assert not peers.agreement(ours, other)["agrees"]
    constant = torch.zeros(3, 1, 7, 7)
    assert peers.agreement(constant, constant)["agrees"]
    assert not peers.agreement(ours, constant)["agrees"]
    # a peer at input resolution: ours is upsampled bilinearly, as pytorch-grad-cam does
    upsampled = torch.nn.functional.interpolate(ours, size=(56, 56), mode="bilinear")
    at_input = peers.agreement(ours, upsampled.squeeze(1).numpy().astype(np.float32))
    assert at_input["agrees"] and at_input["max_abs_diff"] < 1e-5


def _results(device_type, rows):
    configs = {}
    for (model, batch, key), (p50, peak) in rows.items():
        config = configs.setdefault((model, batch), {"model": model, "batch": batch, "rows": []})
        config["rows"].append(
            {"key": key, "p50_ms": p50, "img_per_s": 1000 * batch / p50, "peak_mib": peak}
        )
    return {"machine": {"device_type": device_type}, "configs": list(configs.values())}


def test_goals_arithmetic():
    cpu = report.goals(
        _results(
            "cpu",
            {
                ("efficientnet_lite0", 1, "inference"): (40.0, 10),
                ("efficientnet_lite0", 1, "gradex_static"): (44.0, 12),
                ("efficientnet_lite0", 1, "pgc_gradcam"): (100.0, 50),
            },
        )
    )
    assert [g["measured"] for g in cpu] == [1.1, pytest.approx(100 / 44, abs=1e-3)]
    assert [g["met"] for g in cpu] == [True, False]
    gpu = report.goals(
        _results(
            "cuda",
            {
                ("resnet50", 1, "gradex_static"): (1.0, 1),
                ("resnet50", 1, "inference_graph"): (0.9, 1),
                ("resnet50", 64, "gradex"): (10.0, 700),
                ("resnet50", 64, "inference"): (9.0, 600),
            },
        )
    )
    met = {g["goal"].split(": ")[1]: g["met"] for g in gpu}
    assert met["graph-mode Grad-CAM+GE / graph-captured inference latency"] is True  # 1.11
    assert met["graph-mode Grad-CAM+GE / pytorch-grad-cam GradCAM latency"] is None  # not run
    assert met["peak memory of Grad-CAM+GE (fp32) / no-grad inference"] is True
