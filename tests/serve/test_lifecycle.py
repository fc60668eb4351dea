"""A server's life against real processes: refused flags, readiness after warm-up, batching,
a full queue, SIGTERM while busy, and nothing written to disk."""

from __future__ import annotations

import signal
import socket
import threading
import time

import httpx
import pytest

from .serving import MODEL, encoded

EXPLAIN = f"/v1/models/{MODEL}:explain"


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--port", "0"], "--port"),
        (["--port", "70000"], "--port"),
        (["--max-batch", "0"], "--max-batch"),
        (["--max-queue", "0"], "--max-queue"),
        (["--max-wait-ms", "-1"], "--max-wait-ms"),
        (["--max-body-mb", "0"], "--max-body-mb"),
        (["--model", "resnet5"], "resnet5"),
        (["--model", "resnet50"], "--weights"),
        (["--device", "cuda:7"], "--device"),
        (["--name", "a/b"], "--name"),
    ],
)
def test_bad_flags_exit_2_with_one_line_before_serving(flags, named, capsys):
    from gradex.cli import main

    assert main(["serve", *flags]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradex: error:") and named in lines[0], err


def test_ready_only_after_warm_up_while_live_from_the_start(start_server):
    # Many warm-up rounds on the CPU (a GPU would finish them before the port opens) keep the
    # not-ready window open long enough to be seen.
    server = start_server(["--max-batch", "4", "--warmup", "25", "--device", "cpu"])
    server.wait_live()
    ready = httpx.get(server.url + "/v2/health/ready")
    model = httpx.get(f"{server.url}/v1/models/{MODEL}")
    assert ready.status_code == 503 and model.status_code == 503
    assert "ready on" not in server.log()
    server.wait_ready()
    assert httpx.get(f"{server.url}/v1/models/{MODEL}").json()["ready"] is True
    assert "gradex serve: ready on http://127.0.0.1" in server.log()


def send_together(server, bodies, path=EXPLAIN) -> list[httpx.Response]:
    results = [None] * len(bodies)

    def send(i):
        results[i] = httpx.post(server.url + path, json=bodies[i], timeout=120)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_requests_share_batches(serve_process, cat_image):
    """Eight single-image requests at once into a server that batches up to 4 (waiting 20 ms):
    some run in a batch of more than one, and each still gets its own answer."""
    body = {"instances": [{"image": {"b64": encoded(cat_image)}}], "parameters": {"map": "none"}}
    answers = send_together(serve_process, [body] * 8)
    assert all(a.status_code == 200 for a in answers)
    sizes = [a.json()["timings_ms"]["batch_size"] for a in answers]
    assert max(sizes) > 1 and max(sizes) <= 4, sizes
    assert len({a.json()["explanations"][0]["target"] for a in answers}) == 1


def test_a_full_queue_answers_503_with_retry_after_and_serves_on(start_server, cat_image):
    server = start_server(["--max-batch", "1", "--max-queue", "2"])
    server.wait_ready()
    body = {"instances": [{"image": {"b64": encoded(cat_image)}}], "parameters": {"map": "none"}}
    answers = send_together(server, [body] * 24)
    codes = sorted(a.status_code for a in answers)
    assert set(codes) == {200, 503}, codes
    for a in answers:
        if a.status_code == 503:
            assert int(a.headers["Retry-After"]) >= 1
            assert "--max-queue" in a.json()["error"]
    # A request of more images than the queue may ever hold is refused outright.
    too_many = {"instances": body["instances"] * 3}
    assert httpx.post(server.url + EXPLAIN, json=too_many, timeout=60).status_code == 413
    assert httpx.post(server.url + EXPLAIN, json=body, timeout=60).status_code == 200


def test_sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0(start_server, cat_image):
    server = start_server(["--max-batch", "2"])
    server.wait_ready()
    body = {"instances": [{"image": {"b64": encoded(cat_image)}}] * 2}
    answers: list = []

    def send():
        answers.append(httpx.post(server.url + EXPLAIN, json=body, timeout=120))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.0)  # every request sent and queued: six batches of two take seconds here
    server.process.send_signal(signal.SIGTERM)
    for t in threads:
        t.join()
    assert [a.status_code for a in answers] == [200] * 6
    assert server.process.wait(60) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/v2/health/live", timeout=2)


def test_nothing_is_written_to_disk(start_server, tmp_path, cat_image):
    """The working folder and HOME stay empty: no caches, logs or uploads of its own."""
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    server = start_server(
        ["--max-batch", "2"],
        cwd=work,
        env={"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "MPLCONFIGDIR": ""},
    )
    server.wait_ready()
    b64 = encoded(cat_image)
    for map_format in ("png", "uint8"):
        body = {"instances": [{"image": {"b64": b64}}], "parameters": {"map": map_format}}
        assert httpx.post(server.url + EXPLAIN, json=body, timeout=60).status_code == 200
    assert server.stop() == 0
    assert list(work.iterdir()) == [] and list(home.rglob("*")) == []


def _own_address() -> str | None:
    """This machine's address on its first non-loopback interface (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_by_default_only_loopback_is_served(serve_process):
    """KServe's own server listens on 0.0.0.0; gradex's default is 127.0.0.1."""
    assert f"Uvicorn running on http://127.0.0.1:{serve_process.port}" in serve_process.log()
    address = _own_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to try")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{address}:{serve_process.port}/v2/health/live", timeout=2)
    assert httpx.get(serve_process.url + "/v2/health/live").status_code == 200


def test_a_torchvision_model_with_local_weights_is_served(start_server, tmp_path, cat_image):
    """Any model `gradex explain` takes: here ResNet-18 with random weights from a local file,
    preprocessed with torchvision's own transform, explained with LayerCAM."""
    import torch
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    server = start_server(
        [
            "--model",
            "resnet18",
            "--weights",
            str(weights),
            "--method",
            "layercam",
            "--max-batch",
            "1",
            "--device",
            "cpu",
        ]
    )
    server.wait_ready()
    body = {"instances": [{"image": {"b64": encoded(cat_image)}}]}
    answer = httpx.post(f"{server.url}/v1/models/resnet18:explain", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    assert reply["method"] == "layercam" and reply["layers"]["target"].startswith("layer4")
    e = reply["explanations"][0]
    assert e["saliency"]["shape"] == [224, 224] and e["cam"]["shape"] == [7, 7]
