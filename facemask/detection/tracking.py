"""Following faces from one analysed video frame to the next: each new box joins the track whose
last box it overlaps most (IoU), greedily, best overlap first; a track ends when it has not been
seen for `max_gap` analysed frames and `max_gap_s` seconds of video. The track's label is then
the average of its faces' probabilities, so a face's label does not flicker from frame to frame.

An ended track is forgotten: frames and times only go forward, so it can never be matched again, and
keeping it would make every frame scan every face the video has shown (the cost of a frame growing
with the video's length). Ids are never reused."""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from facemask.detection.detectors import iou


class Tracker:
    def __init__(self, min_iou: float = 0.3, max_gap: int = 2, max_gap_s: float = 1.0) -> None:
        self.min_iou, self.max_gap, self.max_gap_s = min_iou, max_gap, max_gap_s
        # The tracks that have not ended, by id: their last box, analysed frame and time.
        self.last_box: dict = {}
        self.last_seen: dict = {}
        self.last_time: dict = {}
        self.step = 0
        self.next_id = 1

    def update(self, boxes: np.ndarray, time: Optional[float] = None) -> List[int]:
        """The track id of each box of the next analysed frame, at `time` seconds (new tracks start
        at the next free id). Without a time, a track ends after `max_gap` analysed frames alone."""
        self.step += 1
        for t in [t for t in self.last_seen if self._ended(t, time)]:
            del self.last_box[t], self.last_seen[t], self.last_time[t]
        live: List[Optional[int]] = list(self.last_seen)
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

    def _ended(self, track: int, time: Optional[float]) -> bool:
        if self.step - self.last_seen[track] <= self.max_gap:
            return False
        last = self.last_time[track]
        return time is None or last is None or time - last > self.max_gap_s
