"""deploy/: the Dockerfile and the KServe manifest agree with each other and with the server.

No Docker engine is needed: the image's command line (ENTRYPOINT + the manifest's args, which
replace the image's CMD in a pod) runs here as a local process, with `python -m gradex` for the
installed `gradex` script and a free port for 8080; the probes the cluster would send are sent to
it, and it must drain and exit 0 on SIGTERM as it would when a pod stops.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="pyyaml comes with the serve extra (kserve)")

from .serving import ServerProcess, free_port  # noqa: E402 - after the importorskip

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
MANIFEST = ROOT / "deploy" / "inferenceservice.yaml"
DEFAULT_NAME = "efficientnet_lite0"
# GET routes of the spec that answer 200 on a ready server; {name} is the model's URL name.
SERVED_GET_ROUTES = (
    "/",
    "/v1/models",
    "/v1/models/{name}",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/{name}",
    "/v2/models/{name}/ready",
)
READY_WITHIN_S = 120  # model load + warm-up on this 2-core CI machine
EXIT_WITHIN_S = 30


# --- the files ---------------------------------------------------------------------------------


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = (pending + stripped).strip()
        pending = ""
        if whole:
            keyword, _, rest = whole.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert starts, "the Dockerfile has no FROM"
    return instructions[starts[-1] :]


def _exec_form(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    """The last `keyword` of the stage, which must be in JSON exec form: in shell form /bin/sh
    is PID 1 and does not pass the pod's SIGTERM on, so the server could not drain."""
    found = [rest for kw, rest in instructions if kw == keyword]
    assert found, f"the final stage has no {keyword}"
    try:
        value = json.loads(found[-1])
    except json.JSONDecodeError as error:
        raise AssertionError(f"{keyword} is not in JSON exec form: {found[-1]!r}") from error
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), found[-1]
    return value


@pytest.fixture(scope="module")
def image() -> dict:
    final = _final_stage(_dockerfile_instructions(DOCKERFILE.read_text()))
    return {
        "entrypoint": _exec_form(final, "ENTRYPOINT"),
        "cmd": _exec_form(final, "CMD"),
        "expose": [rest for kw, rest in final if kw == "EXPOSE"],
        "user": [rest for kw, rest in final if kw == "USER"],
    }


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


@pytest.fixture(scope="module")
def container(manifest) -> dict:
    containers = manifest["spec"]["predictor"]["containers"]
    assert len(containers) == 1, "one container: KServe's custom predictor"
    return containers[0]


def _option(args: list[str], flag: str, default: str | None = None) -> str | None:
    """The value of `--flag VALUE` or `--flag=VALUE`, the last one winning as in argparse."""
    value = default
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def _with_port(args: list[str], port: int) -> list[str]:
    out, replace_next = [], False
    for arg in args:
        if replace_next:
            out.append(str(port))
            replace_next = False
        elif arg == "--port":
            out.append(arg)
            replace_next = True
        elif arg.startswith("--port="):
            out.append(f"--port={port}")
        else:
            out.append(arg)
    return out


def _model_name(args: list[str]) -> str:
    return _option(args, "--name") or _option(args, "--model") or DEFAULT_NAME


def _served_paths(name: str) -> set[str]:
    return {route.format(name=name) for route in SERVED_GET_ROUTES}


def _probes(container: dict) -> dict[str, dict]:
    return {
        kind: container[kind]
        for kind in ("readinessProbe", "livenessProbe", "startupProbe")
        if kind in container
    }


def test_image_runs_gradex_serve_on_all_interfaces(image):
    assert image["entrypoint"] == ["gradex", "serve"]
    assert _option(image["cmd"], "--host") == "0.0.0.0", "127.0.0.1 is unreachable in a pod"
    port = _option(image["cmd"], "--port")
    assert port is not None and port.isdigit()
    assert any(port in rest.split() for rest in image["expose"]), (port, image["expose"])
    assert image["user"] and image["user"][-1].split(":")[0] not in ("root", "0"), image["user"]


def test_image_installs_an_extra_that_brings_kserve():
    # pip only warns about an unknown extra, so a missing one would surface as a pod that
    # cannot import kserve, not as a failed build.
    tomllib = pytest.importorskip("tomllib")
    runs = " ".join(
        rest for kw, rest in _dockerfile_instructions(DOCKERFILE.read_text()) if kw == "RUN"
    )
    extras = re.findall(r"\.\[([\w,-]+)\]", runs)
    assert extras, "the Dockerfile installs no `.[extra]` of the repository"
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get(
        "optional-dependencies", {}
    )
    wanted = {name for group in extras for name in group.split(",")}
    assert wanted <= set(declared), f"pyproject.toml has no extra {sorted(wanted - set(declared))}"
    requirements = [req for name in wanted for req in declared[name]]
    assert any(re.match(r"kserve\b", req) for req in requirements), requirements


def test_manifest_agrees_with_the_image(image, container):
    args = container["args"]
    # Kubernetes' `command` would replace ENTRYPOINT; `args` replaces CMD, so it must carry
    # the CMD's host and port itself.
    assert "command" not in container, "the image's ENTRYPOINT (gradex serve) must run"
    assert _option(args, "--host") == _option(image["cmd"], "--host")
    port = _option(args, "--port")
    assert port == _option(image["cmd"], "--port")
    assert container["ports"] == [{"containerPort": int(port), "protocol": "TCP"}]
    for flag in ("--max-batch", "--max-wait-ms", "--max-queue"):
        assert _option(args, flag) is not None, f"{flag} is not set in the manifest"


def test_manifest_probes_hit_served_routes(container):
    probes = _probes(container)
    assert {"readinessProbe", "livenessProbe"} <= set(probes)
    assert probes["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    served = _served_paths(_model_name(container["args"]))
    port = int(_option(container["args"], "--port"))
    for kind, probe in probes.items():
        assert probe["httpGet"]["path"] in served, (kind, probe)
        assert int(probe["httpGet"].get("port", port)) == port, (kind, probe)
    # The liveness probe must outlast the warm-up, or the kubelet kills a pod still loading.
    liveness = probes["livenessProbe"]
    patience = liveness.get("initialDelaySeconds", 0) + liveness.get(
        "periodSeconds", 10
    ) * liveness.get("failureThreshold", 3)
    assert patience >= READY_WITHIN_S, f"liveness gives up after {patience} s"


def test_manifest_autoscaling_fits_the_batcher(manifest, container):
    predictor = manifest["spec"]["predictor"]
    args = container["args"]
    max_batch = int(_option(args, "--max-batch"))
    max_queue = int(_option(args, "--max-queue"))
    assert predictor["scaleMetric"] == "concurrency"
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    # Knative scales out past scaleTarget in-flight requests per pod: below one batch a pod
    # would never batch fully; containerConcurrency caps a pod below the server's own queue
    # limit, so Knative holds the excess instead of the server refusing it with 503.
    assert max_batch <= predictor["scaleTarget"] <= predictor["containerConcurrency"]
    assert predictor["containerConcurrency"] <= max_queue
    # Knative mode: `timeout` is also the pod's grace period (Knative rejects
    # terminationGracePeriodSeconds); it must cover the queue-proxy's drain (about 30 s) and
    # the server's (KServe's default 30 s).
    mode = manifest["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode")
    assert mode in ("Serverless", "Knative")
    assert "terminationGracePeriodSeconds" not in predictor
    assert predictor["timeout"] >= 60


def test_manifest_args_parse_with_gradex_parser(image, container):
    from gradex.cli import _parser

    for args in (image["cmd"], container["args"]):
        try:
            parsed = _parser().parse_args([*image["entrypoint"][1:], *args])
        except SystemExit as error:
            pytest.fail(f"`gradex serve {' '.join(args)}` does not parse (exit {error.code})")
        assert parsed.command == "serve"
        assert parsed.host == "0.0.0.0"
        assert parsed.port == int(_option(args, "--port"))


# --- the command line, run ----------------------------------------------------------------------


def _get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _post_json(url: str, body: dict, timeout: float = 120.0) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture(scope="module")
def server(image, container, tmp_path_factory):
    """ENTRYPOINT + the manifest's args (what a pod runs), on a free port."""
    port = free_port("0.0.0.0")  # the server listens on every interface
    args = _with_port(container["args"], port)
    entrypoint = image["entrypoint"]
    assert entrypoint[0] == "gradex"
    command = [sys.executable, "-m", "gradex", *entrypoint[1:], *args]
    log = tmp_path_factory.mktemp("serve") / "server.log"
    running = ServerProcess(command=command, port=port, name=_model_name(args), log=log, cwd=ROOT)
    try:
        running.wait_ready(READY_WITHIN_S)
        yield running
    finally:
        running.stop()


def test_server_announces_ready_on_all_interfaces(server):
    # The spec's line; details may follow the name inside the parentheses.
    expected = rf"gradex serve: ready on http://0\.0\.0\.0:{server.port} \(model {server.name}\b"
    assert re.search(expected, server.log()), server.log()


def test_liveness_answers_while_warming_up(server):
    # A pod whose liveness fails during warm-up gets restarted before it is ever ready.
    if not server.live_while_warming:
        pytest.skip("the server was ready before its warm-up could be observed")
    assert set(server.live_while_warming) == {200}, server.live_while_warming


def test_model_metadata_answers(server):
    status, body = _get(f"{server.url}/v2/models/{server.name}")
    assert status == 200, body[:500]
    assert json.loads(body)["name"] == server.name
    status, body = _get(f"{server.url}/v2/models/no_such_model")
    assert status == 404, body[:500]


def test_probe_paths_answer_200(server, container):
    # The static route table the probe test checks against, held to the server itself.
    for path in sorted(_served_paths(server.name)):
        status, body = _get(server.url + path)
        assert status == 200, (path, status, body[:500])
    for kind, probe in _probes(container).items():
        status, body = _get(server.url + probe["httpGet"]["path"])
        assert status == 200, (kind, status, body[:500])


def _png_b64(seed: int) -> str:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (256, 320, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_explain_answers(server):
    body = {"instances": [{"image": {"b64": _png_b64(0)}}], "parameters": {"map": "uint8"}}
    status, answer = _post_json(f"{server.url}/v1/models/{server.name}:explain", body)
    assert status == 200, answer[:500]
    explanation = json.loads(answer)["explanations"][0]
    assert explanation["saliency"]["format"] == "uint8"


def test_sigterm_drains_in_flight_requests_and_exits_0(server):
    """Last in this module: it stops the server, as a pod's stop would.

    http.client rather than urllib: each request must be wholly sent before the signal (urllib
    sends and waits in one call), so that a refused or reset one is the server's doing."""
    path = f"/v1/models/{server.name}:explain"
    count = 24  # six batches of the manifest's --max-batch 4: the last still queued at the signal
    bodies = [
        json.dumps(
            {"instances": [{"image": {"b64": _png_b64(i)}}], "parameters": {"map": "none"}}
        ).encode()
        for i in range(count)
    ]
    connections = []
    for body in bodies:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        connections.append(connection)
    time.sleep(0.3)  # for the server's event loop to accept and read them all
    answered, _, _ = select.select([c.sock for c in connections], [], [], 0)
    in_flight = count - len(answered)
    server.process.send_signal(signal.SIGTERM)

    results: list[object] = []
    for connection in connections:
        try:
            results.append(connection.getresponse().status)
        except (OSError, http.client.HTTPException) as error:
            results.append(repr(error))
        finally:
            connection.close()
    try:
        code = server.process.wait(timeout=EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {EXIT_WITHIN_S} s after SIGTERM:\n" + server.log())
    assert code == 0, f"exit code {code} after SIGTERM:\n" + server.log()
    assert results == [200] * count, f"{in_flight} of {count} in flight at SIGTERM: {results}"
