"""Bad input against a real server: a 4xx JSON error that names the field, checked before
batching (so a bad request never fails its batch-mates), and the server serving on after."""

from __future__ import annotations

import base64
import io
import threading

import httpx
import numpy as np
import pytest
from PIL import Image

from .serving import MODEL, encoded

V1 = f"/v1/models/{MODEL}"


def post(server, path: str, **kwargs) -> httpx.Response:
    return httpx.post(server.url + path, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def good(cat_image):
    return {"image": {"b64": encoded(cat_image)}}


def png_bytes(width: int, height: int) -> bytes:
    # A one-bit PNG compresses to almost nothing: a small body declaring many pixels.
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "instances"),
        ({"instances": []}, "instances"),
        ({"instances": "cat"}, "instances"),
        ({"instances": [42]}, "instances[0]"),
        ({"instances": [{"picture": {}}]}, "instances[0].image"),
        ({"instances": [{"image": "abc"}]}, "instances[0].image"),
        ({"instances": [{"image": {"b64": "not base64!"}}]}, "instances[0].image.b64"),
        ({"instances": [{"image": {"b64": 5}}]}, "instances[0].image.b64"),
        ({"instances": [{"image": {"b64": ""}}]}, "instances[0].image.b64"),
        (
            {"instances": [{"image": {"b64": base64.b64encode(b"GIF89a broken").decode()}}]},
            "instances[0].image.b64",
        ),
        (
            {"instances": [{"image": {"b64": base64.b64encode(b"plain text").decode()}}]},
            "instances[0].image.b64",
        ),
    ],
)
@pytest.mark.parametrize("verb", ["predict", "explain"])
def test_malformed_instances_are_named(serve_process, verb, body, field):
    answer = post(serve_process, f"{V1}:{verb}", json=body)
    assert answer.status_code == 400, answer.text
    message = answer.json()["error"]
    # gradex's messages start with the field; KServe's own check says 'Expected "instances"'.
    assert message.startswith(field + ":") or f'"{field}"' in message, message
    assert "0x" not in message  # no object addresses from the server's insides


def test_the_field_of_a_later_instance_is_named(serve_process, good):
    bad = {"image": {"b64": base64.b64encode(b"no picture").decode()}}
    answer = post(serve_process, f"{V1}:explain", json={"instances": [good, good, bad]})
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("instances[2].image.b64:")


@pytest.mark.parametrize(
    ("target", "why"),
    [
        (1000, "out of range"),
        (-1, "out of range"),
        ("no such class", "no class named"),
        (2.0, "class id or a class name"),
        (True, "class id or a class name"),
        ([1], "class id or a class name"),
    ],
)
def test_bad_targets_are_named(serve_process, good, target, why):
    body = {"instances": [{**good, "target": target}]}
    answer = post(serve_process, f"{V1}:explain", json=body)
    assert answer.status_code == 400
    message = answer.json()["error"]
    assert message.startswith("instances[0].target:") and why in message, message


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"map": "jpeg"}, "parameters.map"),
        ({"top_k": 0}, "parameters.top_k"),
        ({"top_k": 1001}, "parameters.top_k"),
        ({"top_k": "5"}, "parameters.top_k"),
        ("png", "parameters"),
    ],
)
def test_bad_parameters_are_named(serve_process, good, parameters, field):
    answer = post(
        serve_process, f"{V1}:explain", json={"instances": [good], "parameters": parameters}
    )
    assert answer.status_code == 400
    assert answer.json()["error"].startswith(field + ":")


def test_unknown_fields_in_an_instance_are_refused(serve_process, good):
    answer = post(serve_process, f"{V1}:explain", json={"instances": [{**good, "targte": 3}]})
    assert answer.status_code == 400
    assert "targte" in answer.json()["error"]


def test_a_body_that_is_not_json_is_refused(serve_process):
    for headers in ({"Content-Type": "application/json"}, {}):
        answer = post(serve_process, f"{V1}:predict", content=b"{not json", headers=headers)
        assert answer.status_code == 400
        assert "error" in answer.json()


def test_unknown_model_is_404(serve_process, good):
    v1 = {"instances": [good]}
    v2 = {"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [0.5]}]}
    for path, body in (
        ("/v1/models/nope:explain", v1),
        ("/v1/models/nope:predict", v1),
        ("/v2/models/nope/infer", v2),
    ):
        answer = post(serve_process, path, json=body)
        assert answer.status_code == 404, (path, answer.text)
        assert "nope" in answer.json()["error"]
    assert httpx.get(serve_process.url + "/v1/models/nope").status_code == 404


def test_too_many_pixels_is_413_before_decoding(serve_process):
    # 8000 x 6000 = 48 million pixels, over the default 40 million; the PNG is ~6 kB.
    data = base64.b64encode(png_bytes(8000, 6000)).decode()
    answer = post(serve_process, f"{V1}:explain", json={"instances": [{"image": {"b64": data}}]})
    assert answer.status_code == 413
    message = answer.json()["error"]
    assert message.startswith("instances[0].image.b64:") and "--max-image-pixels" in message


def test_a_thin_strip_is_413(serve_process):
    data = base64.b64encode(png_bytes(6000, 1)).decode()
    answer = post(serve_process, f"{V1}:explain", json={"instances": [{"image": {"b64": data}}]})
    assert answer.status_code == 413
    assert "aspect ratio" in answer.json()["error"]


def test_a_body_over_the_limit_is_413_unread(serve_process):
    big = b"x" * (17 * 1024 * 1024)  # the default limit is 16 MiB
    answer = post(serve_process, f"{V1}:explain", content=big)
    assert answer.status_code == 413
    assert "--max-body-mb" in answer.json()["error"]


def test_a_chunked_body_over_the_limit_is_413(serve_process):
    def chunks():
        for _ in range(40):
            yield b"y" * (512 * 1024)

    answer = post(serve_process, f"{V1}:explain", content=chunks())
    assert answer.status_code == 413
    assert "--max-body-mb" in answer.json()["error"]


@pytest.mark.parametrize(
    ("tensor", "field"),
    [
        ({"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32"}, "inputs[0].shape"),
        ({"name": "input", "shape": [1, 224, 224, 3], "datatype": "FP32"}, "inputs[0].shape"),
        ({"name": "input", "shape": [3, 224, 224], "datatype": "FP32"}, "inputs[0].shape"),
        ({"name": "input", "shape": [1, 3, 224, 224], "datatype": "INT32"}, "inputs[0].datatype"),
        ({"name": "pixels", "shape": [1, 3, 224, 224], "datatype": "FP32"}, "inputs[0].name"),
    ],
)
def test_bad_v2_tensors_are_named(serve_process, tensor, field):
    count = int(np.prod(tensor["shape"]))
    tensor = {**tensor, "data": [0.5] * count}
    answer = post(serve_process, f"/v2/models/{MODEL}/infer", json={"inputs": [tensor]})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith(field + ":"), answer.text


def test_a_v2_body_that_breaks_the_schema_is_named_briefly(serve_process, good):
    """FastAPI's own validation error echoes the whole input (megabytes of pixels): refused with
    the field and the reason only."""
    answer = post(serve_process, f"/v2/models/{MODEL}/infer", json={"instances": [good]})
    assert answer.status_code == 400
    message = answer.json()["error"]
    assert message.startswith("inputs:") and len(message) < 200, message


def test_v2_non_finite_values_and_bad_targets_are_named(serve_process):
    values = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    image = {"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32"}
    # JSON has no NaN; 1e39 overflows float32 to infinity, which is refused just the same.
    overflowing = values.ravel().tolist()
    overflowing[1234] = 1e39
    answer = post(
        serve_process,
        f"/v2/models/{MODEL}/infer",
        json={"inputs": [{**image, "data": overflowing}]},
    )
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("inputs[0].data:")
    target = {"name": "target", "shape": [1], "datatype": "INT64", "data": [1000]}
    answer = post(
        serve_process,
        f"/v2/models/{MODEL}/infer",
        json={"inputs": [{**image, "data": values.ravel().tolist()}, target]},
    )
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("inputs[1].data[0]:")
    answer = post(
        serve_process,
        f"/v2/models/{MODEL}/infer",
        json={"inputs": [{**image, "data": values.ravel().tolist()}], "outputs": [{"name": "x"}]},
    )
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("outputs[0].name:")


def test_a_bad_request_never_fails_its_batch_mates(serve_process, good):
    """Good and bad requests sent together (the server waits 20 ms to fill a batch of 4): every
    good one is answered 200, every bad one 400, and the server serves on."""
    bad = {"image": {"b64": base64.b64encode(b"not an image").decode()}}
    results: dict[int, int] = {}

    def send(i: int) -> None:
        body = {"instances": [good if i % 2 == 0 else bad], "parameters": {"map": "none"}}
        results[i] = post(serve_process, f"{V1}:explain", json=body).status_code

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: 200 if i % 2 == 0 else 400 for i in range(8)}
    after = post(serve_process, f"{V1}:explain", json={"instances": [good]})
    assert after.status_code == 200
