"""The model server's HTTP face (FastAPI on uvicorn, both already under Prefect's own pins):

    POST /predict   an image as the raw body, or several as multipart files -> per image its
                    boxes [x1, y1, x2, y2] in pixels, label and score, kept at the model's
                    per-class thresholds (`?threshold=` overrides), its size and milliseconds;
                    the model version and a request id. A bad input is a 4xx whose body names
                    the reason (body_too_large, image_too_large, not_an_image, image_unreadable,
                    no_image, bad_threshold); never a 500 for what a client sent.
    GET /health     200 with a model loaded and warmed (the registry's state in the body), else 503
    GET /model      name, version, metrics, loaded since, what it follows, versions refused
    GET /metrics    Prometheus' text format

Not LitServe: its models run in worker processes fed by queues, so the follower's swap, `/model`
and the monitoring would cross processes; dynamic batching here is batcher.py's one loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import ImageOps

from tasks.core.config import DatasetConfig
from tasks.images.grayscale import is_grayscale, to_rgb
from tasks.images.store import decode_or_reason
from tasks.predict.folder import predict_loaded
from tasks.predict.inputs import ImageInput, LoadedImage
from tasks.scoring.threshold import at_or_above
from tasks.serving.batcher import DynamicBatcher
from tasks.serving.feedback import FeedbackSampler
from tasks.serving.follower import ModelFollower
from tasks.serving.metrics import ServingMetrics
from tasks.serving.monitoring import Monitor

STATUS = {"body_too_large": 413, "image_too_large": 413, "not_an_image": 415,
          "image_unreadable": 422, "no_image": 400, "bad_threshold": 400, "no_model": 503}


class Refused(Exception):
    def __init__(self, reason: str, detail: str, image: str | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.image = reason, detail, image


@dataclass
class Upload:
    name: str
    data: bytes


@dataclass
class Served:
    """What a client's image became: the model that answered, its prediction."""

    image: LoadedImage
    upload: Upload
    model: object  # the ServedModel of the batch
    prediction: object


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise Refused("body_too_large", f"{declared} bytes is over serving.max_bytes ({max_bytes})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise Refused("body_too_large", f"over serving.max_bytes ({max_bytes})")
        chunks.append(chunk)
    return b"".join(chunks)


async def uploads_of(request: Request, body: bytes) -> list[Upload]:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        request._body = body  # Starlette's form parser reads the body already read, capped
        form = await request.form()
        found = [Upload(item.filename or key, await item.read())
                 for key, item in form.multi_items() if hasattr(item, "read")]
    else:
        found = [Upload("image", body)] if body else []
    if not found:
        raise Refused("no_image", "send an image as the body, or images as multipart files")
    return found


def decoded(upload: Upload, max_pixels: int, gray_tolerance: int) -> tuple[LoadedImage, str]:
    """The image as the model sees it (upright, RGB) and its format; Refused with the reason."""
    image = decode_or_reason(upload.data, max_pixels)
    if isinstance(image, tuple):
        raise Refused(image[0], image[1], upload.name)
    upright = ImageOps.exif_transpose(image)
    return LoadedImage(ImageInput(upload.name, Path(upload.name)), to_rgb(upright),
                       1 if is_grayscale(upright, gray_tolerance) else 3), image.format or ""


def threshold_of(request: Request) -> float | None:
    given = request.query_params.get("threshold")
    if given is None:
        return None
    try:
        value = float(given)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise Refused("bad_threshold", f"threshold={given!r}: a number from 0 to 1")
    return value


def said_if_failed(done) -> None:
    """The monitoring line or the feedback sample of an image could not be written: said in the
    server's log (the answer went out; what is missing is said, not lost silently)."""
    if done.exception() is not None:
        logging.getLogger("defectflow.serving").error(
            "monitoring or feedback failed: %s: %s", type(done.exception()).__name__,
            done.exception())


class ModelServer:
    def __init__(self, config: DatasetConfig, follower: ModelFollower, monitor: Monitor,
                 feedback: FeedbackSampler | None):
        self.config, self.follower, self.monitor, self.feedback = config, follower, monitor, feedback
        self.metrics = ServingMetrics()
        self.batcher = DynamicBatcher(self.run_batch, config.serving.max_batch,
                                      config.serving.max_wait_ms, self.metrics.batch_size.observe)
        self.side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="monitoring")

    def run_batch(self, images: list[LoadedImage]) -> list:
        served = self.follower.current  # read once: the batch finishes on this model
        if served is None:
            return [Refused("no_model", "no model loaded yet")] * len(images)
        predictions = predict_loaded(served.model, served.processor, images, served.settings)
        return [(served, prediction) for prediction in predictions]

    def answer(self, request_id: str, upload: Upload, image: LoadedImage, image_format: str,
               served, prediction, threshold: float | None, ms: float) -> dict:
        settings = served.settings
        kept, scores = at_or_above(prediction.boxes, prediction.scores,
                                   threshold if threshold is not None else settings.threshold,
                                   {} if threshold is not None else settings.class_thresholds)
        width, height = image.image.size
        boxes = [[round(b.x1, 1), round(b.y1, 1), round(b.x2, 1), round(b.y2, 1)] for b in kept]
        self.side.submit(self.after, request_id, upload, image, image_format, served, prediction,
                         kept, scores, boxes).add_done_callback(said_if_failed)
        return {"name": upload.name, "width": width, "height": height,
                "boxes": [{"box": box, "label": b.label, "score": round(s, 4)}
                          for box, b, s in zip(boxes, kept, scores, strict=True)],
                "ms": round(ms, 1)}

    def after(self, request_id: str, upload: Upload, image: LoadedImage, image_format: str,
              served, prediction, kept, scores, boxes) -> None:
        """The monitoring line and the feedback sample, off the request's path."""
        sha = hashlib.sha256(upload.data).hexdigest()
        self.monitor.image(request_id, sha, served.version, image.image, [b.label for b in kept],
                           boxes, scores)
        if self.feedback is not None:
            strategy = self.feedback.consider(
                upload.data, sha, image.image, image_format, prediction.boxes, prediction.scores,
                kept, scores, served.settings, image.depth, f"{served.name} v{served.version}")
            if strategy:
                self.metrics.feedback.labels(strategy).inc()

    async def predict(self, request: Request) -> JSONResponse:
        request_id, started = uuid.uuid4().hex, time.perf_counter()
        try:
            threshold = threshold_of(request)
            body = await read_body(request, self.config.serving.max_bytes)
            uploads = await uploads_of(request, body)
            images = [decoded(upload, self.config.images.max_pixels,
                              self.config.images.gray_tolerance) for upload in uploads]
            results = await asyncio.gather(*(self.batcher.submit(image) for image, _ in images))
        except Refused as refused:
            self.metrics.errors.labels(refused.reason).inc()
            self.metrics.requests.labels(str(STATUS[refused.reason])).inc()
            return JSONResponse({"request_id": request_id, "error": refused.reason,
                                 "detail": refused.detail, "image": refused.image},
                                STATUS[refused.reason], headers={"X-Request-ID": request_id})
        ms = (time.perf_counter() - started) * 1000
        answers = [self.answer(request_id, upload, image, image_format, served, prediction,
                               threshold, ms)
                   for upload, (image, image_format), (served, prediction)
                   in zip(uploads, images, results, strict=True)]
        versions = {served.version for served, _ in results}
        self.metrics.done(ms / 1000, len(answers))
        self.side.submit(self.monitor.request, ms)
        return JSONResponse({"request_id": request_id, "model": results[0][0].name,
                             "model_version": versions.pop() if len(versions) == 1 else
                             sorted(versions), "images": answers, "ms": round(ms, 1)},
                            headers={"X-Request-ID": request_id})

    def health(self) -> JSONResponse:
        current = self.follower.current
        body = {"status": "ok" if current else "no model loaded",
                "model_version": current.version if current else None,
                "registry": self.follower.registry_state}
        return JSONResponse(body, 200 if current else 503)

    def model(self) -> dict:
        current = self.follower.current
        return {"name": self.follower.registry.model_name,
                "version": current.version if current else None,
                "metrics": current.metrics if current else {},
                "loaded_since": current.loaded_at if current else None,
                "source": current.source if current else None,
                "follows": f"v{self.follower.pin} (pinned)" if self.follower.pin else "champion",
                "registry": self.follower.registry_state,
                "refused": {str(v): r for v, r in self.follower.refused.items()}}


def make_app(server: ModelServer) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        server.batcher.start()
        yield
        await server.batcher.stop()
        server.side.shutdown(wait=True)
        server.monitor.flush(force=True)

    app = FastAPI(title=f"defectflow: {server.follower.registry.model_name}", lifespan=lifespan)
    app.add_api_route("/predict", server.predict, methods=["POST"])
    app.add_api_route("/health", server.health, methods=["GET"])
    app.add_api_route("/model", server.model, methods=["GET"])
    app.add_api_route("/metrics", lambda: Response(server.metrics.text(server.follower.current),
                                                   media_type=server.metrics.content_type),
                      methods=["GET"])
    return app
