"""`python -m facemask serve MODEL`: the classifier as an HTTP JSON service (FastAPI on uvicorn).

Concurrent requests are batched into one model call (up to --max-batch images, waiting at most
--max-wait-ms after the first); the queue in front of the model is bounded (--max-queue requests),
so overload answers 503 with Retry-After instead of growing memory. Bodies are read against
--max-bytes (413 before a larger body is read whole), images against --max-pixels (400, before
they are decoded), and a request gets --timeout seconds (408 while its body arrives, 504 while it
waits for the model). SIGTERM (uvicorn's graceful shutdown) lets the requests in flight finish,
then the process exits 0. Nothing here imports torch: the model behind it is a `Service`.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from facemask.runtime.limits import Limits

logger = logging.getLogger("facemask")



@dataclass
class Service:
    """What the server serves: rows as `predict` writes them (one per image, the run's decision
    rule applied) and, where a face detector is loaded, `detect`'s rows of one photo."""
    labels: List[str]
    classify: Callable[[List[Image.Image], List[str]], List[Dict[str, Any]]]
    detect: Optional[Callable[[Image.Image, str], List[Dict[str, Any]]]] = None
    draft_side: Optional[int] = None  # JPEGs are decoded at no less than this side (as predict does)
    description: str = ""


class RequestError(Exception):
    def __init__(self, status: int, message: str, headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


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


def decode(data: bytes, name: str, limits: Limits, draft_side: Optional[int], budget: Optional[List[int]] = None
           ) -> Image.Image:
    """Bytes to an upright RGB image, refusing what is not an image (400) and pixels beyond
    --max-pixels (400) from the header, before the pixels are decoded. `budget`: the pixels the
    request's images may still take, all together (a list of one, spent here)."""
    if not data:
        raise RequestError(400, f"{name}: empty body: send the image's bytes")
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
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
    try:
        return load_image({"bytes": data, "path": None}, draft_side)
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as err:
        raise RequestError(400, f"{name}: cannot decode: {str(err).splitlines()[0]}") from None


async def read_body(request: Request, limits: Limits) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed --max-bytes (from its
    Content-Length before any byte is read, else while it streams)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limits.max_bytes:
        raise RequestError(413, f"body of {length} bytes is over --max-bytes {limits.max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_bytes:
            raise RequestError(413, f"body is over --max-bytes {limits.max_bytes}")
        chunks.append(chunk)
    return b"".join(chunks)


async def images_of(request: Request, limits: Limits, draft_side: Optional[int]) -> Tuple[List[Image.Image], List[str]]:
    """One image in the body (image/*, application/octet-stream), or several as multipart files."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("multipart/form-data", "application/octet-stream") and not kind.startswith("image/"):
        raise RequestError(415, f"unsupported content type {kind or '(none)'}: send an image (image/jpeg, image/png, "
                                "...) or multipart/form-data with image files")
    body = await asyncio.wait_for(read_body(request, limits), limits.timeout_s)
    loop = asyncio.get_running_loop()
    # Decoding on a thread: PIL releases the GIL, and the event loop goes on accepting meanwhile.
    if kind != "multipart/form-data":
        return [await loop.run_in_executor(None, decode, body, "body", limits, draft_side)], ["body"]
    request._body = body  # starlette's form parser reads the body already read and checked above
    images, names, budget = [], [], [limits.max_pixels]  # the pixels of all the request's images together
    try:
        async with request.form(max_files=limits.max_batch, max_fields=limits.max_batch) as form:
            for key, value in form.multi_items():
                if not hasattr(value, "read"):
                    continue
                name = value.filename or key
                images.append(await loop.run_in_executor(None, decode, await value.read(), name, limits, draft_side,
                                                         budget))
                names.append(name)
    except HTTPException as err:  # starlette's own refusals: too many files, a malformed body
        raise RequestError(400, f"multipart body refused: {err.detail} (at most --max-batch {limits.max_batch} "
                                "files a request)") from None
    if not images:
        raise RequestError(400, "the multipart body holds no file: send the images as file fields")
    return images, names


def create_app(load: Callable[[], Service], limits: Optional[Limits] = None) -> FastAPI:
    """The FastAPI app. `load` builds the Service; it runs on a thread at start-up, so /health
    answers at once and /ready says when the model is there."""
    limits = limits or Limits()
    metrics = Metrics.create(limits.max_batch)
    state: Dict[str, Any] = {"service": None, "error": None, "batcher": None, "admitted": 0}

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
        yield
        await batcher.stop()

    app = FastAPI(title="facemask", description="Face-mask classification: POST images to /predict, a photo to "
                                                "/detect.", lifespan=lifespan)

    def answer(endpoint: str, started: float, status: int, payload: Any, headers: Optional[Dict] = None) -> Any:
        metrics.requests.labels(endpoint, str(status)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return JSONResponse(payload, status_code=status, headers=headers)

    async def guarded(endpoint: str, request: Request, work: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        admitted = False
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
            return answer(endpoint, started, 200, await work())
        except RequestError as err:
            metrics.errors.labels(endpoint, str(err.status)).inc()
            return answer(endpoint, started, err.status, {"error": err.message}, err.headers)
        except asyncio.TimeoutError:
            metrics.errors.labels(endpoint, "timeout").inc()
            phase = "the body did not arrive" if not getattr(request.state, "read", False) else "no answer"
            status = 408 if phase == "the body did not arrive" else 504
            return answer(endpoint, started, status, {"error": f"{phase} within --timeout {limits.timeout_s} s"})
        finally:
            if admitted:
                state["admitted"] -= 1

    @app.post("/predict", summary="Classify one image (the body) or several (multipart files)")
    async def predict(request: Request) -> Any:
        async def work() -> Any:
            service: Service = state["service"]
            images, names = await images_of(request, limits, service.draft_side)
            request.state.read = True
            rows = await asyncio.wait_for(state["batcher"].submit(images, names), limits.timeout_s)
            return {"predictions": rows}
        return await guarded("predict", request, work)

    @app.post("/detect", summary="Every face in a photo (the body): detect's table")
    async def detect(request: Request) -> Any:
        async def work() -> Any:
            service: Service = state["service"]
            if service.detect is None:
                raise RequestError(501, "this server has no face detector loaded")
            images, names = await images_of(request, limits, None)
            request.state.read = True
            if len(images) != 1:
                raise RequestError(400, "/detect takes one photo a request")
            loop = asyncio.get_running_loop()
            rows = await asyncio.wait_for(loop.run_in_executor(state["batcher"].executor, service.detect, images[0],
                                                               names[0]), limits.timeout_s)
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
    return app


def serve(load: Callable[[], Service], host: str, port: int, limits: Limits, log_level: str = "info") -> int:
    """Run the app until SIGTERM or SIGINT, then let the requests in flight finish; 0 once they have."""
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises SIGTERM once its graceful shutdown is over, so the process would end
            # killed by it (143); a shutdown that let every request finish is a success (0).
            previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s: reachable from other machines (the default is 127.0.0.1)", host)
    config = uvicorn.Config(create_app(load, limits), host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=max(limits.timeout_s, 1.0), access_log=True)
    server = Server(config)
    server.run()
    return 0 if server.started else 1
