"""Real ``gradex serve`` processes for the serving tests, spoken to over HTTP on loopback.
Nothing is mocked: these are the processes users run."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

MODEL = "efficientnet_lite0"
READY_TIMEOUT_S = 180  # a cold start on a busy 2-core machine: imports, model, warm-up


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """One ``python -m gradex serve`` child process, its port and its log.

    ``command`` runs another command line instead (a container's entrypoint), which must listen
    on ``port``; ``name`` is the model's name in its URLs."""

    def __init__(
        self,
        args=(),
        *,
        log: Path,
        cwd: Path | None = None,
        env: dict | None = None,
        command: list[str] | None = None,
        port: int | None = None,
        name: str = MODEL,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = name
        self.command = command or [
            *(sys.executable, "-m", "gradex", "serve", "--port", str(self.port)),
            *args,
        ]
        # Liveness answers seen while readiness was not yet 200 (wait_ready records them).
        self.live_while_warming: list[int] = []
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **(env or {})},
        )

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_live(self, timeout: float = READY_TIMEOUT_S) -> None:
        self._wait("/v2/health/live", timeout)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        self._wait("/v2/health/ready", timeout)

    def _wait(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{' '.join(self.command)} exited {self.process.returncode}:\n{self.log()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
                if path == "/v2/health/ready":  # listening, not ready: is it live meanwhile?
                    live = httpx.get(self.url + "/v2/health/live", timeout=2).status_code
                    self.live_while_warming.append(live)
            time.sleep(0.2)
        raise TimeoutError(f"gradex serve: {path} not 200 after {timeout} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def encoded(image, format: str = "JPEG") -> str:
    """A PIL image as base64 file bytes, the V1 convention."""
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return base64.b64encode(buffer.getvalue()).decode()
