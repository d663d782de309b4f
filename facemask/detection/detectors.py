"""Face detectors behind one small interface: `detect(image) -> (boxes, scores)` on an RGB array,
boxes as x0, y0, x1, y1 in that array's pixels. Their weights ship inside this package (weights/,
with their licence and origin) and run through onnxruntime: nothing is downloaded at run time.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np

from facemask.config.schema import ConfigError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in `a` (N x 4) with every box in `b` (M x 4): N x M."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = (x1 - x0).clip(0) * (y1 - y0).clip(0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        order = rest[iou(boxes[best], boxes[rest])[0] <= iou_threshold]
    return np.array(keep, dtype=np.int64)


class RetinaFace:
    """RetinaFace, MobileNet-0.25 backbone (1.7 MB), trained on WIDER FACE: finds masked faces too
    (a mask hides the mouth and nose, not the face's outline and eyes), from about 16 pixels up."""

    name = "retinaface"
    weights = WEIGHTS_DIR / "retinaface_mnet025.onnx"
    # The training's BGR mean, strides and anchor sizes of biubug6/Pytorch_Retinaface's mobilenet0.25 config.
    MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
    STRIDES = (8, 16, 32)
    ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))
    VARIANCE = (0.1, 0.2)

    def __init__(self, threads: int = 0) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(self.weights), options, providers=["CPUExecutionProvider"])

    @staticmethod
    @lru_cache(maxsize=16)
    def anchors(height: int, width: int) -> np.ndarray:
        """Anchor centres and sizes (cx, cy, w, h) in pixels, in the network's output order."""
        rows = []
        for stride, sizes in zip(RetinaFace.STRIDES, RetinaFace.ANCHOR_SIZES):
            ny, nx = -(-height // stride), -(-width // stride)
            ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
            centres = np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride], axis=1)
            for_each = [np.concatenate([centres, np.full((len(centres), 2), size, dtype=np.float64)], axis=1)
                        for size in sizes]
            rows.append(np.stack(for_each, axis=1).reshape(-1, 4))
        return np.concatenate(rows).astype(np.float32)

    def detect(self, image: np.ndarray, score_threshold: float = 0.6,
               nms_threshold: float = 0.4) -> Tuple[np.ndarray, np.ndarray]:
        boxes, scores, _ = self.detect_landmarks(image, score_threshold, nms_threshold)
        return boxes, scores

    def detect_landmarks(self, image: np.ndarray, score_threshold: float = 0.6,
                         nms_threshold: float = 0.4) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """detect's boxes and scores, and each face's five landmarks (faces x 5 x (x, y), pixels): the
        eyes, the nose tip and the mouth's corners, in the order of the image (the face's right eye,
        which is the image's left, first), as the network was trained on WIDER FACE's annotations."""
        height, width = image.shape[:2]
        # Padded to a multiple of the coarsest stride, so every feature map covers the whole image.
        padded_h, padded_w = -(-height // 32) * 32, -(-width // 32) * 32
        net_input = np.zeros((padded_h, padded_w, 3), dtype=np.float32)
        net_input[:height, :width] = image[..., ::-1].astype(np.float32) - self.MEAN_BGR
        loc, conf, landmarks = self.session.run(None, {"input": net_input.transpose(2, 0, 1)[None]})
        anchors = self.anchors(padded_h, padded_w)
        scores = conf[0, :, 1]
        chosen = scores >= score_threshold
        loc, anchors, scores = loc[0, chosen], anchors[chosen], scores[chosen]
        centres = anchors[:, :2] + loc[:, :2] * self.VARIANCE[0] * anchors[:, 2:]
        sizes = anchors[:, 2:] * np.exp(loc[:, 2:] * self.VARIANCE[1])
        boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
        boxes = boxes.clip(0, [width, height, width, height]).astype(np.float32)
        # Each point is an offset from its anchor's centre in units of the anchor's size, as the boxes' centres.
        points = landmarks[0, chosen].reshape(-1, 5, 2)
        points = anchors[:, None, :2] + points * self.VARIANCE[0] * anchors[:, None, 2:]
        keep = nms(boxes, scores, nms_threshold)
        return boxes[keep], scores[keep].astype(np.float32), points[keep].astype(np.float32)


DETECTORS: Dict[str, Callable[..., RetinaFace]] = {RetinaFace.name: RetinaFace}


def load_detector(name: str = RetinaFace.name, threads: int = 0) -> RetinaFace:
    if name not in DETECTORS:
        raise ConfigError(f"unknown face detector '{name}': choose one of {', '.join(DETECTORS)}")
    try:
        return DETECTORS[name](threads)
    except ImportError:
        raise ConfigError("onnxruntime is not installed: pip install -r requirements.txt") from None
