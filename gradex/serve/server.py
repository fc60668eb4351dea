"""The process: KServe's ModelServer with gradex's model, its limits and its page.

What gradex adds to KServe's server, and why:
- it binds to ``--host`` (KServe's always listens on 0.0.0.0; on a laptop that exposes the model
  to the network, so the default here is 127.0.0.1);
- readiness (``/v2/health/ready``, ``/v1/models/NAME``) is true only once every batch size is
  warm, while liveness answers from the first second (KServe's server readiness is always true);
- a body over ``--max-body-mb`` gets 413 before it is read, a full queue 503 with Retry-After;
- ``GET /`` is the page for a browser, and KServe's liveness JSON for everything else.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
import sys
import threading
import time
import warnings

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image

from ..devices import parse_device
from ..models import check_model_name, load_model
from .batching import QueueFull
from .options import ServeOptions
from .payloads import BadRequest, PayloadTooLarge


def import_kserve():
    """KServe's model_server parses ``sys.argv`` when imported (its own flags, with prefix
    matching, so ``--model`` would be ambiguous there): import it with gradex's flags hidden."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        import kserve
        import kserve.model_server
    finally:
        sys.argv = saved
    return kserve


class _BodyLimit:
    """ASGI middleware: 413 for a body over the limit, from its Content-Length before it is
    read, or as soon as a chunked body passes the limit."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _json(send, 413, self._message(int(declared)))
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise PayloadTooLarge(self._message(seen, at_least=True))
            return message

        return await self.app(scope, counted, send)

    def _message(self, size: int, at_least: bool = False) -> str:
        amount = f"{'at least ' if at_least else ''}{size:,} bytes"
        return f"body: {amount}, over the limit of {self.limit:,} (--max-body-mb)"


async def _json(send, status: int, message: str, headers=()) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _customise(app, model, options: ServeOptions) -> None:
    async def bad_request(_, error):
        return JSONResponse({"error": str(error)}, status_code=400)

    async def too_large(_, error):
        return JSONResponse({"error": str(error)}, status_code=413)

    async def queue_full(_, error):
        return JSONResponse(
            {"error": str(error)},
            status_code=503,
            headers={"Retry-After": str(error.retry_after_s)},
        )

    async def schema_error(_, error):
        # FastAPI's default answer is 422 with the whole input echoed back (megabytes of
        # pixels for a V2 tensor): answer the first field at fault and why, like every 400 here.
        first = error.errors()[0] if error.errors() else {}
        where = [str(p) for p in first.get("loc", ()) if p not in ("body", "InferenceRequest")]
        field = ".".join(where) or "body"
        return JSONResponse({"error": f"{field}: {first.get('msg', 'invalid')}"}, status_code=400)

    app.add_exception_handler(RequestValidationError, schema_error)
    app.add_exception_handler(BadRequest, bad_request)
    app.add_exception_handler(PayloadTooLarge, too_large)
    app.add_exception_handler(QueueFull, queue_full)
    app.add_middleware(_BodyLimit, limit=options.max_body_bytes)
    page = importlib.resources.files("gradex.serve").joinpath("page.html").read_text("utf-8")

    # Registered before KServe's own routes, so these win where the paths are the same.
    async def root(request: Request):
        if "text/html" in request.headers.get("accept", ""):
            return HTMLResponse(page)
        return JSONResponse({"status": "alive"})

    async def server_ready():
        if not model.ready:
            return JSONResponse({"error": "warming up"}, status_code=503)
        return {"ready": True}

    app.add_api_route("/", root, methods=["GET"], include_in_schema=False)
    app.add_api_route("/v2/health/ready", server_ready, methods=["GET"])


def _warm(model, options: ServeOptions) -> None:
    """Build and warm every batch size in the background; readiness follows. A failure here
    cannot be answered to anyone: it ends the process, non-zero, with the reason."""
    try:
        model.load()
    except Exception as error:  # noqa: BLE001 - any failure ends the server, said in one line
        print(f"gradex serve: error: warm-up failed: {error}", file=sys.stderr, flush=True)
        os._exit(1)
    print(
        f"gradex serve: ready on http://{options.host}:{options.port} (model "
        f"{options.model_name}, batches up to {model.runner.max_batch}, warm-up "
        f"{model.warmup_s:.1f} s)",
        file=sys.stderr,
        flush=True,
    )


def serve(options: ServeOptions) -> int:
    """Run until SIGTERM or SIGINT: then stop accepting, finish what is in flight, return 0.
    Once per process: the routes go onto KServe's module-level FastAPI app."""
    device = parse_device(options.device)
    check_model_name(options.model)
    started = time.perf_counter()
    bundle = load_model(options.model, options.weights, options.labels)
    kserve = import_kserve()
    from kserve.model_server import app

    # KServe logs two timing lines per request at INFO (its "trace"); the access log stays.
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    # Pillow warns of images past its own pixel limit, which the server refuses by its own
    # (--max-image-pixels). Set once for the process: catch_warnings() in each decoding
    # thread would race on the global filter list.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)

    from .model import GradexModel  # only now: it imports kserve at its top

    model = GradexModel(options, bundle, device)

    class ModelServer(kserve.ModelServer):
        async def _serve(self):
            # KServe's REST server is built inside start() with host 0.0.0.0 and binds in here
            # (private names of KServe 0.21's ModelServer; the tests check the binding).
            self._rest_server.config.host = options.host
            await super()._serve()

    server = ModelServer(
        http_port=options.port,
        enable_grpc=False,
        workers=1,
        enable_latency_logging=False,
        grace_period=30,
    )
    _customise(app, model, options)
    server.register_model(model)
    print(
        f"gradex serve: loaded {options.model} in {time.perf_counter() - started:.1f} s; "
        f"warming up on {device}, listening on http://{options.host}:{options.port}",
        file=sys.stderr,
        flush=True,
    )
    threading.Thread(target=_warm, args=(model, options), name="gradex-warmup", daemon=True).start()
    server.start([])  # the model is registered above, not ready until warm
    return 0
