"""Following faces from one analysed video frame to the next: each new box joins the track whose
last box it overlaps most (IoU), greedily, best overlap first; a track ends when it has not been
seen for `max_gap` analysed frames and `max_gap_s` seconds of video. The track's label is then
the average of its faces' probabilities, so a face's label does not flicker from frame to frame."""

from __future__ import annotations

from typing import List

import numpy as np

from facemask.detection.detectors import iou


class Tracker:
    def __init__(self, min_iou: float = 0.3, max_gap: int = 2, max_gap_s: float = 1.0) -> None:
        self.min_iou, self.max_gap, self.max_gap_s = min_iou, max_gap, max_gap_s
        self.last_box: dict = {}
        self.last_seen: dict = {}
        self.last_time: dict = {}
        self.step = 0
        self.next_id = 1

    def update(self, boxes: np.ndarray, time: float = 0.0) -> List[int]:
        """The track id of each box of the next analysed frame, at `time` seconds (new tracks start
        at the next free id)."""
        self.step += 1
        live = [t for t, seen in self.last_seen.items()
                if self.step - seen <= self.max_gap or time - self.last_time[t] <= self.max_gap_s]
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
            self.last_time[ids[i]] = time
        return ids
