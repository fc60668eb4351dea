"""Load test of `gradex serve`: servers started and stopped here, loopback only.

    python bench/bench_serve.py                      # the full run (~20 min on 2 busy cores)
    python bench/bench_serve.py --quick              # smoke run (~2 min), results to a temp folder
    python bench/bench_serve.py --server-args "--max-batch 16 --max-wait-ms 5" --tag mb16
    python bench/bench_serve.py --soak 2000 --tag short   # rows + a shorter soak
    python bench/bench_serve.py --device cuda --soak 20000

Two servers with the same arguments, batching on and `--no-batching`, are up together but loaded
one at a time. A closed-loop asyncio client (httpx; `concurrency` workers, each sending its next
request when the last one is answered) sends V1 `:predict` and `:explain` requests at each
concurrency (1, 8, 32; the batching-off server only at 32 unless --off-concurrency says
otherwise), each row bounded by --requests and --seconds; each row on the batching server is
followed at once by the same row on the other, so a drift in the machine's speed falls on both.
The payload (scikit-image's cat as a JPEG, base64, `"map": "uint8"`) is encoded once. p50/p99
latency is over the successful requests of a row, throughput is completed requests over the row's
wall time, errors are counted by status code (or exception name). The batching server first gets
a --soak of 10,000 explains at concurrency 32, with its resident memory before and after.

The client runs on the same cores as the server: its CPU share, and the CPU that other processes
took during each row, are in the table. Writes bench/results/serve_<machine>[_<tag>].{json,md}
(--quick: to a temp folder unless --out).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from processes import process_tree

RESULTS = Path(__file__).parent / "results"
VERBS = ("predict", "explain")
GOAL_CONCURRENCY = 32
GOALS = {
    "explain_throughput_ratio": 0.85,  # explain req/s >= 0.85 x predict req/s
    "explain_p99_ratio": 1.5,  # explain p99 <= 1.5 x predict p99
    "rss_growth_pct": 5.0,  # over the soak
    "batching_speedup": 2.0,  # batching on vs --no-batching, explain req/s
}


# ---------------------------------------------------------------------------------------------
# payload


def payload() -> tuple[bytes, dict]:
    """The V1 body (both verbs take the same one) and a description of the image in it."""
    from PIL import Image

    try:
        from skimage import data

        array, source = data.chelsea(), "skimage.data.chelsea()"
        image = Image.fromarray(array)
    except ImportError:
        # scikit-image is the demo/test extra; matplotlib (a dependency) ships a photo too.
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        image, source = Image.open(path).convert("RGB"), "matplotlib grace_hopper.jpg"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    body = {
        "instances": [{"image": {"b64": base64.b64encode(jpeg).decode("ascii")}}],
        "parameters": {"map": "uint8"},
    }
    encoded = json.dumps(body).encode()
    info = {
        "image": source,
        "width": image.width,
        "height": image.height,
        "jpeg_bytes": len(jpeg),
        "body_bytes": len(encoded),
        "parameters": body["parameters"],
    }
    return encoded, info


def check_body(verb: str, content: bytes) -> tuple[str | None, dict]:
    """(None or what is wrong with a 200 answer, the server's timings_ms)."""
    try:
        answer = json.loads(content)
    except ValueError:
        return "200 not JSON", {}
    key = "predictions" if verb == "predict" else "explanations"
    items = answer.get(key) if isinstance(answer, dict) else None
    if not isinstance(items, list) or len(items) != 1:
        return f"200 without {key}[1]", {}
    if verb == "explain" and not isinstance(items[0].get("saliency"), dict):
        return "200 without saliency", {}
    if not items[0].get("top_k"):
        return "200 without top_k", {}
    timings = answer.get("timings_ms")
    return None, timings if isinstance(timings, dict) else {}


# ---------------------------------------------------------------------------------------------
# the server process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(port: int, server_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "gradex", "serve", "--port", str(port), *server_args]


def rss_mib(pid: int) -> float | None:
    """Resident memory of the server's process tree, MiB (VmRSS, as psutil's rss)."""
    total, found = 0, False
    for current in process_tree(pid):
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    found = True
        except OSError:
            pass
    return total / 1024 if found else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the server's process tree so far."""
    total = 0
    for current in process_tree(pid):
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces: the fields start after its closing parenthesis.
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, all processes), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal: idle and iowait are not busy.
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


class Server:
    """`gradex serve` as a subprocess on a free loopback port, its stderr kept in a temp file."""

    def __init__(self, server_args: list[str], label: str):
        self.label = label
        self.port = free_port()
        self.command = server_command(self.port, server_args)
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (lives as long as the server)
            prefix=f"gradex_serve_{label}_", suffix=".log", delete=False
        )
        self.proc: subprocess.Popen | None = None
        self.name: str | None = None
        self.info: dict = {"label": label, "command": shlex.join(self.command)}

    def start(self) -> None:
        print(f"[{self.label}] {shlex.join(self.command)}", flush=True)
        self.proc = subprocess.Popen(
            self.command, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self.started = time.perf_counter()

    def log_tail(self, lines: int = 30) -> str:
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_ready(self, client: httpx.AsyncClient, timeout: float) -> None:
        """Poll /v2/health/ready until 200; record what it answered before (the spec: 503)."""
        seen: Counter = Counter()
        deadline = time.perf_counter() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(
                    f"[{self.label}] server exited with {self.proc.returncode} before ready:\n"
                    + self.log_tail()
                )
            try:
                answer = await client.get(self.base + "/v2/health/ready", timeout=5)
                seen[str(answer.status_code)] += 1
                if answer.status_code == 200:
                    break
            except httpx.HTTPError as error:
                seen[type(error).__name__] += 1
            if time.perf_counter() > deadline:
                raise RuntimeError(
                    f"[{self.label}] not ready after {timeout:.0f} s:\n" + self.log_tail()
                )
            await asyncio.sleep(0.25)
        self.info["ready_s"] = round(time.perf_counter() - self.started, 2)
        self.info["ready_polls"] = dict(seen)
        self.info["ready_line"] = "gradex serve: ready on" in self.log_tail(200)
        models = (await client.get(self.base + "/v1/models", timeout=10)).json()
        self.name = models["models"][0]
        self.info["model_name"] = self.name
        print(
            f"[{self.label}] ready after {self.info['ready_s']} s, model {self.name}, "
            f"readiness polls: {dict(seen)}",
            flush=True,
        )

    def url(self, verb: str) -> str:
        return f"{self.base}/v1/models/{self.name}:{verb}"

    async def stop(self, client: httpx.AsyncClient, body: bytes) -> None:
        """SIGTERM with explain requests in flight: the spec says they finish and the exit is 0."""
        if not self.alive():
            self.info["exit_code"] = self.proc.returncode if self.proc else None
            self.info["died"] = True
            return
        inflight = [
            asyncio.create_task(client.post(self.url("explain"), content=body, timeout=60))
            for _ in range(4)
        ]
        # Long enough for the requests to have reached the server, short of their completion.
        await asyncio.sleep(0.05)
        self.proc.send_signal(signal.SIGTERM)
        sent = time.perf_counter()
        statuses: Counter = Counter()
        for task in inflight:
            try:
                answer = await task
                statuses[str(answer.status_code)] += 1
            except httpx.HTTPError as error:
                statuses[type(error).__name__] += 1
        try:
            code = await asyncio.to_thread(self.proc.wait, 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = f"killed after 60 s: {self.proc.wait()}"
        self.info["sigterm_inflight"] = dict(statuses)
        self.info["exit_code"] = code
        self.info["exit_s"] = round(time.perf_counter() - sent, 2)
        print(
            f"[{self.label}] SIGTERM with 4 explains in flight: {dict(statuses)}; "
            f"exit code {code} after {self.info['exit_s']} s",
            flush=True,
        )

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------------------------------------
# the client


async def load(
    client: httpx.AsyncClient,
    server: Server,
    verb: str,
    body: bytes,
    *,
    concurrency: int,
    requests: int,
    seconds: float,
    progress=None,
) -> dict:
    """`concurrency` workers, each sending its next request when its last one is answered,
    until `requests` have been sent or `seconds` have passed."""
    url = server.url(verb)
    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    errors: Counter = Counter()
    batch_sizes: list[float] = []
    server_ms: Counter = Counter()
    sent = 0
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    last = start

    async def worker():
        nonlocal sent, done, last
        while sent < requests and time.perf_counter() < deadline:
            sent += 1
            begin = time.perf_counter()
            try:
                answer = await client.post(url, content=body, headers=headers)
                status = answer.status_code
                wrong, timings = check_body(verb, answer.content) if status == 200 else (None, {})
            except httpx.HTTPError as error:
                status, wrong, timings = type(error).__name__, None, {}
            end = time.perf_counter()
            done += 1
            last = max(last, end)
            if status == 200 and wrong is None:
                latencies.append(1000 * (end - begin))
                if isinstance(timings.get("batch_size"), (int, float)):
                    batch_sizes.append(timings["batch_size"])
                for key in ("decode", "queue", "model", "encode", "total"):
                    if isinstance(timings.get(key), (int, float)):
                        server_ms[key] += timings[key]
            else:
                errors[str(status) if wrong is None else wrong] += 1
            if progress is not None:
                progress(done)

    client_cpu = time.process_time()
    server_cpu = cpu_seconds(server.proc.pid)
    machine_cpu = busy_seconds()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    client_cpu = time.process_time() - client_cpu
    server_cpu = cpu_seconds(server.proc.pid) - server_cpu
    machine_cpu = busy_seconds() - machine_cpu
    wall = last - start
    ok = len(latencies)
    row = {
        "verb": verb,
        "concurrency": concurrency,
        "requests": done,
        "ok": ok,
        "errors": dict(errors),
        "error_count": sum(errors.values()),
        "wall_s": round(wall, 3),
        "throughput_rps": ok / wall if wall > 0 else 0.0,
        "p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
        "p99_ms": float(np.percentile(latencies, 99)) if latencies else None,
        "mean_ms": float(np.mean(latencies)) if latencies else None,
        "max_ms": max(latencies) if latencies else None,
        "mean_batch": float(np.mean(batch_sizes)) if batch_sizes else None,
        "server_timings_mean_ms": {k: round(v / ok, 2) for k, v in server_ms.items()} if ok else {},
        "client_cpu_s": round(client_cpu, 2),
        "server_cpu_s": round(server_cpu, 2),
        "client_cpu_share": client_cpu / (client_cpu + server_cpu)
        if client_cpu + server_cpu > 0
        else None,
        # Cores busy with neither the server nor this client (other jobs on a shared machine):
        # the rows' numbers drift with it.
        "other_cores": max(machine_cpu - client_cpu - server_cpu, 0.0) / wall if wall > 0 else None,
        "server_cores": server_cpu / wall if wall > 0 else None,
        "stopped_by": "requests" if done >= requests else "time",
    }
    return row


def row_line(row: dict) -> str:
    def ms(value):
        return "-" if value is None else f"{value:7.1f}"

    batch = "-" if row["mean_batch"] is None else f"{row['mean_batch']:.1f}"
    share = row["client_cpu_share"]
    return (
        f"{row['verb']:7s} c={row['concurrency']:<3d} {row['batching']:3s} "
        f"n={row['requests']:<5d} {row['throughput_rps']:6.1f} req/s  p50 {ms(row['p50_ms'])} ms"
        f"  p99 {ms(row['p99_ms'])} ms  errors {row['errors'] or 0}  batch {batch}  "
        f"client CPU {'-' if share is None else f'{100 * share:.0f}%'}  "
        f"server {fmt(row['server_cores'], '.2f')} / other {fmt(row['other_cores'], '.2f')} cores"
    )


async def start_and_warm(client, server: Server, args, body: bytes, concurrency: int) -> None:
    server.start()
    await server.wait_ready(client, args.ready_timeout)
    server.info["rss_ready_mib"] = rss_mib(server.proc.pid)
    # Every verb at the largest concurrency, so that the batch shapes the rows and the soak meet
    # have all run once before anything is measured.
    warm = []
    for verb in VERBS:
        warm.append(
            await load(
                client,
                server,
                verb,
                body,
                concurrency=concurrency,
                requests=args.warm // len(VERBS),
                seconds=args.seconds * 2,
            )
        )
    server.info["warm"] = warm
    server.info["rss_warm_mib"] = rss_mib(server.proc.pid)
    print(
        f"[{server.label}] warm phase: {sum(r['requests'] for r in warm)} requests, "
        f"errors {[r['errors'] for r in warm]}, RSS {server.info['rss_warm_mib']:.0f} MiB",
        flush=True,
    )


async def measure(args, report: dict, server_args: list[str], body: bytes) -> None:
    """Both servers stay up, one of them loaded at a time (an idle one costs next to no CPU):
    the soak runs on the batching one, then each row on it is followed at once by the same row on
    the batching-off one, so that a drift in the machine's speed falls on both alike."""
    servers = {"on": Server(server_args, "on")}
    if args.off_concurrency:
        servers["off"] = Server(server_args + ["--no-batching"], "off")
    for label, server in servers.items():
        report["servers"][label] = server.info
    biggest = max(args.concurrency + args.off_concurrency + [GOAL_CONCURRENCY])
    limits = httpx.Limits(max_connections=biggest + 8, max_keepalive_connections=None)
    timeout = httpx.Timeout(args.request_timeout)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        try:
            for label, server in servers.items():
                concurrencies = args.concurrency if label == "on" else args.off_concurrency
                await start_and_warm(client, server, args, body, max(concurrencies))
            if args.soak:
                report["soak"] = await soak(client, servers["on"], body, args)
            plan = [
                (label, concurrency, verb)
                for concurrency in sorted(set(args.concurrency + args.off_concurrency))
                for verb in VERBS
                for label in servers
                if concurrency in (args.concurrency if label == "on" else args.off_concurrency)
            ]
            for label, concurrency, verb in plan:
                server = servers[label]
                for other in servers.values():
                    if not other.alive():
                        raise RuntimeError(f"[{other.label}] server died:\n{other.log_tail()}")
                row = await load(
                    client,
                    server,
                    verb,
                    body,
                    concurrency=concurrency,
                    requests=args.requests,
                    seconds=args.seconds,
                )
                row["batching"] = label
                report["rows"].append(row)
                print(row_line(row), flush=True)
            for server in servers.values():
                server.info["rss_end_mib"] = rss_mib(server.proc.pid)
                await server.stop(client, body)
        except BaseException:
            for server in servers.values():
                server.info["log_tail"] = server.log_tail(60)
            raise
        finally:
            for label, server in servers.items():
                server.kill()
                if server.info.get("exit_code") != 0 or "log_tail" in server.info:
                    server.info.setdefault("log_tail", server.log_tail(60))
                    print(f"[{label}] server log (tail):\n{server.info['log_tail']}", flush=True)
                Path(server.log.name).unlink(missing_ok=True)


async def soak(client: httpx.AsyncClient, server: Server, body: bytes, args) -> dict:
    """`--soak` explain requests at concurrency 32, the server's RSS sampled along the way."""
    pid = server.proc.pid
    before = rss_mib(pid)
    samples = [(0, before)]
    step = max(args.soak // 10, 1)
    began = time.perf_counter()

    def progress(done: int) -> None:
        if done % step == 0:
            samples.append((done, rss_mib(pid)))
            elapsed = time.perf_counter() - began
            print(
                f"[soak] {done}/{args.soak} in {elapsed:.0f} s, RSS {samples[-1][1]:.0f} MiB",
                flush=True,
            )

    row = await load(
        client,
        server,
        "explain",
        body,
        concurrency=GOAL_CONCURRENCY,
        requests=args.soak,
        seconds=args.soak_seconds,
        progress=progress,
    )
    after = rss_mib(pid)
    row.update(
        {
            "batching": "on",
            "rss_before_mib": before,
            "rss_after_mib": after,
            "rss_growth_pct": 100 * (after - before) / before,
            "rss_peak_mib": max(value for _, value in samples + [(0, after)]),
            "rss_samples": [(done, round(value, 1)) for done, value in samples],
            "target": args.soak,
        }
    )
    print(
        f"[soak] {row['requests']} explains at c={GOAL_CONCURRENCY} in {row['wall_s']:.0f} s: "
        f"RSS {before:.0f} -> {after:.0f} MiB ({row['rss_growth_pct']:+.2f}%), "
        f"errors {row['errors'] or 0}",
        flush=True,
    )
    return row


# ---------------------------------------------------------------------------------------------
# the report


def find(rows: list[dict], verb: str, concurrency: int, batching: str) -> dict | None:
    for row in rows:
        if (row["verb"], row["concurrency"], row["batching"]) == (verb, concurrency, batching):
            return row
    return None


def goals(report: dict) -> list[dict]:
    rows, c = report["rows"], GOAL_CONCURRENCY
    checks = []

    def add(name, text, value, passed):
        checks.append({"goal": name, "text": text, "value": value, "pass": passed})

    predict, explain = find(rows, "predict", c, "on"), find(rows, "explain", c, "on")
    if predict and explain and predict["throughput_rps"] and predict["p99_ms"]:
        ratio = explain["throughput_rps"] / predict["throughput_rps"]
        add(
            "explain_throughput_ratio",
            f"explain throughput >= {GOALS['explain_throughput_ratio']}x predict at c={c}: "
            f"{ratio:.2f}x ({explain['throughput_rps']:.1f} / {predict['throughput_rps']:.1f} "
            "req/s)",
            ratio,
            ratio >= GOALS["explain_throughput_ratio"],
        )
        ratio = (explain["p99_ms"] or float("inf")) / predict["p99_ms"]
        add(
            "explain_p99_ratio",
            f"explain p99 <= {GOALS['explain_p99_ratio']}x predict p99 at c={c}: {ratio:.2f}x "
            f"({explain['p99_ms']:.0f} / {predict['p99_ms']:.0f} ms)",
            ratio,
            ratio <= GOALS["explain_p99_ratio"],
        )
    soak_row = report.get("soak")
    every = rows + [r for s in report["servers"].values() for r in s.get("warm", [])]
    every += [soak_row] if soak_row else []
    errors: Counter = Counter()
    for row in every:
        errors.update(row["errors"])
    sigterm = {
        label: (s.get("exit_code"), s.get("sigterm_inflight"))
        for label, s in report["servers"].items()
    }
    add(
        "zero_errors",
        f"zero errors over {sum(r['requests'] for r in every)} requests (warm phases, rows, soak):"
        f" {dict(errors) or 0}",
        dict(errors),
        not errors,
    )
    clean_exit = all(
        code == 0 and set(inflight or {}) <= {"200"} for code, inflight in sigterm.values()
    )
    add(
        "sigterm",
        "SIGTERM with 4 explains in flight -> they answer 200 and exit code 0: "
        + ", ".join(f"batching {k}: exit {v[0]}, in flight {v[1]}" for k, v in sigterm.items()),
        sigterm,
        clean_exit,
    )
    if soak_row:
        complete = soak_row["requests"] >= soak_row["target"]
        growth = soak_row["rss_growth_pct"]
        add(
            "rss_growth_pct",
            f"RSS growth < {GOALS['rss_growth_pct']:.0f}% over {soak_row['requests']} explains "
            f"(c={c}): {growth:+.2f}% ({soak_row['rss_before_mib']:.0f} -> "
            f"{soak_row['rss_after_mib']:.0f} MiB)"
            + ("" if complete else f"; only {soak_row['requests']} of {soak_row['target']} sent"),
            growth,
            complete and growth < GOALS["rss_growth_pct"],
        )
    for verb in ("explain", "predict"):
        on, off = find(rows, verb, c, "on"), find(rows, verb, c, "off")
        if on and off and off["throughput_rps"]:
            ratio = on["throughput_rps"] / off["throughput_rps"]
            add(
                f"batching_speedup_{verb}",
                f"batching pays ({verb}): throughput at c={c} >= {GOALS['batching_speedup']}x "
                f"--no-batching: {ratio:.2f}x ({on['throughput_rps']:.1f} / "
                f"{off['throughput_rps']:.1f} req/s)",
                ratio,
                ratio >= GOALS["batching_speedup"],
            )
    return checks


def markdown(report: dict) -> str:
    m, p = report["machine"], report["payload"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [
        f"# gradex serve load test: {m['device']}",
        "",
        f"- machine: {m['device']}; host CPU {m['cpu']}, {os.cpu_count()} cores; "
        f"Python {m['python']}; {versions}; kserve {report['versions'].get('kserve')}, "
        f"httpx {report['versions'].get('httpx')}",
        f"- command: `{report['command']}` ({report['date']}, {report['total_s']:.0f} s in all)",
    ]
    for label, server in report["servers"].items():
        lines.append(
            f"- server, batching {label}: `{server['command']}`; ready after "
            f"{server.get('ready_s')} s; RSS ready {fmt(server.get('rss_ready_mib'))} MiB, after "
            f"warm phase {fmt(server.get('rss_warm_mib'))} MiB, at the end "
            f"{fmt(server.get('rss_end_mib'))} MiB"
        )
    lines += [
        f"- client: asyncio + httpx on loopback, closed loop (each of `concurrency` workers sends "
        f"its next request when the last is answered); rows of up to {report['args']['requests']}"
        f" requests or {report['args']['seconds']:.0f} s after a warm phase of "
        f"{report['args']['warm']} requests per server; the client shares the machine's "
        f"{os.cpu_count()} cores with the server (client CPU: "
        f"{report['client_cpu_share_pct']:.0f}% of client + server CPU time over the rows)",
        f"- payload: {p['image']} {p['width']}x{p['height']} as JPEG ({p['jpeg_bytes']} B), "
        f"base64 in a V1 body of {p['body_bytes']} B, parameters {json.dumps(p['parameters'])}; "
        "the same body for both verbs",
        "- throughput: successful requests / the row's wall time; p50/p99 over successful "
        "requests; mean batch: the server's timings_ms.batch_size; server cores: the server's "
        "CPU time / wall time; other cores: CPU time of everything else on the machine (neither "
        "server nor client) / wall time: where it is not ~0, other jobs shared the cores",
        "",
        "| verb | concurrency | batching | requests | throughput req/s | p50 ms | p99 ms | errors "
        "| mean batch | server cores | other cores |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["rows"]:
        errors = ", ".join(f"{k}: {v}" for k, v in row["errors"].items()) or "0"
        lines.append(
            f"| {row['verb']} | {row['concurrency']} | {row['batching']} | {row['requests']} | "
            f"{row['throughput_rps']:.1f} | {fmt(row['p50_ms'])} | {fmt(row['p99_ms'])} | "
            f"{errors} | {fmt(row['mean_batch'], '.1f')} | {fmt(row['server_cores'], '.2f')} | "
            f"{fmt(row['other_cores'], '.2f')} |"
        )
    if report.get("failure"):
        lines += ["", f"**The run failed part-way:** {report['failure']}"]
    lines += [
        "",
        "Server-side means per request (the answers' timings_ms, ms): decode, queue, model "
        "(the batch's run), encode (explain), total.",
        "",
        "| verb | concurrency | batching | decode | queue | model | encode | total |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["rows"]:
        t = row["server_timings_mean_ms"]
        lines.append(
            f"| {row['verb']} | {row['concurrency']} | {row['batching']} | "
            + " | ".join(
                fmt(t.get(k), ".1f") for k in ("decode", "queue", "model", "encode", "total")
            )
            + " |"
        )
    lines += ["", "Goals:", ""]
    for check in report["goals"]:
        lines.append(f"- {'PASS' if check['pass'] else 'MISS'}: {check['text']}")
    soak_row = report.get("soak")
    if soak_row:
        trail = ", ".join(f"{n}: {v:.0f}" for n, v in soak_row["rss_samples"])
        lines += [
            "",
            f"Soak: {soak_row['requests']} explains at concurrency {soak_row['concurrency']} "
            f"(batching on) in {soak_row['wall_s']:.0f} s, {soak_row['throughput_rps']:.1f} "
            f"req/s, p50 {fmt(soak_row['p50_ms'])} ms, p99 {fmt(soak_row['p99_ms'])} ms, "
            f"errors {soak_row['errors'] or 0}. Server RSS (its process tree, VmRSS) "
            f"{soak_row['rss_before_mib']:.0f} MiB before, {soak_row['rss_after_mib']:.0f} MiB "
            f"after ({soak_row['rss_growth_pct']:+.2f}%), peak {soak_row['rss_peak_mib']:.0f} "
            f"MiB; MiB by requests done: {trail}.",
        ]
    return "\n".join(lines) + "\n"


def fmt(value, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40]


def versions() -> dict:
    from importlib import metadata

    found = {}
    for name in ("kserve", "httpx", "fastapi", "uvicorn"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    parser.add_argument("--concurrency", type=ints, default=[1, 8, 32], help="default 1,8,32")
    parser.add_argument(
        "--off-concurrency",
        type=ints,
        default=None,
        help="the --no-batching server's concurrencies (default 32; 0: skip that server)",
    )
    parser.add_argument("--requests", type=int, default=400, help="per row (default 400)")
    parser.add_argument("--seconds", type=float, default=30, help="per row (default 30)")
    parser.add_argument(
        "--warm", type=int, default=200, help="warm-phase requests per server (default 200)"
    )
    parser.add_argument(
        "--soak", type=int, default=10000, help="explains at c=32 for the RSS check; 0: none"
    )
    parser.add_argument(
        "--soak-seconds", type=float, default=1800, help="time bound of the soak (default 1800)"
    )
    parser.add_argument(
        "--server-args", default="", help='passed to `gradex serve`, e.g. "--max-batch 16"'
    )
    parser.add_argument(
        "--device", default=None, help="passed to the server as --device; names the machine"
    )
    parser.add_argument("--ready-timeout", type=float, default=300, help="seconds (default 300)")
    parser.add_argument("--request-timeout", type=float, default=120, help="seconds")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/")
    parser.add_argument("--quick", action="store_true", help="smoke run: few requests, tiny soak")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.seconds, args.warm = min(args.requests, 40), min(args.seconds, 10), 40
        args.soak = min(args.soak, 200)
        if args.out is None:
            args.out = Path(tempfile.gettempdir()) / "gradex_bench_serve"
    if args.off_concurrency is None:
        args.off_concurrency = [GOAL_CONCURRENCY]
    args.off_concurrency = [c for c in args.off_concurrency if c > 0]
    args.out = args.out or RESULTS
    return args


def prepare(args) -> tuple[dict, list[str], bytes]:
    """The report's header (machine, payload), the server's arguments and the request body."""
    import torch

    from gradex.benchmark.measure import machine

    server_args = shlex.split(args.server_args)
    if args.device:
        server_args += ["--device", args.device]
    device = args.device or "auto"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    body, info = payload()
    report = {
        "machine": machine(torch.device(device)),
        "versions": versions(),
        "command": shlex.join(["bench_serve.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "payload": info,
        "goal_thresholds": GOALS,
        "servers": {},
        "rows": [],
    }
    return report, server_args, body


def main(argv=None) -> int:
    args = parse_args(argv)
    report, server_args, body = prepare(args)
    info = report["payload"]
    print(
        f"payload: {info['image']} {info['width']}x{info['height']}, body {info['body_bytes']} B;"
        f" the client shares the {os.cpu_count()} cores with the server",
        flush=True,
    )
    began = time.perf_counter()
    failure = None
    try:
        asyncio.run(measure(args, report, server_args, body))
    except Exception as error:
        # What was measured before the failure is still written, with the failure in it.
        failure = f"{type(error).__name__}: {error}"
        report["failure"] = failure
    report["total_s"] = time.perf_counter() - began
    client_cpu = sum(r["client_cpu_s"] for r in report["rows"])
    server_cpu = sum(r["server_cpu_s"] for r in report["rows"])
    report["client_cpu_share_pct"] = (
        100 * client_cpu / (client_cpu + server_cpu) if client_cpu + server_cpu else 0.0
    )
    report["goals"] = goals(report)
    stem = "serve_" + slug(report["machine"]["device"]) + (f"_{slug(args.tag)}" if args.tag else "")
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(report)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(text)
    print("\n" + text)
    print(f"wrote {args.out / stem}.{{json,md}}")
    if failure is not None:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
