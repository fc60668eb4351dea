"""The Open Inference Protocol (V2 REST) against a real server: health, metadata, /infer with
FP32 tensors, outputs chosen by the request, and the maps equal to the Explainer's."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch

from .serving import MODEL


def infer(server, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=body, timeout=60)


def tensor_input(x: torch.Tensor, name: str = "input", datatype: str = "FP32") -> dict:
    return {
        "name": name,
        "shape": list(x.shape),
        "datatype": datatype,
        "data": x.flatten().tolist(),
    }


KINDS = {"FP32": np.float32, "FP16": "<f2", "UINT8": np.uint8, "INT64": np.int64}


def reply_json(answer: httpx.Response) -> tuple[dict, bytes]:
    """The JSON part of a reply and the binary tensors after it (the V2 binary extension)."""
    size = answer.headers.get("inference-header-content-length")
    if size is None:
        return answer.json(), b""
    return json.loads(answer.content[: int(size)]), answer.content[int(size) :]


def outputs(answer: httpx.Response) -> dict[str, np.ndarray]:
    reply, blob = reply_json(answer)
    got = {}
    for o in reply["outputs"]:
        kind = KINDS[o["datatype"]]
        binary = (o.get("parameters") or {}).get("binary_data_size")
        if binary is None:
            array = np.asarray(o["data"], dtype=kind)
        else:
            array, blob = np.frombuffer(blob[:binary], dtype=kind), blob[binary:]
        got[o["name"]] = array.reshape(o["shape"])
    return got


@pytest.fixture(scope="module")
def local(cat_image):
    from gradex import Explainer
    from gradex.models import load_model

    bundle = load_model()
    explainer = Explainer(bundle.model)
    cat = bundle.preprocess(cat_image)
    # Two different images in one request: the cat and the cat mirrored and darkened.
    x = torch.stack([cat, cat.flip(-1) * 0.8])
    return bundle, explainer, x


def test_health_and_metadata(serve_process):
    assert httpx.get(f"{serve_process.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{serve_process.url}/v2/health/ready").json() == {"ready": True}
    ready = httpx.get(f"{serve_process.url}/v2/models/{MODEL}/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    metadata = httpx.get(f"{serve_process.url}/v2/models/{MODEL}")
    assert metadata.status_code == 200 and metadata.json()["name"] == MODEL


def test_infer_explains_every_image_of_the_tensor(serve_process, local):
    bundle, explainer, x = local
    parameters = {"map": "float16", "binary_data_output": True}  # FP16 travels only as binary
    answer = infer(serve_process, {"inputs": [tensor_input(x)], "parameters": parameters})
    assert answer.status_code == 200, answer.text
    reply, _ = reply_json(answer)
    got = outputs(answer)
    assert set(got) == {"probabilities", "target", "score", "saliency", "cam"}
    expected = explainer(x)
    np.testing.assert_array_equal(got["target"], expected.target.numpy())
    np.testing.assert_allclose(got["score"], expected.score.numpy(), rtol=1e-4)
    np.testing.assert_allclose(
        got["probabilities"], expected.logits.softmax(dim=1).numpy(), atol=1e-5
    )
    assert got["saliency"].shape == (2, 1, 224, 224) and got["saliency"].dtype == np.float16
    np.testing.assert_allclose(got["saliency"], expected.saliency.numpy(), atol=1e-3)
    np.testing.assert_allclose(got["cam"], expected.cam.numpy(), rtol=1e-4, atol=1e-5)
    assert reply["model_name"] == MODEL
    assert reply["parameters"]["target_layer"] == str(explainer.layers_for(x).target.ref)


def test_a_target_tensor_chooses_classes_with_minus_one_for_top1(serve_process, local):
    bundle, explainer, x = local
    tabby = bundle.class_names.index("tabby")
    target = torch.tensor([tabby, -1])
    body = {"inputs": [tensor_input(x), tensor_input(target, "target", "INT64")]}
    got = outputs(infer(serve_process, body))
    top1 = int(explainer(x[1:]).target[0])
    np.testing.assert_array_equal(got["target"], [tabby, top1])
    expected = explainer(x, target=[tabby, top1]).saliency
    np.testing.assert_allclose(got["saliency"] / 255.0, expected.numpy(), atol=1 / 255 + 1e-6)
    assert got["saliency"].dtype == np.uint8  # the default map format


def test_asking_only_for_probabilities_runs_a_prediction(serve_process, local):
    bundle, explainer, x = local
    body = {"inputs": [tensor_input(x)], "outputs": [{"name": "probabilities"}]}
    answer = infer(serve_process, body)
    assert answer.status_code == 200, answer.text
    got = outputs(answer)
    assert set(got) == {"probabilities"}
    with torch.no_grad():
        expected = bundle.model(x).softmax(dim=1)
    np.testing.assert_allclose(got["probabilities"], expected.numpy(), atol=1e-5)


def test_asking_for_some_outputs_returns_those(serve_process, local):
    _, _, x = local
    body = {"inputs": [tensor_input(x[:1])], "outputs": [{"name": "target"}, {"name": "cam"}]}
    got = outputs(infer(serve_process, body))
    assert set(got) == {"target", "cam"}


def test_float16_maps_as_json_are_refused_by_the_protocols_rule(serve_process, local):
    _, _, x = local
    answer = infer(serve_process, {"inputs": [tensor_input(x)], "parameters": {"map": "float16"}})
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("parameters.map:")
