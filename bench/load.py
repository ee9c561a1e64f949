"""Load on `poetvae serve`: a fixed number of requests from concurrent clients, on loopback.

    python bench/load.py [-m RUN] [--requests 1000] [--clients 20] [--json out.json]
    python bench/load.py --url http://127.0.0.1:8000       # a server already running here

Without --url it starts `poetvae serve --port 0` itself (the model as the command chooses
it: -m, else the newest run in ./runs, else the bundled model), waits for its URL, and stops
it with Ctrl-C at the end. Every client holds one keep-alive connection and sends its share
of the requests one after another; the mix is 7 in 10 `sample` (n = 5, temp 0.8, each its
own seed), 1 `vary` (n = 5), 1 `interpolate` (steps 5) and 1 `reconstruct` (one poem).

It reports the errors (any answer but 200, or none within --timeout; the target is 0), the
latency of a request as a client sees it (p50, p95, max; queueing in the server included),
and the poems written per second of wall time. Bounded: --requests in all, each with a
timeout, and nothing is sent after --max-seconds. Only loopback addresses are accepted.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from urllib.parse import urlsplit

JINGYESI = "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
DENGGUANQUE = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。"


def request_for(i: int) -> tuple[str, dict]:
    """The i-th request of the mix: (path, body)."""
    kind = i % 10
    if kind == 7:
        return "/api/vary", {"poem": JINGYESI, "n": 5, "seed": i}
    if kind == 8:
        return "/api/interpolate", {"poem_a": JINGYESI, "poem_b": DENGGUANQUE, "steps": 5}
    if kind == 9:
        return "/api/reconstruct", {"poems": [DENGGUANQUE]}
    return "/api/sample", {"n": 5, "temp": 0.8, "seed": i}


def poems_in(path: str, answer: dict) -> int:
    return len(answer["path"]) if path == "/api/interpolate" else len(answer["poems"])


def loopback(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if parts.scheme != "http" or not ok:
        sys.exit(f"error: {url} is not an http:// address on this machine's loopback")
    return host, parts.port or 80


def start_server(model: str | None) -> tuple[subprocess.Popen, str]:
    args = [sys.executable, "-m", "poetvae", "serve", "--port", "0"] + (["-m", model] if model else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # the model loads, then this line
    found = re.search(r"http://127\.0\.0\.1:\d+", line)
    if found is None:
        proc.kill()
        sys.exit(f"error: poetvae serve did not start: {line!r}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its pipe drained
    return proc, found.group(0)


def run(url: str, requests: int, clients: int, timeout: float, max_seconds: float) -> dict:
    host, port = loopback(url)
    lock = threading.Lock()
    next_index = iter(range(requests))
    results: list[tuple[str, float, int, int, str]] = []  # path, seconds, status, poems, error
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        while time.monotonic() < deadline:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            path, body = request_for(i)
            start = time.perf_counter()
            status, poems, error = 0, 0, ""
            try:
                conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
                response = conn.getresponse()
                answer = json.loads(response.read())
                status = response.status
                if status == 200:
                    poems = poems_in(path, answer)
                else:
                    error = f"{status} {answer.get('error', '')}"
            except (OSError, http.client.HTTPException, ValueError) as e:
                error = f"{type(e).__name__}: {e}"
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            with lock:
                results.append((path, time.perf_counter() - start, status, poems, error))
        conn.close()

    # one warm-up request, not counted: the first decode builds the model's tables
    warm = http.client.HTTPConnection(host, port, timeout=timeout)
    warm.request("POST", "/api/sample", json.dumps({"n": 1, "seed": 0}), {"content-type": "application/json"})
    warm.getresponse().read()
    warm.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start

    def summary(rows: list) -> dict:
        ms = sorted(1000 * r[1] for r in rows)
        q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
        return {"requests": len(rows), "p50_ms": round(q[49], 1), "p95_ms": round(q[94], 1), "max_ms": round(ms[-1], 1)}

    errors = [r for r in results if r[4]]
    return {
        "url": url,
        "clients": clients,
        "requests_planned": requests,
        "requests_sent": len(results),
        "errors": len(errors),
        "error_kinds": dict(Counter(r[4][:120] for r in errors).most_common(5)),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(results) / wall, 2),
        "poems": sum(r[3] for r in results),
        "poems_per_s": round(sum(r[3] for r in results) / wall, 1),
        "latency": summary(results),
        "by_endpoint": {p: summary([r for r in results if r[0] == p]) for p in sorted({r[0] for r in results})},
        "machine": {"cpu": _cpu(), "cores": _cores(), "python": platform.python_version()},
    }


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", help="the model for the server this starts (default: as poetvae serve)")
    ap.add_argument("--url", help="a server already running on loopback, instead of starting one")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds a request may take")
    ap.add_argument("--max-seconds", type=float, default=1800.0, help="send nothing after this many seconds")
    ap.add_argument("--json", help="also write the report here")
    args = ap.parse_args()
    if args.requests < 1 or args.clients < 1:
        sys.exit("error: --requests and --clients must be at least 1")

    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args.model)
    try:
        report = run(url, args.requests, args.clients, args.timeout, args.max_seconds)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    lat = report["latency"]
    machine = report["machine"]
    print(f"{report['requests_sent']:,} requests from {report['clients']} clients to {report['url']}", end=" ")
    print(f"in {report['wall_s']:.1f} s ({machine['cpu']}, {machine['cores']} cores)")
    print(f"errors {report['errors']}  p50 {lat['p50_ms']:.0f} ms  p95 {lat['p95_ms']:.0f} ms", end="  ")
    print(f"max {lat['max_ms']:.0f} ms  {report['requests_per_s']:.1f} requests/s  {report['poems_per_s']:.1f} poems/s")
    for path, s in report["by_endpoint"].items():
        print(f"  {path:18} {s['requests']:5,}  p50 {s['p50_ms']:7.0f} ms  p95 {s['p95_ms']:7.0f} ms")
    for kind, count in report["error_kinds"].items():
        print(f"  error ×{count}: {kind}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)
    sys.exit(1 if report["errors"] else 0)


if __name__ == "__main__":
    main()
