"""Does `python -m facemask serve` hold under load and bad input?

    .venv/bin/python bench/serve.py outputs/quickstart               # 1, 8, 32 clients; 10,000 requests for RSS
    .venv/bin/python bench/serve.py RUN --requests 20 --soak 200     # the code path (the slow test)

A real server process (`python -m facemask serve RUN --backend onnx`, exported first if the run has
no onnx/) on a free port and a real HTTP client (httpx, one thread per client):

1. Load: for 1, 8 and 32 concurrent clients, each sending --requests single-image POSTs to
   /predict (images drawn once, PNG): latency p50/p95/p99, throughput, the batch sizes the server
   formed (its /metrics histogram, before and after), and errors (must be 0 for good inputs).
   Beside it, in-process throughput of the same images through the same runtime, one batch of
   --max-batch images a call (what the server could do with no HTTP at all).
2. Bad input mixed in: every 10th request of the 8-client round is one of: not an image, damaged
   bytes, a wrong content type, a body over --max-bytes, a decompression bomb; each must get its
   4xx while the good ones keep getting 200.
3. Memory: the server's resident set (VmRSS) before and after --soak requests (8 clients).
4. Memory under attack: --attack concurrent requests (default 20), each a --attack-side square
   (default 6300x6300) 16-bit grey PNG of ~100 KB, under --max-pixels: the server's resident set
   before, its peak during (VmHWM), and after; how many got 200 and how many 503. `--only-attack`
   runs this part alone; `--server-repo DIR` serves from another checkout (an earlier commit, for
   the figure before a change; --max-memory is then not passed).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """The process's resident set now (VmRSS) or at its peak so far (VmHWM), in MB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) / 1024


def grey16_png(side: int) -> bytes:
    """A 16-bit greyscale PNG that compresses to ~100 KB at 6300x6300: many pixels for few bytes."""
    ramp = (np.arange(side, dtype=np.uint32)[None, :] * 7 + np.arange(side, dtype=np.uint32)[:, None]) % 60000
    buffer = io.BytesIO()
    Image.fromarray(ramp.astype(np.uint16)).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def attack(url: str, pid: int, count: int, side: int) -> Dict[str, Any]:
    """`count` concurrent /predict requests of one large 16-bit PNG each: resident memory before,
    at its peak (VmHWM), and 2 s after; the answers' status codes and the wall time."""
    body = grey16_png(side)
    before = rss_mb(pid)
    codes: Dict[int, int] = {}

    def send(_: int) -> int:
        return httpx.post(f"{url}/predict", content=body, headers={"content-type": "image/png"}, timeout=600).status_code

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        for status in pool.map(send, range(count)):
            codes[status] = codes.get(status, 0) + 1
    wall = time.perf_counter() - start
    peak = rss_mb(pid, "VmHWM")
    time.sleep(2)
    return {"requests": count, "side": side, "body_kb": len(body) / 1000, "rss_before_mb": before,
            "peak_mb": peak, "rss_after_mb": rss_mb(pid), "codes": codes, "wall_s": wall}


def start_server(run: Path, repo: Path, options: List[str]) -> Tuple[subprocess.Popen, str, Any, float]:
    """`python -m facemask serve RUN --backend onnx OPTIONS` on a free port, once it is ready:
    (process, url, its log file, seconds to ready)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile("w", prefix="facemask-serve-bench-", suffix=".log", delete=False)
    env = {**os.environ, "PYTHONPATH": str(repo)}
    server = subprocess.Popen([sys.executable, "-m", "facemask", "serve", str(run), "--backend", "onnx", "--port",
                               str(port), *options], cwd=repo, stdout=log, stderr=subprocess.STDOUT, env=env)
    start = time.perf_counter()
    while True:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.perf_counter() - start > 120:
            raise SystemExit(f"the server did not become ready: see {log.name}")
        time.sleep(0.05)
    return server, url, log, time.perf_counter() - start


def print_attack(a: Dict[str, Any], what: str) -> None:
    print(f"Attack ({what}): {a['requests']} concurrent {a['side']}x{a['side']} 16-bit grey PNGs of "
          f"{a['body_kb']:.0f} KB: status counts {a['codes']}, {a['wall_s']:.1f} s; resident memory "
          f"{a['rss_before_mb']:.0f} MB before, peak {a['peak_mb']:.0f} MB, {a['rss_after_mb']:.0f} MB 2 s after")


def images(count: int, side: int = 96) -> List[bytes]:
    from facemask.data.synthetic import sample

    out = []
    for i in range(count):
        buffer = io.BytesIO()
        sample(123, i, side)[0].save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def bad_inputs() -> List[Tuple[str, bytes, str, int]]:
    """(what, body, content type, the status it must get)."""
    good = images(1, 200)[0]
    damaged = bytearray(good)
    damaged[len(damaged) // 3:len(damaged) // 3 + 500] = bytes(500)
    bomb = io.BytesIO()
    Image.new("1", (12000, 12000)).save(bomb, format="PNG")
    return [("not an image", b"hello, server", "image/png", 400), ("damaged bytes", bytes(damaged), "image/png", 400),
            ("wrong content type", b'{"x": 1}', "application/json", 415),
            ("over --max-bytes", os.urandom(2_100_000), "image/jpeg", 413),
            ("decompression bomb", bomb.getvalue(), "image/png", 400)]


def batch_histogram(url: str) -> Tuple[float, float]:
    text = httpx.get(f"{url}/metrics").text
    value = lambda name: float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name)))  # noqa
    return value("facemask_batch_images_count"), value("facemask_batch_images_sum")


def load_round(url: str, bodies: List[bytes], clients: int, per_client: int, bad: List[Tuple] = ()) -> Dict[str, Any]:
    latencies: List[float] = []
    codes: Dict[int, int] = {}
    wrong: List[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(timeout=60) as session:
            for i in range(per_client):
                expected, what = 200, None
                if bad and (k * per_client + i) % 10 == 9:
                    what, body, kind, expected = bad[(k * per_client + i) // 10 % len(bad)]
                else:
                    body, kind = bodies[(k * per_client + i) % len(bodies)], "image/png"
                start = time.perf_counter()
                status = session.post(f"{url}/predict", content=body, headers={"content-type": kind}).status_code
                took = time.perf_counter() - start
                with lock:
                    codes[status] = codes.get(status, 0) + 1
                    if expected == 200:
                        latencies.append(took)
                    if status != expected:
                        wrong.append(f"{what or 'good image'}: {status}, expected {expected}")

    before = batch_histogram(url)
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    after = batch_histogram(url)
    q = np.percentile(latencies, [50, 95, 99]) * 1000
    calls, imgs = after[0] - before[0], after[1] - before[1]
    return {"clients": clients, "requests": clients * per_client, "good": len(latencies), "wall_s": wall,
            "throughput": len(latencies) / wall, "p50_ms": q[0], "p95_ms": q[1], "p99_ms": q[2],
            "mean_batch": imgs / calls if calls else 0.0, "model_calls": calls, "codes": codes, "wrong": wrong}


def in_process(run: Path, bodies: List[bytes], max_batch: int, repeats: int) -> float:
    """Images a second through the runtime without HTTP: decode, preprocess, the graph, a batch a call."""
    from facemask.runtime.limits import Limits
    from facemask.runtime.server import decode

    service = serve_service(run)
    decoded = [decode(b, "x", Limits(), service.draft_side) for b in bodies]
    service.classify(decoded[:max_batch], ["x"] * len(decoded[:max_batch]))  # warm-up
    start, done = time.perf_counter(), 0
    for _ in range(repeats):
        for i in range(0, len(bodies), max_batch):
            chunk = [decode(b, "x", Limits(), service.draft_side) for b in bodies[i:i + max_batch]]
            service.classify(chunk, ["x"] * len(chunk))
            done += len(chunk)
    return done / (time.perf_counter() - start)


def serve_service(run: Path) -> Any:
    from facemask.publish.serve import load_service

    return load_service(str(run), "onnx", detector=None)


def main(argv: List[str] | None = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run folder (exported to ONNX here if it has no onnx/)")
    parser.add_argument("--requests", type=int, default=100, help="requests per client and round")
    parser.add_argument("--soak", type=int, default=10000, help="requests between the two RSS readings")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--attack", type=int, default=20, help="concurrent large images in the memory attack")
    parser.add_argument("--attack-side", type=int, default=6300)
    parser.add_argument("--max-memory", type=float, help="serve's --max-memory (MB; default serve's own)")
    parser.add_argument("--only-attack", action="store_true", help="run the memory attack alone")
    parser.add_argument("--server-repo", default=str(REPO), help="the checkout whose `serve` runs (default this one)")
    parser.add_argument("--output", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    run = Path(args.run).resolve()
    repo = Path(args.server_repo).resolve()
    if not (run / "onnx" / "model.onnx").is_file():
        subprocess.run([sys.executable, "-m", "facemask", "export", str(run)], cwd=REPO, check=True,
                       capture_output=True)
    memory = [] if args.max_memory is None else ["--max-memory", str(args.max_memory)]
    where = f"{platform.machine()}, {os.cpu_count()} cores"
    if args.only_attack:
        server, url, log, _ = start_server(run, repo, memory)
        try:
            figures = {"attack": attack(url, server.pid, args.attack, args.attack_side)}
        finally:
            server.terminate()
            figures["exit_code"] = server.wait(timeout=120)
            log.close()
        print_attack(figures["attack"], f"serve from {repo.name}, {' '.join(memory) or 'default --max-memory'}; "
                                        f"{where}")
        if args.output:
            Path(args.output).write_text(json.dumps(figures, indent=1, default=str))
        return figures
    server, url, log, ready_s = start_server(run, repo, [
        "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--max-queue", "256",
        "--max-bytes", "2000000", *memory])
    try:
        bodies = images(64)
        rounds = [load_round(url, bodies, clients, args.requests) for clients in (1, 8, 32)]
        mixed = load_round(url, bodies, 8, args.requests, bad_inputs())
        rss_before = rss_mb(server.pid)
        soak = load_round(url, bodies, 8, max(1, args.soak // 8))
        rss_after = rss_mb(server.pid)
        alive = httpx.get(f"{url}/health").status_code == 200
        attacked = attack(url, server.pid, args.attack, args.attack_side)
    finally:
        server.terminate()
        code = server.wait(timeout=120)
        log.close()
    local = in_process(run, bodies, args.max_batch, 3)
    print(f"python -m facemask serve {run.name} --backend onnx --max-batch {args.max_batch} --max-wait-ms "
          f"{args.max_wait_ms}: ready in {ready_s:.1f} s; {where}; 96-px PNGs, "
          f"one image a request; in-process (no HTTP, {args.max_batch} images a call): {local:.0f} images/s")
    print("\n| clients | requests | p50 ms | p95 ms | p99 ms | images/s | mean batch | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rounds + [soak]:
        errors = sum(n for c, n in r["codes"].items() if c != 200)
        print(f"| {r['clients']} | {r['requests']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} "
              f"| {r['throughput']:.0f} | {r['mean_batch']:.1f} | {errors} |")
    print(f"\nBad input mixed in (8 clients, every 10th request): status counts {mixed['codes']}; answers other than "
          f"expected: {mixed['wrong'] or 'none'}; server up after: {alive}")
    print(f"Resident memory: {rss_before:.0f} MB before and {rss_after:.0f} MB after {soak['requests']} more requests "
          f"({rss_after - rss_before:+.0f} MB); exit code after SIGTERM: {code}")
    print_attack(attacked, "after the soak")
    figures = {"ready_s": ready_s, "in_process_images_per_s": local, "rounds": rounds, "mixed": mixed, "soak": soak,
               "rss_mb": [rss_before, rss_after], "alive": alive, "attack": attacked, "exit_code": code}
    if args.output:
        Path(args.output).write_text(json.dumps(figures, indent=1, default=str))
    return figures


if __name__ == "__main__":
    main()
