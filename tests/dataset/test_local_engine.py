"""The local engine end to end: every image exactly once, a dataset that pandas, pyarrow and
DuckDB read as it is, maps equal to ``gradex explain``'s, and a rerun that does no work."""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torchvision

import gradex
from gradex.cli import main
from gradex.dataset import explain_dataset, read_metadata
from gradex.dataset.shards import ERRORS_DIR, JOB_FILE, STAGING_DIR
from gradex.explainer import Explainer
from gradex.images import load_rgb
from gradex.models import load_model

from .conftest import BROKEN, SAMPLES
from .outputs import assert_exactly_once, errors, rows, uint8_map_difference


def test_every_image_is_once_in_the_rows_or_the_errors(sample_root, local_output):
    assert_exactly_once(sample_root, local_output)
    table = rows(local_output)
    assert table.num_rows == SAMPLES
    failed = errors(local_output).to_pylist()
    assert {f["id"]: f["reason"] for f in failed}.keys() == BROKEN.keys()
    for failure in failed:
        assert BROKEN[failure["id"]] in failure["reason"]
        assert failure["id"] in failure["reason"]  # the reason names the file


def test_shards_hold_their_images_in_job_order(local_output):
    names = sorted(p.name for p in local_output.glob("part-*.parquet"))
    assert names == [f"part-{k:05d}.parquet" for k in range(4)]  # 243 images, 64 a shard
    ids = rows(local_output)["id"].to_pylist()
    assert ids == sorted(ids)  # a folder's items are its sorted relative paths
    assert not list((local_output / STAGING_DIR).iterdir())


def test_the_dataset_reads_as_it_is_in_pandas_pyarrow_and_duckdb(local_output):
    import duckdb
    import pandas as pd

    frame = pd.read_parquet(local_output)
    assert len(frame) == SAMPLES
    assert set(frame.columns) >= {"id", "target", "target_name", "score", "prob", "saliency"}
    assert frame["prob"].between(0, 1).all()
    counted = duckdb.sql(
        f"SELECT count(*), count(DISTINCT id) FROM read_parquet('{local_output}/part-*.parquet')"
    ).fetchall()
    assert counted == [(SAMPLES, SAMPLES)]
    top = duckdb.sql(
        f"SELECT label, count(*) FROM read_parquet('{local_output}/part-*.parquet') "
        "WHERE target_name = 'Egyptian cat' OR target_name = 'tabby' GROUP BY label"
    ).fetchall()
    assert dict(top).get("chelsea", 0) > 0  # crops of the cat photo are mostly called cats


def test_the_schema_says_how_the_maps_were_made(local_output):
    meta = read_metadata(local_output)
    assert meta["model"] == "efficientnet_lite0"
    assert meta["method"] == "gradcam" and meta["gradual"] is True
    assert meta["gradex_version"] == gradex.__version__
    assert meta["target_layer"] and len(meta["stages"]) >= 2
    assert meta["map_dtype"] == "uint8" and meta["map_shape"] == [224, 224]
    schema = pq.read_schema(next(local_output.glob("part-*.parquet")))
    assert json.loads(schema.metadata[b"gradex"]) == meta


def test_rows_and_maps_equal_gradex_explain_per_image(sample_root, local_output, tmp_path):
    chosen = sorted(p for p in sample_root.rglob("*") if p.is_file() and "broken" not in p.parts)
    chosen = chosen[::37][:7]
    assert main(["explain", *map(str, chosen), "--out", str(tmp_path / "cli")]) == 0
    report = json.loads((tmp_path / "cli" / "results.json").read_text())
    ids = [p.relative_to(sample_root).as_posix() for p in chosen]
    by_id = {r["id"]: r for r in rows(local_output).to_pylist() if r["id"] in ids}
    for image_id, record in zip(ids, report["images"], strict=True):
        row = by_id[image_id]
        assert row["target"] == record["target"]
        assert row["target_name"] == record["target_name"]
        assert row["score"] == pytest.approx(record["score"], rel=1e-4, abs=1e-4)
        assert row["top_classes"] == [c["class"] for c in record["top"]]
        np.testing.assert_allclose(row["top_probs"], [c["prob"] for c in record["top"]], atol=1e-5)
    # The maps: the dataset's against the Explainer's, quantised the same way (uint8).
    bundle = load_model()
    x = torch.stack([bundle.preprocess(load_rgb(p)) for p in chosen])
    exp = Explainer(bundle.model)(x)
    maps = gradex.load_maps(local_output, ids=ids)
    assert maps.ids == ids
    assert (maps.target == exp.target).all()
    assert (maps.saliency - exp.saliency[:, 0]).abs().max() <= 0.5 / 255 + 1e-4
    cam = gradex.metrics.min_max(
        torch.nn.functional.interpolate(
            exp.cam, size=(224, 224), mode="bilinear", align_corners=False
        )
    )[:, 0]
    assert (maps.cam - cam).abs().max() <= 0.5 / 255 + 1e-4


def test_load_maps_keeps_the_order_asked_and_names_missing_ids(local_output):
    everything = gradex.load_maps(local_output)
    assert len(everything.ids) == SAMPLES and everything.saliency.shape == (SAMPLES, 224, 224)
    picked = [everything.ids[5], everything.ids[0]]
    maps = gradex.load_maps(local_output, ids=picked)
    assert maps.ids == picked
    assert torch.equal(maps.saliency[0], everything.saliency[5])
    assert float(maps.saliency.max()) == 1.0 and float(maps.saliency.min()) >= 0.0
    with pytest.raises(KeyError, match="nope.jpg"):
        gradex.load_maps(local_output, ids=["nope.jpg"])


def test_a_rerun_after_completion_does_no_work(sample_root, local_output):
    before = {p: p.stat().st_mtime_ns for p in local_output.rglob("*.parquet")}
    summary = explain_dataset(
        sample_root,
        local_output,
        shard_size=64,
        batch_size=8,
        workers=1,
        device="cpu",
        progress=False,
    )
    assert summary.explained == 0 and summary.shards_written == 0
    assert summary.shards_skipped == 4
    assert {p: p.stat().st_mtime_ns for p in local_output.rglob("*.parquet")} == before


def test_another_jobs_output_is_refused(sample_root, local_output):
    with pytest.raises(OSError, match="another job's output"):
        explain_dataset(sample_root, local_output, shard_size=64, method="layercam", progress=False)
    with pytest.raises(OSError, match="another job's output"):
        explain_dataset(sample_root, local_output, shard_size=32, progress=False)


def test_a_second_job_on_the_same_output_at_once_is_refused(sample_root, tmp_path):
    import fcntl

    out = tmp_path / "maps"
    out.mkdir()
    with open(out / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(OSError, match="another gradex explain-dataset is writing"):
            explain_dataset(sample_root, out, progress=False)
    assert not list(out.glob("part-*"))


def test_parquet_files_that_no_job_recorded_are_not_touched(sample_root, tmp_path):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "part-00000.parquet").write_bytes(b"someone else's")
    with pytest.raises(OSError, match="no gradex job recorded"):
        explain_dataset(sample_root, out, progress=False)
    assert (out / "part-00000.parquet").read_bytes() == b"someone else's"
    assert not (out / JOB_FILE).exists()


def test_float16_maps_at_another_size_and_overlays(sample_root, tmp_path):
    listing = tmp_path / "few.txt"
    few = sorted(p for p in (sample_root / "chelsea").iterdir())[:5]
    listing.write_text("\n".join(str(p) for p in few) + "\n")
    out, pictures = tmp_path / "maps", tmp_path / "overlays"
    explain_dataset(
        listing,
        out,
        map_dtype="float16",
        map_size=64,
        overlays=pictures,
        batch_size=2,
        workers=0,
        progress=False,
    )
    meta = read_metadata(out)
    assert meta["map_dtype"] == "float16" and meta["map_shape"] == [64, 64]
    maps = gradex.load_maps(out)
    assert maps.saliency.shape == (5, 64, 64) and maps.saliency.max() == 1.0
    blob = rows(out)["saliency"][0].as_py()
    assert len(blob) == 64 * 64 * 2
    written = sorted(pictures.rglob("*.png"))
    assert len(written) == 5
    from PIL import Image

    with Image.open(written[0]) as picture:
        assert picture.size == (224, 224)


def test_targets_by_name_and_id_from_a_csv_table(sample_root, tmp_path):
    cats = sorted((sample_root / "chelsea").iterdir())[:3]
    table = tmp_path / "list.csv"
    table.write_text(f"path,target,label\n{cats[0]},goldfish,fish\n{cats[1]},1,\n{cats[2]},,cat\n")
    out = tmp_path / "maps"
    explain_dataset(table, out, workers=0, progress=False)
    got = rows(out).to_pylist()
    assert [r["target_name"] for r in got[:2]] == ["goldfish", "goldfish"]  # class 1
    assert got[2]["target"] == got[2]["top_classes"][0]  # no target: its top-1
    assert [r["label"] for r in got] == ["fish", None, "cat"]


def test_labels_name_the_classes_of_targets_and_rows(sample_root, tmp_path, capsys):
    """--labels: the class names of a fine-tuned model are what targets name and rows hold."""
    cats = sorted((sample_root / "chelsea").iterdir())[:2]
    model = torchvision.models.resnet18(num_classes=3).eval()
    weights = tmp_path / "fine_tuned.pth"
    torch.save({"epoch": 3, "model": model.state_dict()}, weights)
    labels = tmp_path / "classes.txt"
    labels.write_text("ok\nscratch\ndent\n")
    table = tmp_path / "list.csv"
    table.write_text(f"path,target\n{cats[0]},dent\n{cats[1]},\n")
    out = tmp_path / "maps"
    args = ["explain-dataset", str(table), "--out", str(out), "--model", "resnet18"]
    args += ["--weights", str(weights), "--labels", str(labels), "--workers", "0"]
    assert main([*args, "--top-k", "3"]) == 0
    got = rows(out).to_pylist()
    assert (got[0]["target"], got[0]["target_name"]) == (2, "dent")
    assert got[1]["target_name"] == ["ok", "scratch", "dent"][got[1]["top_classes"][0]]
    assert read_metadata(out)["labels"] == str(labels)
    # The labels decide the rows: the same job with other names is another job.
    labels.rename(tmp_path / "old.txt")
    other = tmp_path / "other.txt"
    other.write_text("a\nb\ndent\n")
    args[args.index(str(labels))] = str(other)
    assert main([*args, "--top-k", "3"]) != 0
    assert "holds another job's output" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("path,target\n{cat},no such class\n", "not one of the model's class names"),
        ("path,target\n{cat},1000\n", "out of range"),
        ("file\n{cat}\n", "needs a 'path' column"),
        ("path,id\n{cat},a\n{cat},a\n", "appears twice"),
    ],
)
def test_a_bad_table_is_refused_by_row_before_any_work(sample_root, tmp_path, table, message):
    cat = next((sample_root / "chelsea").iterdir())
    source = tmp_path / "list.csv"
    source.write_text(table.format(cat=cat))
    with pytest.raises(ValueError, match=message):
        explain_dataset(source, tmp_path / "maps", progress=False)
    assert not (tmp_path / "maps").exists()


def test_a_read_only_output_location_is_a_clear_error(sample_root, small_filesystem, capsys):
    place = small_filesystem("4m", read_only=True)
    code = main(["explain-dataset", str(sample_root), "--out", str(place / "maps")])
    assert code == 2
    error = capsys.readouterr().err
    assert f"--out {place / 'maps'}: not writable" in error
    assert "Traceback" not in error
    assert not os.listdir(place)


def test_a_full_disk_is_a_clear_error_and_leaves_no_half_shard(
    sample_root, small_filesystem, capsys
):
    place = small_filesystem("3m")  # holds a shard or two of 64 maps, not all four
    out = place / "maps"
    code = main(
        [
            "explain-dataset",
            str(sample_root),
            "--out",
            str(out),
            "--shard-size",
            "64",
            "--workers",
            "1",
        ]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "the disk is full" in error and "rerun the same command to resume" in error
    assert not list((out / STAGING_DIR).iterdir())
    for shard in out.glob("part-*.parquet"):  # whatever was committed is whole
        assert pq.read_table(shard).num_rows == 64
    for shard in (out / ERRORS_DIR).glob("*.parquet"):
        pq.read_table(shard)


@pytest.mark.needs_cuda
def test_on_a_gpu_the_rows_equal_the_cpus(sample_root, local_output, tmp_path):
    listing = tmp_path / "few.txt"
    few = sorted(p for p in (sample_root / "chelsea").iterdir())[:12]
    listing.write_text("".join(f"{p}\n" for p in few))
    on_cpu, on_gpu = tmp_path / "cpu", tmp_path / "gpu"
    for out, device in ((on_cpu, "cpu"), (on_gpu, "cuda")):
        explain_dataset(listing, out, batch_size=8, device=device, workers=1, progress=False)
    a, b = rows(on_cpu).to_pylist(), rows(on_gpu).to_pylist()
    assert [r["target"] for r in a] == [r["target"] for r in b]
    for x, y in zip(a, b, strict=True):
        # TF32 convolutions and other kernels than the CPU's.
        assert uint8_map_difference(x["saliency"], y["saliency"]) <= 2


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--shard-size", "0"], "--shard-size must be an int >= 1"),
        (["--map-size", "-3"], "--map-size must be an int >= 1"),
        (["--workers", "-1"], "--workers must be an int >= 0"),
        (["--actors", "2"], "--address and --actors are for --engine ray"),
        (["--engine", "ray", "--device", "cuda:1"], "--device cuda:1: the Ray engine takes"),
        (["--device", "meta"], "--device meta"),
        (["--model", "resnet5"], "--model 'resnet5': unknown model"),
    ],
)
def test_usage_errors_name_the_flag_before_any_work(sample_root, tmp_path, capsys, flags, message):
    out = tmp_path / "maps"
    assert main(["explain-dataset", str(sample_root), "--out", str(out), *flags]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert not out.exists()
