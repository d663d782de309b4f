"""`python -m facemask serve MODEL`: a run (or a Hub model) behind the HTTP service of
runtime/server.py, with predict's decision rule and detect's face detector. With an exported graph
(--backend onnx, onnx-int8) nothing it imports needs torch (tests/test_runtime.py holds it to that);
--backend torch loads the PyTorch model instead. docs/serving.md."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Any, Callable, Optional

from facemask.config.schema import ConfigError
from facemask.runtime.limits import API_KEY_ENV, MAX_BYTES, MAX_MEMORY_MB, MAX_PIXELS, Limits, api_key

if TYPE_CHECKING:
    from facemask.runtime.server import Service

logger = logging.getLogger("facemask")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a training run's output folder or a Hub model id")
    parser.add_argument("--host", default="127.0.0.1", help="the address to bind (default 127.0.0.1: this machine "
                                                            "only; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--backend", choices=["onnx", "onnx-int8", "torch"], default="onnx",
                        help="the run's exported graph (onnx/model.onnx, or model_quantized.onnx) on onnxruntime, "
                             "torch-free; or the PyTorch model")
    parser.add_argument("--threshold", metavar="T", help="as predict's: a number, or a row of the run's "
                                                         "operating_points.json ('best F1', ...)")
    parser.add_argument("--positive-label", help="as predict's: the class a numeric --threshold applies to (a named "
                                                 "operating point applies to its table's class)")
    d = Limits()
    parser.add_argument("--max-batch", type=int, default=d.max_batch,
                        help=f"images in one model call, and files in one request (default {d.max_batch})")
    parser.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                        help=f"how long a batch's first request waits for others (default {d.max_wait_ms:g})")
    parser.add_argument("--max-queue", type=int, default=d.max_queue,
                        help=f"requests waiting for the model before the answer is 503 (default {d.max_queue})")
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES, help=f"largest body (default {MAX_BYTES})")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help=f"pixels of a request's images together (default {MAX_PIXELS})")
    parser.add_argument("--timeout", type=float, default=d.timeout_s,
                        help=f"seconds a request's body and decoding may take, and as many for the model "
                             f"(default {d.timeout_s:g})")
    parser.add_argument("--max-memory", type=float, default=MAX_MEMORY_MB, metavar="MB",
                        help=f"megabytes the bodies and decoded images of all requests may hold together; a request "
                             f"waits for its share, then gets 503 (default {MAX_MEMORY_MB})")
    parser.add_argument("--drain", type=float, metavar="S",
                        help="seconds SIGTERM waits for the requests in flight (default: 2 x --timeout + 10, what a "
                             "request can take)")
    parser.add_argument("--api-key", help=f"the key callers must send as 'Authorization: Bearer KEY' (all but /health "
                                          f"and /ready); better ${API_KEY_ENV}, which stays out of shell history")
    parser.add_argument("--detector", default="retinaface", help="the face detector of /detect (retinaface)")
    parser.add_argument("--detector-threshold", type=float, default=0.6, help="the detector's score a face needs")


def load_service(model: str, backend: str = "onnx", threshold: Optional[float] = None,
                 positive_label: Optional[str] = None, detector: Optional[str] = "retinaface",
                 detector_threshold: float = 0.6, margin: Optional[float] = None) -> "Service":
    """The model as the server calls it: predict's rows, and detect's rows of one photo, under the
    rule `threshold` on P(positive_label) (decision.decision_rule's, which knows the class of a named
    operating point)."""
    from facemask.data.labels import resolve_positive_label
    from facemask.detection.scenes import SceneClassifier, json_row
    from facemask.runtime.decision import decide
    from facemask.runtime.predict import prediction_row
    from facemask.runtime.server import Service

    if backend == "torch":
        from facemask.evaluation.loading import load_model
        from facemask.evaluation.predict import TorchClassifier

        classifier: Any = TorchClassifier(*load_model(model))
    else:
        from facemask.runtime.model import load_onnx_model

        classifier = load_onnx_model(model, backend)
    labels = classifier.labels
    positive = resolve_positive_label(labels, positive_label)

    def classify(images: list, names: list) -> list:
        probs = classifier.probabilities(images, batch_size=max(1, len(images)))
        return [prediction_row(name, p, int(choice), labels)
                for name, p, choice in zip(names, probs, decide(probs, threshold, positive))]

    find = None
    if detector is not None:
        from facemask.detection.detectors import load_detector

        from facemask.detection.crops import DEFAULT_MARGIN

        scene = SceneClassifier(classifier, load_detector(detector), threshold=threshold, positive=positive,
                                detector_threshold=detector_threshold,
                                margin=DEFAULT_MARGIN if margin is None else margin)

        def find(image: Any, name: str, check: Optional[Callable[[], None]] = None) -> list:
            return [json_row(row) for row in scene.rows(name, scene.faces(image, check))]

    return Service(labels, classify, find, draft_side=2 * classifier.input_side,
                   description=f"{model} ({backend}), labels {labels}")


def command(args: argparse.Namespace) -> int:
    from facemask.runtime.decision import decision_rule
    from facemask.detection.crops import run_margin
    from facemask.detection.detectors import load_detector
    from facemask.run_folder import EXPERIMENT, OPERATING_POINTS
    from facemask.runtime.model import graph_path, read_labels
    from facemask.runtime.preprocess import Preprocessor
    from facemask.runtime.server import serve
    from facemask.runtime.source import graph_files, model_folder

    for name, low in (("max_batch", 1), ("max_queue", 1), ("max_bytes", 1), ("max_pixels", 1), ("port", 0)):
        if getattr(args, name) < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {low}")
    if args.max_wait_ms < 0 or args.timeout <= 0:
        raise ConfigError("--max-wait-ms must be 0 or more and --timeout more than 0")
    if args.drain is not None and args.drain < 0:
        raise ConfigError("--drain must be 0 or more seconds")
    key = api_key(args.api_key)
    limits = Limits(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                    max_bytes=args.max_bytes, max_pixels=args.max_pixels, timeout_s=args.timeout,
                    max_memory_mb=args.max_memory, drain_s=args.drain)
    if limits.max_memory < limits.one_image_memory():
        raise ConfigError(f"--max-memory {args.max_memory:g} MB cannot hold one image of --max-pixels "
                          f"{args.max_pixels} while it is decoded, with its body: give at least "
                          f"{limits.one_image_memory() / 1e6:.0f} MB, or lower --max-pixels / --max-bytes")
    # What can be wrong with the model, its graph and preprocessing, the decision rule or the detector
    # stops here (exit 2), not on the loading thread of a server that would then never be ready.
    patterns = None if args.backend == "torch" else [*graph_files(args.backend), OPERATING_POINTS.pattern,
                                                     EXPERIMENT.pattern]  # the rule's class where the table lacks it
    folder = model_folder(args.model, patterns=patterns)
    rule = decision_rule(folder, read_labels(folder), args.threshold, args.positive_label)
    logger.info("decision rule: %s", "the arg-max" if rule.threshold is None else
                f"{rule.positive_label} where P({rule.positive_label}) >= {rule.threshold:g} "
                f"(--threshold {args.threshold})")
    if args.backend != "torch":
        graph_path(folder, args.backend, args.model)
        Preprocessor.from_folder(folder)
    if not 0 < args.detector_threshold <= 1:
        raise ConfigError("--detector-threshold is a detector score: between 0 (excluded) and 1")
    detector = load_detector(args.detector)
    # /detect crops faces as `detect` does: with the margin measured on the run's training images where they are here.
    margin, how = run_margin(str(folder), detector)
    logger.info("/detect crops faces with margin %s", how)
    return serve(lambda: load_service(str(folder), args.backend, rule.threshold, rule.positive_label, args.detector,
                                      args.detector_threshold, margin), args.host, args.port, limits, api_key=key)
