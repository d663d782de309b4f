"""Following faces from one analysed video frame to the next: each new box joins the track whose
last box it overlaps most (IoU), greedily, best overlap first; a track not seen for `max_gap`
analysed frames ends. The track's label is then the average of its faces' probabilities, so a
face's label does not flicker from frame to frame."""

from __future__ import annotations

from typing import List

import numpy as np


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


class Tracker:
    def __init__(self, min_iou: float = 0.3, max_gap: int = 5) -> None:
        self.min_iou, self.max_gap = min_iou, max_gap
        self.last_box: dict = {}
        self.last_seen: dict = {}
        self.step = 0
        self.next_id = 1

    def update(self, boxes: np.ndarray) -> List[int]:
        """The track id of each box of the next analysed frame (new tracks start at the next free id)."""
        self.step += 1
        live = [t for t, seen in self.last_seen.items() if self.step - seen <= self.max_gap]
        ids = [0] * len(boxes)
        if live and len(boxes):
            overlaps = iou(np.array([self.last_box[t] for t in live]), boxes)
            for flat in np.argsort(-overlaps, axis=None, kind="stable"):
                row, col = divmod(int(flat), len(boxes))
                if overlaps[row, col] < self.min_iou:
                    break
                if ids[col] or live[row] is None:
                    continue
                ids[col], live[row] = live[row], None
        for i, box in enumerate(boxes):
            if not ids[i]:
                ids[i], self.next_id = self.next_id, self.next_id + 1
            self.last_box[ids[i]], self.last_seen[ids[i]] = np.asarray(box, dtype=np.float64), self.step
        return ids
