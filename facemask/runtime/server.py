"""`python -m facemask serve MODEL`: the classifier as an HTTP JSON service (FastAPI on uvicorn).

Concurrent requests are batched into one model call (up to --max-batch images, waiting at most
--max-wait-ms after the first); the queue in front of the model is bounded (--max-queue requests),
so overload answers 503 with Retry-After instead of growing memory. Bodies are read against
--max-bytes (413 before a larger body is read whole), images against --max-pixels (400, before
they are decoded), and the bodies and decoded images of all requests together against
--max-memory (a request waits for its share, then 503). Each image is shrunk to what the model
needs right after decoding. A request gets --timeout seconds for its body and decoding (408, or
503 while it waits for memory) and as many for the model (504; a /detect that timed out stops at
its next stage). With an API key every endpoint but /health and /ready wants `Authorization:
Bearer KEY` (401). SIGTERM (uvicorn's graceful shutdown) lets the requests in flight finish for
--drain seconds (what a request can take), then the process exits 0, or 1 if any was cut off.
Nothing here imports torch: the model behind it is a `Service`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Optional, Tuple

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from PIL import Image, UnidentifiedImageError

from facemask.data.images import load_image
from facemask.runtime.limits import API_KEY_ENV, CONVERSION_BYTES, Limits

logger = logging.getLogger("facemask")

OPEN_PATHS = ("/health", "/ready")  # answered without the API key: probes carry no secrets
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class Expired(Exception):
    """A job whose caller has already had its 504: the model thread drops it at its next stage."""


@dataclass
class Service:
    """What the server serves: rows as `predict` writes them (one per image, the run's decision
    rule applied) and, where a face detector is loaded, `detect`'s rows of one photo."""
    labels: List[str]
    classify: Callable[[List[Image.Image], List[str]], List[Dict[str, Any]]]
    # detect(image, name, check): `check()` between its stages raises Expired once the caller is gone.
    detect: Optional[Callable[[Image.Image, str, Callable[[], None]], List[Dict[str, Any]]]] = None
    draft_side: Optional[int] = None  # images are shrunk to no less than this side after decoding (as predict does)
    description: str = ""


class RequestError(Exception):
    def __init__(self, status: int, message: str, headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class MemoryBudget:
    """The bytes that bodies and decoded images may hold, all requests together: a request waits
    for its share until its deadline (then 503), so N concurrent requests cannot take N times the
    per-request limits. Shares are counted from what is known before the bytes are held: a body's
    Content-Length or chunk, an image's header."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.used = capacity, 0
        self.changed = asyncio.Condition()

    async def take(self, size: int, deadline: float) -> None:
        if size > self.capacity:
            raise RequestError(413, f"this needs {size / 1e6:.0f} MB to decode, more than --max-memory "
                                    f"{self.capacity / 1e6:.0f} MB allows: send a smaller image")
        loop = asyncio.get_running_loop()
        async with self.changed:
            if self.used + size <= self.capacity:  # free now: never a wait (wait_for with 0 s left times out)
                self.used += size
                return
            try:
                await asyncio.wait_for(self.changed.wait_for(lambda: self.used + size <= self.capacity),
                                       max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise RequestError(503, f"busy: the images being decoded fill --max-memory "
                                        f"{self.capacity / 1e6:.0f} MB; retry shortly", {"Retry-After": "1"}) from None
            self.used += size

    async def give(self, size: int) -> None:
        async with self.changed:
            self.used -= size
            self.changed.notify_all()


class Held:
    """What one request holds of the MemoryBudget, all given back when it ends."""

    def __init__(self, budget: MemoryBudget, deadline: float) -> None:
        self.budget, self.deadline, self.bytes = budget, deadline, 0

    async def take(self, size: int) -> None:
        await self.budget.take(size, self.deadline)
        self.bytes += size

    async def give(self, size: int) -> None:
        size = max(0, min(size, self.bytes))
        self.bytes -= size
        await self.budget.give(size)


@dataclass
class _Pending:
    images: List[Image.Image]
    names: List[str]
    future: asyncio.Future


@dataclass
class Metrics:
    """Prometheus metrics of one app, in a registry of its own."""
    registry: Any = None
    requests: Any = None
    latency: Any = None
    batch_size: Any = None
    errors: Any = None
    queued: Any = None

    @classmethod
    def create(cls, max_batch: int) -> "Metrics":
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        registry = CollectorRegistry()
        buckets = sorted({1, 2, 4, 8, 16, 32, 64, 128, max_batch})
        return cls(
            registry,
            Counter("facemask_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                    registry=registry),
            Histogram("facemask_request_seconds", "request latency in seconds", ["endpoint"], registry=registry,
                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)),
            Histogram("facemask_batch_images", "images per model call", registry=registry, buckets=buckets),
            Counter("facemask_errors", "requests refused or failed, by reason", ["endpoint", "reason"],
                    registry=registry),
            Gauge("facemask_queued_requests", "requests waiting for the model", registry=registry),
        )


class Batcher:
    """Requests' images gathered into one model call, run on a worker thread (the event loop keeps
    accepting meanwhile). The queue is bounded: a full queue is a 503 for the caller."""

    def __init__(self, run: Callable[[List[Image.Image], List[str]], List[Dict[str, Any]]], limits: Limits,
                 metrics: Metrics) -> None:
        self.run, self.limits, self.metrics = run, limits, metrics
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=limits.max_queue)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="facemask-model")
        self.task: Optional[asyncio.Task] = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, images: List[Image.Image], names: List[str]) -> List[Dict[str, Any]]:
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Pending(images, names, future))
        except asyncio.QueueFull:
            raise RequestError(503, f"overloaded: {self.limits.max_queue} requests are already waiting for the "
                                    "model; retry shortly", {"Retry-After": "1"}) from None
        self.metrics.queued.set(self.queue.qsize())
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        carried: Optional[_Pending] = None
        while True:
            batch = [carried or await self.queue.get()]
            carried = None
            count = len(batch[0].images)
            deadline = loop.time() + self.limits.max_wait_ms / 1000
            while count < self.limits.max_batch:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), left)
                except asyncio.TimeoutError:
                    break
                if count + len(item.images) > self.limits.max_batch:
                    carried = item  # whole requests only: it opens the next batch
                    break
                batch.append(item)
                count += len(item.images)
            self.metrics.queued.set(self.queue.qsize())
            live = [item for item in batch if not item.future.done()]  # a caller that timed out is gone
            if not live:
                continue
            images = [image for item in live for image in item.images]
            names = [name for item in live for name in item.names]
            self.metrics.batch_size.observe(len(images))
            try:
                rows = await loop.run_in_executor(self.executor, self.run, images, names)
            except Exception as err:  # the model failed: every caller of this batch gets a 500
                logger.exception("model call failed")
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(RequestError(500, f"the model failed: {type(err).__name__}"))
                continue
            start = 0
            for item in live:
                if not item.future.done():
                    item.future.set_result(rows[start:start + len(item.images)])
                start += len(item.images)


def _stored_bytes(mode: str) -> int:
    """Bytes a pixel of `mode` takes in PIL's memory (RGB is stored in 4)."""
    return 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4


def header(data: bytes, name: str, limits: Limits, draft_side: Optional[int], budget: Optional[List[int]] = None
           ) -> int:
    """The bytes decoding `data` may take (its stored pixels at the size it will be decoded at, and
    the conversions), from its header; refusing what is not an image (400) and pixels beyond
    --max-pixels (400) before the pixels are decoded. `budget`: the pixels the request's images
    may still take, all together (a list of one, spent here)."""
    if not data:
        raise RequestError(400, f"{name}: empty body: send the image's bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if draft_side and image.format == "JPEG":
                image.draft("RGB", (draft_side, draft_side))  # as load_image decodes it
            decoded = image.size[0] * image.size[1] * (_stored_bytes(image.mode) + CONVERSION_BYTES)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as err:
        reason = "not an image PIL can read" if isinstance(err, UnidentifiedImageError) else str(err).splitlines()[0]
        raise RequestError(400, f"{name}: {reason}") from None
    left = limits.max_pixels if budget is None else budget[0]
    if width * height > left:
        raise RequestError(400, f"{name}: {width}x{height} is {width * height} pixels, more than the request's "
                                f"--max-pixels {limits.max_pixels} allow (a decompression bomb, or photos to "
                                "downscale first)")
    if budget is not None:
        budget[0] -= width * height
    return decoded


def load(data: bytes, name: str, draft_side: Optional[int]) -> Image.Image:
    """The image, upright RGB, shrunk to no less than `draft_side` (the one decoder's rule)."""
    try:
        return load_image({"bytes": data, "path": None}, draft_side)
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as err:
        raise RequestError(400, f"{name}: cannot decode: {str(err).splitlines()[0]}") from None


def decode(data: bytes, name: str, limits: Limits, draft_side: Optional[int], budget: Optional[List[int]] = None
           ) -> Image.Image:
    """header()'s checks, then load(): one image outside the server (the benchmark's in-process path)."""
    header(data, name, limits, draft_side, budget)
    return load(data, name, draft_side)


async def decoded(data: bytes, name: str, limits: Limits, draft_side: Optional[int], held: Held,
                  budget: Optional[List[int]] = None) -> Image.Image:
    """One image decoded within the memory budget: its decoding's share taken first (waiting for
    it), and all but what the shrunk image keeps given back after."""
    cost = header(data, name, limits, draft_side, budget)
    await held.take(cost)
    try:
        # On a thread: PIL releases the GIL, and the event loop goes on accepting meanwhile.
        image = await asyncio.get_running_loop().run_in_executor(None, load, data, name, draft_side)
    except BaseException:
        await held.give(cost)
        raise
    await held.give(cost - image.width * image.height * 4)
    return image


async def read_body(request: Request, limits: Limits, held: Held) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed --max-bytes (from its
    Content-Length before any byte is read, else while it streams). A chunked body's chunks are
    taken from the memory budget as they come (a Content-Length is taken by the caller first)."""
    length = request.headers.get("content-length")
    known = length is not None and length.isdigit()
    if known and int(length) > limits.max_bytes:
        raise RequestError(413, f"body of {length} bytes is over --max-bytes {limits.max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_bytes:
            raise RequestError(413, f"body is over --max-bytes {limits.max_bytes}")
        if not known:
            await held.take(len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)


async def images_of(request: Request, limits: Limits, draft_side: Optional[int], held: Held
                    ) -> Tuple[List[Image.Image], List[str]]:
    """One image in the body (image/*, application/octet-stream), or several as multipart files."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("multipart/form-data", "application/octet-stream") and not kind.startswith("image/"):
        raise RequestError(415, f"unsupported content type {kind or '(none)'}: send an image (image/jpeg, image/png, "
                                "...) or multipart/form-data with image files")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) <= limits.max_bytes:
        # Before the body's own timeout starts: waiting for memory is a 503, not a body that did not arrive.
        await held.take(int(length))
    loop = asyncio.get_running_loop()
    body = await asyncio.wait_for(read_body(request, limits, held), max(0.0, held.deadline - loop.time()))
    request.state.read = True
    if kind != "multipart/form-data":
        return [await decoded(body, "body", limits, draft_side, held)], ["body"]
    request._body = body  # starlette's form parser reads the body already read and checked above
    images, names, budget = [], [], [limits.max_pixels]  # the pixels of all the request's images together
    try:
        async with request.form(max_files=limits.max_batch, max_fields=limits.max_batch) as form:
            for key, value in form.multi_items():
                if not hasattr(value, "read"):
                    continue
                name = value.filename or key
                data = await value.read()  # a second copy of the file's bytes while it is decoded
                size = len(data)
                await held.take(size)
                try:
                    images.append(await decoded(data, name, limits, draft_side, held, budget))
                finally:
                    del data
                    await held.give(size)
                names.append(name)
    except HTTPException as err:  # starlette's own refusals: too many files, a malformed body
        raise RequestError(400, f"multipart body refused: {err.detail} (at most --max-batch {limits.max_batch} "
                                "files a request)") from None
    if not images:
        raise RequestError(400, "the multipart body holds no file: send the images as file fields")
    return images, names


def create_app(load: Callable[[], Service], limits: Optional[Limits] = None, api_key: Optional[str] = None
               ) -> FastAPI:
    """The FastAPI app. `load` builds the Service; it runs on a thread at start-up, so /health
    answers at once and /ready says when the model is there. With `api_key`, every path but
    /health and /ready wants `Authorization: Bearer <api_key>`."""
    limits = limits or Limits()
    metrics = Metrics.create(limits.max_batch)
    state: Dict[str, Any] = {"service": None, "error": None, "batcher": None, "admitted": 0, "cut_off": 0,
                             "budget": None}

    def loading() -> None:
        try:
            started = time.perf_counter()
            state["service"] = load()
            logger.info("model ready in %.1f s: %s", time.perf_counter() - started, state["service"].description)
        except Exception as err:  # /ready says why; the process stays up for /health and the logs
            state["error"] = f"{type(err).__name__}: {err}"
            logger.error("the model could not be loaded: %s", state["error"])

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        threading.Thread(target=loading, name="facemask-load", daemon=True).start()
        batcher = Batcher(lambda images, names: state["service"].classify(images, names), limits, metrics)
        batcher.start()
        state["batcher"] = batcher
        state["budget"] = MemoryBudget(limits.max_memory)
        yield
        await batcher.stop()

    app = FastAPI(title="facemask", description="Face-mask classification: POST images to /predict, a photo to "
                                                "/detect.", lifespan=lifespan)
    expected = f"Bearer {api_key}".encode() if api_key else None

    async def authorise(request: Request, call_next: Callable) -> Any:
        if request.url.path in OPEN_PATHS:
            return await call_next(request)
        given = request.headers.get("authorization", "").strip().encode()
        # Constant time: how much of a guess matched does not show in how long the answer takes.
        if not hmac.compare_digest(given, expected):
            metrics.errors.labels("auth", "401").inc()
            return JSONResponse({"error": "send the service's key as 'Authorization: Bearer KEY'"}, status_code=401,
                                headers={"WWW-Authenticate": 'Bearer realm="facemask"'})
        return await call_next(request)

    if expected is not None:  # without a key, no middleware: nothing added to each request's path
        app.middleware("http")(authorise)

    def answer(endpoint: str, started: float, status: int, payload: Any, headers: Optional[Dict] = None) -> Any:
        metrics.requests.labels(endpoint, str(status)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return JSONResponse(payload, status_code=status, headers=headers)

    async def guarded(endpoint: str, request: Request, work: Callable[[Held], Any]) -> Any:
        started = time.perf_counter()
        admitted = False
        held = Held(state["budget"], asyncio.get_running_loop().time() + limits.timeout_s)
        try:
            if state["service"] is None:
                reason = "the model could not be loaded (see the server's log)" if state["error"] else \
                    "the model is still loading"
                raise RequestError(503, reason, {"Retry-After": "5"})
            # Admission before the body is read: under overload nothing more is held than
            # --max-queue requests (bodies, decoded images) waiting and a batch at work.
            if state["admitted"] >= limits.max_queue + limits.max_batch:
                raise RequestError(503, f"overloaded: {state['admitted']} requests are in the server; retry shortly",
                                   {"Retry-After": "1"})
            state["admitted"] += 1
            admitted = True
            return answer(endpoint, started, 200, await work(held))
        except RequestError as err:
            metrics.errors.labels(endpoint, str(err.status)).inc()
            return answer(endpoint, started, err.status, {"error": err.message}, err.headers)
        except asyncio.TimeoutError:
            metrics.errors.labels(endpoint, "timeout").inc()
            phase = "the body did not arrive" if not getattr(request.state, "read", False) else "no answer"
            status = 408 if phase == "the body did not arrive" else 504
            return answer(endpoint, started, status, {"error": f"{phase} within --timeout {limits.timeout_s} s"})
        except asyncio.CancelledError:  # the shutdown's drain ran out: this caller gets no answer
            state["cut_off"] += 1
            raise
        finally:
            if admitted:
                state["admitted"] -= 1
            await held.give(held.bytes)

    @app.post("/predict", summary="Classify one image (the body) or several (multipart files)")
    async def predict(request: Request) -> Any:
        async def work(held: Held) -> Any:
            service: Service = state["service"]
            images, names = await images_of(request, limits, service.draft_side, held)
            rows = await asyncio.wait_for(state["batcher"].submit(images, names), limits.timeout_s)
            return {"predictions": rows}
        return await guarded("predict", request, work)

    @app.post("/detect", summary="Every face in a photo (the body): detect's table")
    async def detect(request: Request) -> Any:
        async def work(held: Held) -> Any:
            service: Service = state["service"]
            if service.detect is None:
                raise RequestError(501, "this server has no face detector loaded")
            images, names = await images_of(request, limits, None, held)
            if len(images) != 1:
                raise RequestError(400, "/detect takes one photo a request")
            gone = threading.Event()

            def check() -> None:
                if gone.is_set():
                    raise Expired(f"{names[0]}: its caller timed out")

            def job() -> List[Dict[str, Any]]:
                check()  # a job that waited past its caller's timeout is not started
                return service.detect(images[0], names[0], check)

            loop = asyncio.get_running_loop()
            try:
                rows = await asyncio.wait_for(loop.run_in_executor(state["batcher"].executor, job), limits.timeout_s)
            except asyncio.TimeoutError:
                gone.set()  # the model thread stops this job at its next stage: /predict's batches wait no longer
                raise
            return {"faces": rows}
        return await guarded("detect", request, work)

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> Any:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: the model is loaded")
    async def ready() -> Any:
        if state["service"] is None:
            reason = "the model could not be loaded (see the server's log)" if state["error"] else "loading"
            return JSONResponse({"ready": False, "reason": reason}, status_code=503)
        return {"ready": True, "labels": state["service"].labels}

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus() -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.state.metrics = metrics
    app.state.requests = state
    return app


def return_freed_memory() -> None:
    """Make glibc hand every freed allocation of 1 MB or more back to the system at once.

    By default glibc raises its mmap threshold to the size of the last large block freed (up to 32
    MB), so after the first large image the next ones (PIL's 16 MB blocks, numpy's arrays) come
    from per-thread heaps that keep their pages: measured, 500 MB still resident after a burst of
    large images that --max-memory had held to one at a time. A fixed threshold turns that off.
    Elsewhere than glibc (musl, macOS) this does nothing."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        return
    if mallopt is not None and getattr(libc, "gnu_get_libc_version", None) is not None:
        mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


def serve(load: Callable[[], Service], host: str, port: int, limits: Limits, log_level: str = "info",
          api_key: Optional[str] = None) -> int:
    """Run the app until SIGTERM or SIGINT, then let the requests in flight finish for
    limits.drain seconds: 0 once they have, 1 if any was cut off (or the server did not start)."""
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises SIGTERM once its graceful shutdown is over, so the process would end
            # killed by it (143); the exit code says instead whether every request was answered.
            previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    if host not in LOCAL_HOSTS:
        logger.warning("serving on %s: reachable from other machines (the default is 127.0.0.1)%s", host,
                       "" if api_key else f"; anyone who reaches the port may use it: set ${API_KEY_ENV} "
                                          "(or --api-key) to ask callers for a key")
    return_freed_memory()
    app = create_app(load, limits, api_key)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=max(limits.drain, 0.1), access_log=True)
    server = Server(config)
    server.run()
    requests = app.state.requests
    cut_off = requests["cut_off"] + requests["admitted"]  # cancelled, or left unfinished by a forced exit
    if cut_off:
        logger.error("%d request(s) were cut off at shutdown: --drain %g s was not enough for them", cut_off,
                     limits.drain)
    return 0 if server.started and not cut_off else 1
