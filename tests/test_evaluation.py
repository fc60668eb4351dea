"""gradex evaluate: the statistics on known inputs, and the quick run end to end (as in CI)."""

import json

import pytest
import torch

from gradex import cli
from gradex.evaluation import report, stats


def test_summary_and_paired_difference():
    values = torch.arange(1.0, 101.0)
    s = stats.summary(values)
    assert s["mean"] == pytest.approx(50.5) and s["median"] == pytest.approx(50.5)
    assert s["ci_low"] < 50.5 < s["ci_high"] and s["ci_high"] - s["ci_low"] < 15
    assert stats.summary(values, seed=1)["ci_low"] != s["ci_low"]  # the seed matters, no more
    shifted = stats.paired_difference(values + 2, values)
    assert shifted["mean"] == pytest.approx(2) and shifted["excludes_0"]
    assert shifted["ci_low"] == pytest.approx(2) and shifted["ci_high"] == pytest.approx(2)
    noise = torch.randn(200, generator=torch.Generator().manual_seed(0))
    assert not stats.paired_difference(noise, torch.zeros(200))["excludes_0"]
    with pytest.raises(ValueError, match="must be paired"):
        stats.paired_difference(values, values[:5])


def test_missed_photo_insertion_is_explained_with_its_numbers():
    # Four crops; the third loses most: the text must name it, the totals and the follow-up.
    coarse = {"insertion_auc": torch.tensor([0.6, 0.7, 0.8, 0.5]), "deletion_auc": torch.ones(4)}
    ge = {"insertion_auc": torch.tensor([0.6, 0.65, 0.4, 0.5]), "deletion_auc": torch.ones(4) / 2}
    results = {"photos": {"rows": {"gradcam": coarse, "gradcam + GE": ge}}}
    missed = [{"goal": "A (photos): insertion AUC not lower by more than 0.01", "met": False}]
    text = "\n".join(report._misses(results, {}, missed))
    assert "over 4 crops only (-0.113 [" in text
    assert "deletion -0.500 [-0.500, -0.500]" in text
    assert "one crop's 0.80 → 0.40 (-0.400 of the -0.450 summed over the 4 crops)" in text
    assert "bench/insertion_blur_check.py --crops 16" in text
    met = [{"goal": missed[0]["goal"], "met": True}]
    assert report._misses(results, {}, met) == []


def test_quick_evaluation_writes_the_report(tmp_path, monkeypatch, capsys):
    from gradex.cli_paths import is_gradex_png
    from gradex.evaluation import harness

    out, raw = tmp_path / "report", tmp_path / "raw.pt"
    args = ["evaluate", "--quick", "--out", str(out), "--raw", str(raw)]
    assert cli.main(args) == 0, capsys.readouterr().err
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "README.md",
        "evaluation.json",
        "examples.png",
        "examples_photos.png",
        "metrics.png",
    ]
    record = json.loads((out / "evaluation.json").read_text())
    assert record["occlusion_checks"]["0"]["uses_the_object"]
    expected_rows = {
        "gradcam",
        "gradcam + GE",
        "contrastive excitation",
        "contrastive excitation + GE",
        "gradcam + GE, paper's formula",
        "gradcam + GE, global stage weighting",
        "GE on a constant map (control)",
    }
    for table in (record["summaries"], record["photo_summaries"]):
        assert expected_rows <= set(table)
        for row in table.values():
            assert 0 <= row["grid_localisation"]["mean"] <= 1
        # The baselines behave as their definition says: a random map localises at chance.
        assert table["random map (baseline)"]["grid_localisation"]["mean"] == pytest.approx(
            0.25, abs=0.02
        )
    for row in record["summaries"].values():
        for metric in ("energy_in_mask", "deletion_auc", "insertion_auc"):
            assert 0 <= row[metric]["mean"] <= 1
        assert 0 <= row["average_drop"]["mean"] <= 100
    # --quick runs no RISE on the photos (450 forward passes a crop): those cells stay empty.
    assert "deletion_auc" not in record["photo_summaries"]["gradcam"]
    assert {"gradcam + GE, block outputs (relu)", "LayerCAM fusion, 5 layers (peer)"} <= set(
        record["photo_summaries"]
    )
    # B: energy, grid, deletion, insertion, sanity, constant; A: grid, constant.
    assert len(record["goals"]) == 8 and all("met" in g for g in record["goals"])
    failures = record["failing_cells"]
    assert failures["per_photo"] and set(failures["correlation"]) == {
        "GE (defaults)",
        "GE, global weighting",
        "GE, paper",
    }
    assert len(record["equivalences"]) == 3
    assert all(value < 1e-5 for value in record["equivalences"].values())
    text = (out / "README.md").read_text()
    for heading in (
        "## Main table",
        "## Goals (Grad-CAM)",
        "## Testbed A: EfficientNet-Lite0 on photo grids",
        "### Where GE fails on photos, and why",
        "## Choosing GE's defaults (Grad-CAM)",
    ):
        assert heading in text
    assert "| gradcam + GE |" in text
    for png in ("examples.png", "examples_photos.png", "metrics.png"):
        assert is_gradex_png(out / png)  # a PNG with gradex's mark: a rerun may replace it

    # A rerun into the same folder (its work replaced by the first run's results, from --raw)
    # replaces every file of the first run, --raw included, and leaves nothing else behind.
    first = torch.load(raw, weights_only=False)
    monkeypatch.setattr(harness, "run", lambda settings, progress=print: first)
    assert cli.main(args) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.pt", "report"]
    assert json.loads((out / "evaluation.json").read_text()) == record
    assert (out / "README.md").read_text() == text


def test_photo_grids_hold_four_photos_and_four_classes():
    from gradex.evaluation.photos import make_grids
    from gradex.models import load_lite0

    pytest.importorskip("skimage")
    from gradex.evaluation.photos import make_crops

    model = load_lite0()  # building it draws initial weights from the global generator
    state = torch.random.get_rng_state()
    crops = make_crops(model, 2, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is kept
    assert (crops.probability >= 0.5).all()
    again = make_crops(model, 2, seed=1)
    assert torch.equal(again.images, crops.images)
    grids = make_grids(crops, 3, seed=2)
    assert grids.images.shape == (3, 3, 448, 448)
    for labels, photos in zip(grids.labels, grids.photos, strict=True):
        assert len(set(labels.tolist())) == 4 and len(set(photos.tolist())) == 4
    # Cell 1 (top right) of grid 0 is exactly its crop.
    index = (crops.labels == grids.labels[0, 1]) & (crops.photos == grids.photos[0, 1])
    assert any(
        torch.equal(grids.images[0, :, :224, 224:], crops.images[i])
        for i in index.nonzero().flatten().tolist()
    )


def test_bad_arguments(capsys):
    assert cli.main(["evaluate", "--quick", "--seeds", "99"]) == 2
    assert "no shipped weights for [99]" in capsys.readouterr().err
    assert cli.main(["evaluate", "--quick", "--images", "0"]) == 2
    assert cli.main(["evaluate", "--quick", "--photo-grids", "0"]) == 2
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage error
        cli.main(["evaluate", "--quick", "--methods", "gradcam", "nope"])
    assert exit_info.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_layercam_fusion_agrees_with_pytorch_grad_cam():
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from gradex.evaluation.baselines import layercam_fusion
    from gradex.metrics import pearson
    from gradex.synthetic import load_model, make_images

    model, data = load_model(0), make_images(6, seed=5)
    layers = ["stages.0", "stages.1", "stages.2", "stages.3"]
    ours = layercam_fusion(model, layers, data.images, data.labels)
    assert ours.shape == (6, 1, 64, 64) and ours.min() == 0 and ours.max() == 1
    peer = pgc.LayerCAM(model=model, target_layers=[model.get_submodule(n) for n in layers])
    targets = [ClassifierOutputTarget(int(c)) for c in data.labels]
    theirs = torch.as_tensor(peer(input_tensor=data.images, targets=targets))
    peer.activations_and_grads.release()
    # pytorch-grad-cam normalises each layer before resizing it (OpenCV), gradex after: the
    # fused maps agree up to that interpolation detail.
    assert (pearson(ours, theirs) > 0.99).all(), pearson(ours, theirs)
