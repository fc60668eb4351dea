"""Fixtures for the serving tests: real ``gradex serve`` processes, always stopped."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "kserve", reason="the serve extra is not installed (pip install 'gradex[serve]')"
)

from .serving import ServerProcess  # noqa: E402 - only once the serve extra is known to be here


@pytest.fixture
def start_server(tmp_path_factory):
    """``start_server(args, cwd=None, env=None)``: a started (not yet ready) server, stopped at
    the end of the test whatever happens."""
    started = []

    def start(args=(), **kwargs) -> ServerProcess:
        log = tmp_path_factory.mktemp("serve") / "server.log"
        server = ServerProcess(args, log=log, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def serve_process(tmp_path_factory):
    """The shared default server (embedded EfficientNet-Lite0, batches up to 4), ready."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    server = ServerProcess(["--max-batch", "4", "--max-wait-ms", "20"], log=log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cat_image():
    skimage = pytest.importorskip("skimage.data", reason="scikit-image ships the cat photo")
    from PIL import Image

    return Image.fromarray(skimage.chelsea())
