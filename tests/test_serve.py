"""The HTTP service on a real uvicorn process and a real client: batching, every bad-input case,
overload, timeouts, SIGTERM's drain, metrics. A stand-in model of known speed (tests/serve_app.py)
serves the mechanics; the real model's answers are tested against `predict` in test_runtime.py."""

import concurrent.futures
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the server at `url` says it is ready; fails with its output if it exits or takes too long."""
    end = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"server not ready in {timeout} s")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)


class Server:
    def __init__(self, delay: float = 0.0, env=None, **limits):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, str(HERE / "serve_app.py"), str(self.port), str(delay),
                                      *[f"{k}={v}" for k, v in limits.items()]],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})})
        wait_ready(self.url, self.proc, 60)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def server(request):
    made = []

    def start(delay=0.0, env=None, **limits):
        made.append(Server(delay, env, **limits))
        return made[-1]

    yield start
    for s in made:
        s.stop()


def png(width=40, height=30, mode="RGB") -> bytes:
    rng = np.random.default_rng(width * height)
    shape = (height, width) if mode == "L" else (height, width, len(mode))
    buffer = io.BytesIO()
    Image.fromarray((rng.random(shape) * 255).astype(np.uint8), mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_one_image_in_the_body_or_several_as_files(server):
    s = server()
    answer = httpx.post(f"{s.url}/predict", content=png(), headers={"content-type": "image/png"})
    assert answer.status_code == 200
    assert answer.json()["predictions"] == [{"path": "body", "label": "with_mask", "confidence": 1.0, "batch": 1,
                                             "size": [40, 30]}]
    files = [("files", (f"face{i}.png", png(20 + i, 20, "RGBA" if i else "L"), "image/png")) for i in range(3)]
    rows = httpx.post(f"{s.url}/predict", files=files).json()["predictions"]
    assert [r["path"] for r in rows] == ["face0.png", "face1.png", "face2.png"]
    assert [r["size"] for r in rows] == [[20, 20], [21, 20], [22, 20]]
    assert httpx.get(f"{s.url}/health").json() == {"status": "ok"}
    assert "/predict" in httpx.get(f"{s.url}/openapi.json").json()["paths"]


def test_bad_input_gets_its_4xx_and_the_server_stays_up(server):
    s = server(max_bytes=50_000, max_pixels=1_000_000)
    post = lambda body, kind="image/png": httpx.post(f"{s.url}/predict", content=body,  # noqa: E731
                                                     headers={"content-type": kind})
    not_image = post(b"these are not the bytes of an image")
    assert not_image.status_code == 400 and "not an image" in not_image.json()["error"]
    assert post(b"{}", "application/json").status_code == 415
    damaged = bytearray(png(120, 120))
    damaged[100:400] = bytes(300)  # damaged bytes inside the image data, not a shorter file
    assert post(bytes(damaged)).status_code == 400
    big = post(os.urandom(60_000), "image/jpeg")
    assert big.status_code == 413 and "--max-bytes" in big.json()["error"]

    def chunks():  # no Content-Length: refused while it streams
        for _ in range(10):
            yield os.urandom(10_000)
    assert httpx.post(f"{s.url}/predict", content=chunks(), headers={"content-type": "image/png"}).status_code == 413
    bomb = io.BytesIO()
    Image.new("1", (5000, 5000)).save(bomb, format="PNG")  # 25 MP in a few kB
    refused = post(bomb.getvalue())
    assert refused.status_code == 400 and "--max-pixels" in refused.json()["error"] and len(bomb.getvalue()) < 50_000
    assert httpx.post(f"{s.url}/predict", files=[("note", (None, "text"))]).status_code == 400
    many = [("files", (f"f{i}.png", png(10, 10), "image/png")) for i in range(40)]  # --max-batch is 32
    refused = httpx.post(f"{s.url}/predict", files=many)
    assert refused.status_code == 400 and "--max-batch" in refused.json()["error"]
    flat = io.BytesIO()
    Image.new("RGB", (600, 600), (90, 120, 150)).save(flat, format="PNG")  # 0.36 MP in a few kB
    big = [("files", (f"f{i}.png", flat.getvalue(), "image/png")) for i in range(3)]  # 1.08 MP together
    refused = httpx.post(f"{s.url}/predict", files=big)
    assert refused.status_code == 400 and "--max-pixels" in refused.json()["error"]
    assert post(png()).status_code == 200  # still up, still right
    metrics = httpx.get(f"{s.url}/metrics").text
    assert 'facemask_errors_total{endpoint="predict",reason="413"} 2.0' in metrics
    assert 'facemask_requests_total{endpoint="predict",status="200"} 1.0' in metrics


def test_concurrent_requests_share_model_calls(server):
    s = server(delay=0.3, max_batch=8, max_wait_ms=300)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: httpx.post(f"{s.url}/predict", content=png(),
                                                     headers={"content-type": "image/png"}, timeout=30), range(8)))
    assert all(a.status_code == 200 for a in answers)
    batches = [a.json()["predictions"][0]["batch"] for a in answers]
    assert max(batches) > 1
    metrics = httpx.get(f"{s.url}/metrics").text
    calls = float(next(line.split()[-1] for line in metrics.splitlines()
                       if line.startswith("facemask_batch_images_count")))
    assert calls < 8 and float(next(line.split()[-1] for line in metrics.splitlines()
                                    if line.startswith("facemask_batch_images_sum"))) == 8


def test_overload_is_503_with_retry_after_not_a_queue_without_end(server):
    s = server(delay=0.4, max_batch=1, max_wait_ms=1, max_queue=2)
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: httpx.post(f"{s.url}/predict", content=png(),
                                                     headers={"content-type": "image/png"}, timeout=60), range(12)))
    codes = sorted(a.status_code for a in answers)
    assert set(codes) == {200, 503} and codes.count(503) >= 6
    assert all(a.headers["retry-after"] == "1" for a in answers if a.status_code == 503)
    assert httpx.post(f"{s.url}/predict", content=png(), headers={"content-type": "image/png"},
                      timeout=30).status_code == 200


def test_timeouts_while_the_body_arrives_and_while_the_model_works(server):
    s = server(delay=1.5, timeout_s=0.5)
    slow_model = httpx.post(f"{s.url}/predict", content=png(), headers={"content-type": "image/png"}, timeout=30)
    assert slow_model.status_code == 504
    with socket.create_connection(("127.0.0.1", s.port)) as raw:
        raw.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
                    + b"\x89PNG")  # the rest never comes
        raw.settimeout(10)
        head = raw.recv(4096).decode("latin-1")
    assert head.startswith("HTTP/1.1 408")


def test_sigterm_lets_requests_in_flight_finish_then_exits_0(server):
    s = server(delay=2.0)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, f"{s.url}/predict", content=png(), headers={"content-type": "image/png"},
                              timeout=30)
        time.sleep(0.7)  # the request is with the model
        s.proc.send_signal(signal.SIGTERM)
        answer = pending.result()
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "with_mask"
    assert s.proc.wait(timeout=30) == 0


def test_the_real_model_served_without_torch_answers_as_predict_and_detect(onnx_run, tmp_path):
    """`python -m facemask serve RUN --backend onnx` with torch, transformers and datasets absent:
    /predict's rows are predict's, /detect's faces are detect's, for the same images."""
    from conftest import compose_scene
    from test_runtime import BLOCKER, training_only_modules

    from facemask.runtime.decision import decision_rule
    from facemask.runtime.model import load_onnx_model
    from facemask.runtime.predict import predict_files

    port = free_port()
    script = BLOCKER.format(absent=set(training_only_modules())) + (f"from facemask.__main__ import main\nsys.exit(main(['serve', {str(onnx_run)!r}, '--backend', "
                        f"'onnx', '--port', '{port}', '--threshold', 'best F1']))")
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        names = []
        for i, (width, height) in enumerate([(64, 64), (37, 91), (300, 120)]):
            names.append(tmp_path / f"face{i}.png")
            Image.fromarray((np.random.default_rng(i).random((height, width, 3)) * 255).astype(np.uint8)).save(names[-1])
        files = [("files", (p.name, p.read_bytes(), "image/png")) for p in names]
        served = httpx.post(f"{url}/predict", files=files, timeout=60).json()["predictions"]
        model = load_onnx_model(str(onnx_run))
        rule = decision_rule(onnx_run, model.labels, "best F1", None).threshold
        expected, _ = predict_files(model, names, threshold=rule)
        assert served == [{**row, "path": Path(row["path"]).name} for row in expected]
        photo = tmp_path / "street.jpg"
        compose_scene()[0].save(photo, quality=92)
        faces = httpx.post(f"{url}/detect", content=photo.read_bytes(), headers={"content-type": "image/jpeg"},
                           timeout=60).json()["faces"]
        from facemask.__main__ import main as facemask_main

        # `detect` itself on the same photo, same rule: the same faces, boxes, labels and probabilities.
        assert facemask_main(["detect", str(onnx_run), str(photo), "--backend", "onnx", "--threshold", "best F1",
                              "--output", str(tmp_path / "faces")]) == 0
        table = json.loads((tmp_path / "faces" / "detections.json").read_text())
        assert len(faces) >= 3 and [{**f, "file": "street.jpg"} for f in faces] == \
            [{**row, "file": Path(row["file"]).name} for row in table]
        metrics = httpx.get(f"{url}/metrics").text
        assert 'facemask_requests_total{endpoint="detect",status="200"} 1.0' in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_bad_serve_options_exit_2_before_serving(onnx_run, evaluated_run, capsys):
    from facemask.__main__ import main

    for args, message in ((["--threshold", "best guess"], "operating points are"),
                          (["--max-batch", "0"], "--max-batch must be at least 1"),
                          (["--detector", "haar"], "unknown face detector 'haar'"),
                          (["--max-memory", "300"], "--max-memory 300 MB cannot hold one image of --max-pixels"),
                          (["--api-key", " "], "--api-key is empty"), (["--drain", "-1"], "--drain must be")):
        assert main(["serve", str(onnx_run), *args]) == 2
        assert message in capsys.readouterr().err
    # A run not exported: no graph to serve (and the server does not start, never to be ready).
    assert main(["serve", str(evaluated_run), "--backend", "onnx"]) == 2
    assert "export" in capsys.readouterr().err


KEY = "s3cret-Key-for-the-test"


def test_with_an_api_key_only_health_and_ready_answer_without_it(server):
    s = server(env={"FACEMASK_API_KEY": KEY}, log="info")
    body = {"content": png(), "headers": {"content-type": "image/png"}}
    assert httpx.get(f"{s.url}/health").status_code == 200 and httpx.get(f"{s.url}/ready").status_code == 200
    for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": f"Basic {KEY}"},
                    {"authorization": f"Bearer {KEY}x"}, {"authorization": KEY}):
        refused = httpx.post(f"{s.url}/predict", content=body["content"],
                             headers={**body["headers"], **headers})
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer"), headers
        assert "Authorization: Bearer KEY" in refused.json()["error"]
    for path in ("/metrics", "/docs", "/openapi.json"):
        assert httpx.get(f"{s.url}{path}").status_code == 401, path
    auth = {"authorization": f"Bearer {KEY}"}
    answer = httpx.post(f"{s.url}/predict", content=body["content"], headers={**body["headers"], **auth})
    assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "with_mask"
    metrics = httpx.get(f"{s.url}/metrics", headers=auth)
    assert metrics.status_code == 200 and 'facemask_errors_total{endpoint="auth",reason="401"} 8.0' in metrics.text
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(timeout=30) == 0
    log = s.proc.stdout.read()
    assert "POST /predict HTTP/1.1\" 401" in log and "POST /predict HTTP/1.1\" 200" in log  # the access log is on
    assert KEY not in log and "reachable from other machines" not in log


def test_bound_beyond_localhost_without_a_key_warns(server):
    warned = server(host="0.0.0.0")
    keyed = server(host="0.0.0.0", env={"FACEMASK_API_KEY": KEY})
    for s in (warned, keyed):
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(timeout=30) == 0
    assert "anyone who reaches the port may use it" in warned.proc.stdout.read()
    log = keyed.proc.stdout.read()
    assert "reachable from other machines" in log and "anyone who reaches" not in log and KEY not in log


def test_an_empty_api_key_is_refused():
    from facemask.config.schema import ConfigError
    from facemask.runtime.limits import api_key

    assert api_key(None, {}) is None and api_key(None, {"FACEMASK_API_KEY": "k"}) == "k"
    assert api_key("given", {"FACEMASK_API_KEY": "k"}) == "given"
    for given, env, origin in (("", {}, "--api-key"), (None, {"FACEMASK_API_KEY": " "}, "FACEMASK_API_KEY")):
        with pytest.raises(ConfigError, match=f"{origin}.* is empty"):
            api_key(given, env)


def trickled(body: bytes, pieces: int, pause: float):
    """The body in `pieces` chunks, `pause` seconds apart (no Content-Length: chunked)."""
    step = -(-len(body) // pieces)
    for start in range(0, len(body), step):
        yield body[start:start + step]
        time.sleep(pause)


def test_sigterm_waits_for_what_a_request_can_take(server):
    """A body that takes most of --timeout to arrive, then a model call that takes most of it
    again: legitimately almost twice --timeout, and SIGTERM in the middle still lets it finish."""
    s = server(delay=1.5, timeout_s=2.0)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, f"{s.url}/predict", content=trickled(png(), 3, 0.4),
                              headers={"content-type": "image/png"}, timeout=30)
        time.sleep(0.2)
        s.proc.send_signal(signal.SIGTERM)
        answer = pending.result()
    assert answer.status_code == 200, answer.text
    assert s.proc.wait(timeout=30) == 0


def test_a_request_cut_off_at_shutdown_makes_the_exit_code_non_zero(server):
    s = server(delay=3.0, timeout_s=10.0, drain_s=0.5)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.post, f"{s.url}/predict", content=png(), headers={"content-type": "image/png"},
                              timeout=30)
        time.sleep(0.5)  # the request is with the model
        s.proc.send_signal(signal.SIGTERM)
        try:
            cut = pending.result().status_code  # uvicorn answers 500 for a request it cancels
        except httpx.TransportError:
            cut = None
    assert cut != 200
    assert s.proc.wait(timeout=30) == 1
    assert "1 request(s) were cut off at shutdown" in s.proc.stdout.read()


def test_a_detect_that_timed_out_frees_the_model_thread(server):
    """/detect's job stops at its next stage once its caller has had the 504, so /predict's
    batches, which share the one model thread, do not wait for the rest of it (20 x 0.25 s)."""
    s = server(timeout_s=1.0, stages=20, stage_s=0.25)
    started = time.monotonic()
    late = httpx.post(f"{s.url}/detect", content=png(), headers={"content-type": "image/png"}, timeout=30)
    assert late.status_code == 504 and time.monotonic() - started < 2.5
    started = time.monotonic()
    answer = httpx.post(f"{s.url}/predict", content=png(), headers={"content-type": "image/png"}, timeout=30)
    assert answer.status_code == 200 and time.monotonic() - started < 1.5


def grey16_png(side: int) -> bytes:
    """A 16-bit greyscale PNG that compresses to a few kB: many pixels for few bytes."""
    ramp = (np.arange(side, dtype=np.uint32)[None, :] * 7 + np.arange(side, dtype=np.uint32)[:, None]) % 60000
    buffer = io.BytesIO()
    Image.fromarray(ramp.astype(np.uint16)).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def vm(pid: int, field: str) -> float:
    """/proc/PID/status's VmRSS or VmHWM (the peak resident set), in MB."""
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc")
def test_concurrent_large_images_stay_within_the_memory_budget(server):
    """The issue's attack, scaled down: 8 concurrent 3000x3000 16-bit PNGs of a few kB each. Each
    may take ~130 MB to decode (by the server's own reckoning); with --max-memory 200 MB they are
    decoded one or so at a time and shrunk at once, so the process's peak stays near its start."""
    s = server(max_memory_mb=200, max_bytes=2_000_000, timeout_s=30.0)
    body = grey16_png(3000)
    assert len(body) < 200_000
    httpx.post(f"{s.url}/predict", content=png(), headers={"content-type": "image/png"})  # warm
    before = vm(s.proc.pid, "VmHWM")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: httpx.post(f"{s.url}/predict", content=body, timeout=60,
                                                     headers={"content-type": "image/png"}), range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    assert all(a.json()["predictions"][0]["size"] == [3000, 3000] for a in answers)
    peak = vm(s.proc.pid, "VmHWM")
    assert peak - before < 200, f"peak resident set rose by {peak - before:.0f} MB"


def test_a_request_waits_for_its_share_of_memory_then_gets_503(server):
    """A first request's 28 MB body (a small PNG and trailing bytes) holds most of --max-memory
    from its Content-Length on, through its model call; a second request's image does not fit
    beside it: it waits until its --timeout, then 503. An image that needs more than the whole
    budget is 413 at once."""
    s = server(delay=1.5, max_memory_mb=40, max_bytes=30_000_000, timeout_s=2.0)
    flat = io.BytesIO()
    Image.new("L", (1000, 1000), 90).save(flat, format="PNG")  # 1 MP: 13 MB to decode, by the server's reckoning
    small = io.BytesIO()
    Image.new("L", (300, 300), 30).save(small, format="PNG")
    big_body = small.getvalue() + bytes(28_000_000)  # PIL stops reading at the PNG's end
    with socket.create_connection(("127.0.0.1", s.port)) as hog:
        hog.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                    + f"Content-Length: {len(big_body)}\r\n\r\n".encode())
        time.sleep(0.2)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            pending = pool.submit(httpx.post, f"{s.url}/predict", content=flat.getvalue(),
                                  headers={"content-type": "image/png"}, timeout=30)
            time.sleep(1.0)
            hog.sendall(big_body)  # within the first request's --timeout: it goes on to the model
            busy = pending.result()
            waited = time.monotonic() - started
        hog.settimeout(10)
        assert hog.recv(4096).decode("latin-1").startswith("HTTP/1.1 200")
    assert busy.status_code == 503 and "--max-memory" in busy.json()["error"], busy.text
    assert busy.headers["retry-after"] == "1" and 1.8 < waited < 5
    huge = io.BytesIO()
    Image.new("L", (2000, 2000)).save(huge, format="PNG")  # 4 MP: 52 MB, more than the whole 40
    refused = httpx.post(f"{s.url}/predict", content=huge.getvalue(), headers={"content-type": "image/png"})
    assert refused.status_code == 413 and "--max-memory" in refused.json()["error"]
    assert httpx.post(f"{s.url}/predict", content=flat.getvalue(), headers={"content-type": "image/png"},
                      timeout=30).status_code == 200


def test_the_real_detect_stops_between_its_stages(onnx_run):
    """serve's /detect job (the detector, then the crops' classification a batch at a time) calls
    the server's check between its stages, so a caller's timeout stops it there."""
    from conftest import compose_scene

    from facemask.publish.serve import load_service
    from facemask.runtime.server import Expired

    service = load_service(str(onnx_run), "onnx")
    photo = compose_scene()[0]
    calls = []

    def check():
        calls.append(1)

    faces = service.detect(photo, "street.jpg", check)
    assert len(faces) >= 3 and len(calls) >= 1

    def gone():
        raise Expired("its caller timed out")

    with pytest.raises(Expired):
        service.detect(photo, "street.jpg", gone)
