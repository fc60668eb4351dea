"""What ``gradex explain`` writes per image and in results.json: panels or none, the raw maps,
the top-k list, colours, subfolders, timings and the progress bar."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gradex import cli, cli_paths
from gradex.explainer import Explainer
from gradex.images import load_rgb
from gradex.models import load_model
from gradex.ops import resolve_backend


def _photo(path, size=(48, 40), seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 255, (size[1], size[0], 3), dtype=torch.uint8, generator=generator)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.numpy()).save(path)
    return path


def _report(out):
    return json.loads((out / "results.json").read_text())


def test_save_maps_writes_the_explainers_maps_and_no_panels(tmp_path):
    photos = [_photo(tmp_path / "in" / f"{name}.png", seed=i) for i, name in enumerate("ab")]
    out = tmp_path / "out"
    args = ["explain", *map(str, photos), "--out", str(out), "--save-maps", "--no-panels"]
    assert cli.main([*args, "--top-k", "3", "--display", "gamma"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.gradex.npz", "b.gradex.npz", "results.json"]
    report = _report(out)
    assert report["top_k"] == 3 and report["display"]["scaling"] == "gamma"

    bundle = load_model()
    x = torch.stack([bundle.preprocess(load_rgb(p)) for p in photos])
    exp = Explainer(bundle.model)(x)
    for i, record in enumerate(report["images"]):
        assert "panel" not in record and len(record["top"]) == 3
        path = out / record["maps"]
        assert cli_paths.is_gradex_npz(path)
        with np.load(path) as maps:
            assert maps["saliency"].dtype == np.float32 and maps["saliency"].shape == (224, 224)
            # The maps as computed: the display scaling never reaches them.
            np.testing.assert_allclose(maps["saliency"], exp.saliency[i, 0].numpy(), atol=1e-5)
            np.testing.assert_allclose(maps["cam"], exp.cam[i, 0].numpy(), atol=1e-5)
            assert int(maps["target"]) == int(exp.target[i]) == record["target"]


def test_every_batch_explains_its_own_top_1_without_target(tmp_path):
    # The demo photos' top-1 classes differ (a cat, an espresso, a moped, a uniform): at one image
    # a batch, a class carried over from an earlier batch would show as a target that is not
    # the image's own top-1.
    out = tmp_path / "out"
    args = ["explain", "--demo", "--out", str(out), "--batch-size", "1", "--no-panels"]
    assert cli.main(args) == 0
    records = _report(out)["images"]
    assert len({r["top"][0]["class"] for r in records}) == len(records) == 4
    for record in records:
        assert record["target"] == record["top"][0]["class"], record["file"]


def test_a_maps_file_gradex_did_not_write_is_never_replaced(tmp_path):
    photo = _photo(tmp_path / "cat.png")
    out = tmp_path / "out"
    out.mkdir()
    np.savez(out / "cat.gradex.npz", mine=np.arange(3))  # someone's own NPZ at gradex's name
    before = (out / "cat.gradex.npz").read_bytes()
    assert cli.main(["explain", str(photo), "--out", str(out), "--save-maps"]) == 0
    record = _report(out)["images"][0]
    # panel and maps share their number, so they stay a pair
    assert (record["panel"], record["maps"]) == ("cat_2.gradex.png", "cat_2.gradex.npz")
    assert (out / "cat.gradex.npz").read_bytes() == before
    assert not cli_paths.is_gradex_npz(out / "cat.gradex.npz")


@pytest.mark.parametrize(
    ("option", "words"),
    [
        (["--top-k", "0"], ["--top-k", "at least 1"]),
        (["--top-k", "1001"], ["--top-k 1001", "1000 classes"]),
    ],
)
def test_bad_top_k_is_a_usage_error(tmp_path, capsys, option, words):
    photo = _photo(tmp_path / "cat.png")
    assert cli.main(["explain", str(photo), "--out", str(tmp_path / "out"), *option]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gradex: error:")
    assert all(word in err[0] for word in words)


def test_subfolders_are_named_when_skipped_and_walked_with_recursive(tmp_path, capsys):
    tree = tmp_path / "in"
    _photo(tree / "top.png")
    _photo(tree / "a" / "cat.png", seed=1)
    _photo(tree / "b" / "deeper" / "cat.png", seed=2)
    _photo(tree / ".hidden" / "x.png", seed=3)
    _photo(tree / ".y.png", seed=4)
    _photo(tree / "a" / "old.gradex.png", seed=5)  # named like gradex's output: never an input
    out = tmp_path / "out"

    assert cli.main(["explain", str(tree), "--out", str(out), "--no-panels"]) == 0
    assert "2 subfolder(s) not explained: add --recursive" in capsys.readouterr().err
    assert [r["file"] for r in _report(out)["images"]] == [str(tree / "top.png")]

    assert cli.main(["explain", str(tree), "--out", str(out), "--recursive"]) == 0
    assert "subfolder" not in capsys.readouterr().err
    records = _report(out)["images"]
    assert [r["file"] for r in records] == [  # sorted by path, as explain-dataset walks
        str(tree / "a" / "cat.png"),
        str(tree / "b" / "deeper" / "cat.png"),
        str(tree / "top.png"),
    ]
    # two cats in two folders: two panels
    assert [r["panel"] for r in records] == ["cat.gradex.png", "cat_2.gradex.png", "top.gradex.png"]


def test_timings_keep_the_warm_up_apart_and_name_the_backend(tmp_path):
    photos = [_photo(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    out = tmp_path / "out"
    assert cli.main(["explain", *map(str, photos), "--out", str(out), "--batch-size", "1"]) == 0
    report = _report(out)
    timings = report["timings"]
    assert timings["warmup_batch_images"] == 1 and timings["steady_images"] == 2
    assert timings["warmup_batch_s"] > 0 and timings["ms_per_image"] > 0
    assert timings["outputs_ms_per_image"] > 0
    assert report["backend"] == resolve_backend("auto", torch.device("cpu")).name
    assert report["device"] == "cpu" and report["dtype"] == "float32"


def test_the_progress_bar_counts_images_explained_and_written(tmp_path, monkeypatch):
    for i in range(5):
        _photo(tmp_path / "in" / f"{i}.png", seed=i)
    out = tmp_path / "out"
    seen = []  # (images the bar shows after an update, panels on disk at that moment)

    class Watched(cli.tqdm):
        def update(self, n=1):
            seen.append((self.n + n, len(list(out.glob("*.gradex.png")))))
            return super().update(n)

    monkeypatch.setattr(cli, "tqdm", Watched)
    args = ["explain", str(tmp_path / "in"), "--out", str(out), "--batch-size", "2"]
    assert cli.main(args) == 0
    assert seen == [(2, 2), (4, 4), (5, 5)]
