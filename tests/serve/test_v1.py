"""KServe's V1 protocol against a real server: models, :predict, :explain, every map format,
and the served explanation equal to gradex's own Explainer on the same image."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from .serving import MODEL, encoded


def post(server, verb: str, body: dict, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/models/{MODEL}:{verb}", json=body, timeout=60, **kwargs)


def decode_map(answer: dict) -> np.ndarray:
    raw = base64.b64decode(answer["b64"])
    dtype = {"uint8": np.uint8, "float16": "<f2"}[answer["format"]]
    return np.frombuffer(raw, dtype=dtype).reshape(answer["shape"])


@pytest.fixture(scope="module")
def local(cat_image):
    """The same explanation computed in this process: the embedded model, its preprocessing."""
    from gradex import Explainer
    from gradex.models import load_model

    bundle = load_model()
    explainer = Explainer(bundle.model)
    sent = Image.open(io.BytesIO(base64.b64decode(encoded(cat_image)))).convert("RGB")
    x = bundle.preprocess(sent).unsqueeze(0)  # the JPEG the tests send, decoded
    return bundle, explainer, x


def test_the_model_is_listed_and_ready(serve_process):
    assert httpx.get(f"{serve_process.url}/v1/models").json() == {"models": [MODEL]}
    answer = httpx.get(f"{serve_process.url}/v1/models/{MODEL}")
    assert answer.status_code == 200
    assert answer.json() == {"name": MODEL, "ready": True}


def test_root_is_liveness_for_programs_and_the_page_for_browsers(serve_process):
    assert httpx.get(serve_process.url + "/").json() == {"status": "alive"}
    page = httpx.get(serve_process.url + "/", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<html" in page.text.lower()


def test_predict_gives_top_k_classes(serve_process, cat_image, local):
    bundle, explainer, x = local
    body = {"instances": [{"image": {"b64": encoded(cat_image)}}], "parameters": {"top_k": 3}}
    answer = post(serve_process, "predict", body)
    assert answer.status_code == 200, answer.text
    top = answer.json()["predictions"][0]["top_k"]
    assert len(top) == 3
    with torch.no_grad():
        expected = bundle.model(x).softmax(dim=1)[0]
    # JPEG decoding in the server and here are the same bytes through the same code.
    assert top[0]["class"] == int(expected.argmax())
    assert top[0]["name"] == bundle.class_names[top[0]["class"]]
    assert "cat" in top[0]["name"]
    assert top[0]["prob"] == pytest.approx(float(expected.max()), abs=1e-4)
    assert [t["prob"] for t in top] == sorted((t["prob"] for t in top), reverse=True)


def test_explain_equals_the_explainer_in_process(serve_process, cat_image, local):
    bundle, explainer, x = local
    body = {
        "instances": [{"image": {"b64": encoded(cat_image)}}],
        "parameters": {"map": "float16"},
    }
    answer = post(serve_process, "explain", body)
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    (e,) = reply["explanations"]
    expected = explainer(x)
    assert e["target"] == int(expected.target[0])
    assert e["target_name"] == bundle.class_names[e["target"]]
    assert e["score"] == pytest.approx(float(expected.score[0]), rel=1e-4)
    saliency, cam = decode_map(e["saliency"]), decode_map(e["cam"])
    assert saliency.shape == (224, 224) and cam.shape == tuple(expected.cam.shape[-2:])
    # float16 carries 11 bits: maps in [0, 1] round-trip within 5e-4.
    np.testing.assert_allclose(saliency, expected.saliency[0, 0].numpy(), atol=1e-3)
    np.testing.assert_allclose(cam, expected.cam[0, 0].numpy(), rtol=2e-3, atol=2e-3)
    assert reply["method"] == "gradcam"
    layers = explainer.layers_for(x)
    assert reply["layers"] == {
        "target": str(layers.target.ref),
        "stages": [str(s.ref) for s in layers.stages],
    }
    timings = reply["timings_ms"]
    assert {"decode", "queue", "model", "encode", "total", "batch_size"} <= set(timings)
    assert timings["total"] >= timings["model"] > 0


def test_uint8_maps_are_the_float_maps_rounded(serve_process, cat_image):
    image = {"image": {"b64": encoded(cat_image, "PNG")}}
    as_float = post(
        serve_process, "explain", {"instances": [image], "parameters": {"map": "float16"}}
    )
    as_uint8 = post(serve_process, "explain", {"instances": [image]})  # uint8 is the default
    f = decode_map(as_float.json()["explanations"][0]["saliency"]).astype(np.float32)
    u = decode_map(as_uint8.json()["explanations"][0]["saliency"])
    assert u.dtype == np.uint8 and u.max() == 255 and u.min() == 0
    assert np.abs(u.astype(np.float32) - f * 255).max() <= 1.0


def test_a_target_by_id_or_by_name_is_explained(serve_process, cat_image, local):
    bundle, explainer, x = local
    tabby = bundle.class_names.index("tabby")
    b64 = encoded(cat_image)
    body = {
        "instances": [
            {"image": {"b64": b64}, "target": tabby},
            {"image": {"b64": b64}, "target": "tabby"},
            {"image": {"b64": b64}},
        ],
        "parameters": {"map": "float16"},
    }
    answer = post(serve_process, "explain", body)
    assert answer.status_code == 200, answer.text
    by_id, by_name, top1 = answer.json()["explanations"]
    assert by_id["target"] == by_name["target"] == tabby
    assert top1["target"] == int(explainer(x).target[0]) != tabby
    expected = explainer(x, target=tabby).saliency[0, 0].numpy()
    np.testing.assert_allclose(decode_map(by_id["saliency"]), expected, atol=1e-3)
    np.testing.assert_array_equal(decode_map(by_id["saliency"]), decode_map(by_name["saliency"]))


def test_png_maps_are_overlays_at_input_size(serve_process, cat_image):
    body = {"instances": [{"image": {"b64": encoded(cat_image)}}], "parameters": {"map": "png"}}
    e = post(serve_process, "explain", body).json()["explanations"][0]
    for key in ("saliency", "cam"):
        assert e[key]["format"] == "png"
        picture = Image.open(io.BytesIO(base64.b64decode(e[key]["b64"])))
        assert picture.format == "PNG" and picture.size == (224, 224) and picture.mode == "RGB"
    coarse = np.asarray(Image.open(io.BytesIO(base64.b64decode(e["cam"]["b64"]))))
    sharp = np.asarray(Image.open(io.BytesIO(base64.b64decode(e["saliency"]["b64"]))))
    assert not np.array_equal(coarse, sharp)  # two different maps over the same photo


def test_map_none_leaves_the_maps_out(serve_process, cat_image):
    body = {"instances": [{"image": {"b64": encoded(cat_image)}}], "parameters": {"map": "none"}}
    e = post(serve_process, "explain", body).json()["explanations"][0]
    assert "saliency" not in e and "cam" not in e
    assert e["top_k"] and e["target_name"]


def test_grey_and_rgba_images_are_explained_as_the_rgb_they_show(serve_process, cat_image):
    instances = [
        {"image": {"b64": encoded(cat_image.convert("L"), "PNG")}},
        {"image": {"b64": encoded(cat_image.convert("RGBA"), "PNG")}},
    ]
    answer = post(serve_process, "explain", {"instances": instances, "parameters": {"map": "none"}})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["explanations"]) == 2


def test_exif_orientation_is_applied(serve_process, cat_image):
    """A phone photo stored sideways with an EXIF rotation is explained upright."""
    upright = {"image": {"b64": encoded(cat_image, "PNG")}}
    stored = cat_image.transpose(Image.Transpose.ROTATE_90)  # what the sensor wrote
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif, quality=95)
    rotated = {"image": {"b64": base64.b64encode(buffer.getvalue()).decode()}}
    body = {"instances": [upright, rotated], "parameters": {"map": "float16"}}
    a, b = post(serve_process, "explain", body).json()["explanations"]
    assert a["target"] == b["target"]
    corr = np.corrcoef(decode_map(a["saliency"]).ravel(), decode_map(b["saliency"]).ravel())[0, 1]
    assert corr > 0.9  # JPEG at 95 vs PNG: close, not identical


def test_labels_name_the_classes_in_answers(start_server, cat_image, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"kind {i}\n" for i in range(1000)))
    server = start_server(["--labels", str(labels), "--max-batch", "1"])
    server.wait_ready()
    instance = {"image": {"b64": encoded(cat_image)}, "target": "kind 281"}
    body = {"instances": [instance], "parameters": {"map": "none", "top_k": 2}}
    (e,) = post(server, "explain", body).json()["explanations"]
    assert e["target"] == 281 and e["target_name"] == "kind 281"
    assert [entry["name"] for entry in e["top_k"]] == [f"kind {c['class']}" for c in e["top_k"]]
