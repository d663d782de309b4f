"""python -m facemask review DIR: a page in the browser (Gradio, as the demo) that shows the images of
a label-issues or select output folder one at a time, most suspect first, and takes one key per
decision; every decision goes to DIR/review.jsonl at once (journal.py), and corrections.csv and
review_exclude.txt follow it. `--export label-studio|imagefolder` writes the queue and its decisions
for other tools instead (exports.py). docs/review.md.

Only the images DIR's own lists name are opened: a key press sends the digest of the image the tab
shows, looked up in the queue; no path from the browser is read.
"""

from __future__ import annotations

import argparse
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from facemask.config.schema import ConfigError
from facemask.curation.journal import Journal
from facemask.curation.queue import Item, Queue
from facemask.data.storage import file_sha256
from facemask.web import add_page_arguments, warn_if_reachable

logger = logging.getLogger("facemask")

SHOWN_SIDE = 768  # the image is drawn large; a bigger file is decoded at about this side (draft)
PREFETCH = 2  # the next images' maps are made while the person looks at this one
KEEP, EXCLUDE, SKIP, UNDO = "a", "x", "s", "u"
MAX_CLASS_KEYS = 9


def keys(labels: List[str]) -> Dict[str, str]:
    """{key: action}: 1..9 a class each, a keep (accept the given label), x exclude, s skip, u undo."""
    if len(labels) > MAX_CLASS_KEYS:
        raise ConfigError(f"{len(labels)} classes: the review page has keys for {MAX_CLASS_KEYS}")
    found = {str(i + 1): f"label:{label}" for i, label in enumerate(labels)}
    found.update({KEEP: "keep", EXCLUDE: "exclude", SKIP: "skip", UNDO: "undo"})
    return found


class Maps:
    """Each image's explanation map for its suggested class, from the model that did not train on it
    (label-issues: its fold model; select: the run's model), made in a background thread ahead of
    the person so the next image's map is ready when the key is pressed."""

    def __init__(self, queue: Queue, method: str) -> None:
        self.queue, self.method = queue, method
        self._models: Dict[Path, Any] = {}
        self._done: Dict[str, Future] = {}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="review-maps")
        self._lock = threading.Lock()

    def _model_folder(self, item: Item) -> Optional[Path]:
        if self.queue.kind == "label-issues":
            runs = self.queue.fold_runs
            return runs[item.fold] if item.fold is not None and item.fold < len(runs) else None
        return Path(self.queue.model) if self.queue.model else None

    def _make(self, item: Item) -> Optional[Any]:
        from facemask.evaluation.explain import explain_images
        from facemask.evaluation.figures import explanation_image
        from facemask.evaluation.loading import load_model
        from facemask.pipeline.processor import processor_image_size

        folder = self._model_folder(item)
        if folder is None or item.path is None or item.suggested_label is None:
            return None
        if folder not in self._models:
            self._models[folder] = load_model(str(folder))
        model, processor = self._models[folder]
        image, _ = open_item(item, 2 * processor_image_size(processor))
        if image is None:
            return None
        target = model.config.label2id.get(item.suggested_label)
        if target is None:
            return None
        found = explain_images(model, processor, [image], [int(target)], self.method)[0]
        return explanation_image(found.seen, found.grid)

    def _safe(self, item: Item) -> Optional[Any]:
        try:
            return self._make(item)
        except Exception:  # the image stands without its map; the console keeps the traceback
            logger.exception("review: the map of %s failed", item.file)
            return None

    def ahead(self, items: List[Item]) -> None:
        """Start the maps of `items` (the image shown and the next ones); the others are dropped, so a
        long review holds a few maps, not one per image seen."""
        if self.method == "none":
            return
        with self._lock:
            wanted = {item.sha256 for item in items}
            for digest in [d for d in self._done if d not in wanted]:
                self._done.pop(digest).cancel()
            for item in items:
                if item.sha256 not in self._done:
                    self._done[item.sha256] = self._worker.submit(self._safe, item)

    def get(self, item: Item) -> Optional[Any]:
        if self.method == "none":
            return None
        with self._lock:
            found = self._done.get(item.sha256) or self._worker.submit(self._safe, item)
        return found.result()


def open_item(item: Item, side: int = SHOWN_SIDE) -> Tuple[Optional[Any], str]:
    """The listed image as upright RGB, or (None, why not); a file whose bytes are no longer the
    listed ones is still shown, with a note (the decision is kept for the listed content)."""
    from facemask.runtime.files import read_input

    if item.path is None:
        return None, "this image has no file of its own"
    image, why = read_input(item.path, side)
    if image is None:
        return None, f"cannot be opened: {why}"
    now = file_sha256(item.path)
    note = "" if now == item.sha256 else ("the file changed since it was listed: the decision applies to the "
                                          "listed content (its digest), which this file no longer has")
    return image, note


class Review:
    """The page's state: the queue, its journal, the maps; every handler takes the digest the tab
    shows and answers with what the tab shows next."""

    def __init__(self, journal: Journal, method: str = "ablation") -> None:
        self.journal = journal
        self.queue = journal.queue
        self.keys = keys(self.queue.labels)
        self.maps = Maps(self.queue, method)

    def _upcoming(self, count: int) -> List[Item]:
        """The image the page shows and the next ones: those with no decision, then the skipped ones."""
        decided = self.journal.decided
        fresh = [item for item in self.queue.items if item.sha256 not in decided]
        if len(fresh) < count:
            fresh += [item for item in self.queue.items if item.sha256 in decided
                      and decided[item.sha256].decision == "skip"]
        return fresh[:count]

    def progress(self) -> str:
        c = self.journal.counts()
        return (f"**{c['reviewed']} reviewed**, {c['remaining']} remaining of {c['images']} ({c['skipped']} of them "
                f"skipped); {c['changed']} labels changed, {c['excluded']} excluded")

    def describe(self, item: Item) -> str:
        lines = [f"**{item.file}**"]
        if self.queue.kind == "label-issues":
            lines.append(f"Given label: **{item.given_label}**")
        else:
            lines.append("Given label: none (a pool image)")
        if item.conflict:
            lines.append("Its exact copies are listed under other labels: choose its class (`a` cannot keep one).")
        made = self.journal.decided.get(item.sha256)
        if made is not None and made.decision == "skip":
            lines.append("Skipped earlier: every other image is decided.")
        if item.suggested_label:
            where = "out-of-fold, from the model that did not train on it" if self.queue.kind == "label-issues" \
                else "the run's model"
            p = f" ({item.probability:.1%}, {where})" if item.probability is not None else ""
            lines.append(f"Suggested: **{item.suggested_label}**{p}")
        copies = self.queue.copies.get(item.sha256, [])
        if copies:
            lines.append("Copies and near-copies (audit): " + "; ".join(
                f"{Path(c['file']).name} [{c['label']}] at distance {c['distance']}" for c in copies[:5]))
        lines.append(" · ".join(f"`{k}` {a.replace('label:', '')}" for k, a in self.keys.items()
                                if a != "keep" or self.queue.kind == "label-issues"))
        return "\n\n".join(lines)

    def view(self) -> Tuple[str, Optional[Any], Optional[Any], str, str, List[Any]]:
        """(progress, image, map, description, the digest shown, copies) for the first undecided image."""
        upcoming = self._upcoming(1 + PREFETCH)
        if not upcoming:
            return (self.progress() + "\n\nEvery image is decided: training reads corrections.csv "
                    "(data.corrections) and review_exclude.txt (data.exclude).", None, None, "", "", [])
        item = upcoming[0]
        self.maps.ahead(upcoming)
        image, note = open_item(item)
        text = self.describe(item) + (f"\n\n**Note:** {note}" if note else "")
        return self.progress(), image, self.maps.get(item), text, item.sha256, self._copies(item)

    def _copies(self, item: Item) -> List[Any]:
        from facemask.runtime.files import read_input

        shown = []
        for copy in self.queue.copies.get(item.sha256, [])[:4]:
            path = Path(copy["file"])
            path = path if path.is_absolute() else (self.queue.data_folder or Path()) / path
            # Only files the audit named beside a listed image: never a path from the browser.
            image, _ = read_input(path, 256) if path.is_file() else (None, "")
            if image is not None:
                shown.append((image, f"{copy['label']} (distance {copy['distance']})"))
        return shown

    def act(self, shown: str, action: str) -> Tuple[str, Optional[Any], Optional[Any], str, str, List[Any]]:
        """A key pressed on the tab showing image `shown`: recorded unless that image is already
        decided (another tab, a repeated key) or is not the one shown; then the next view."""
        current = self.journal.current()
        if action == "undo":
            # Only a tab that shows the current image undoes: a stale tab (one that has not seen the
            # last decision) refreshes instead.
            if shown == (current.sha256 if current else ""):
                self.journal.undo()
        elif shown and current is not None and shown == current.sha256:
            # Only the image the tab shows, when it is still the current one: a tab left on an image
            # decided elsewhere (or a skipped one shown again elsewhere) refreshes instead.
            if action.startswith("label:"):
                self.journal.record(shown, "label", action.split(":", 1)[1])
            elif action == "keep" and current.given_label is not None and not current.conflict:
                self.journal.record(shown, "keep")
            elif action in ("exclude", "skip"):
                self.journal.record(shown, action)
        return self.view()


KEY_SCRIPT = """
<script>
document.addEventListener('keydown', (event) => {
  if (event.ctrlKey || event.altKey || event.metaKey) return;
  const target = event.target;
  if (target && (target.tagName === 'INPUT' || target.tagName === 'TEXTAREA')) return;
  const key = event.key === 'Backspace' ? 'u' : event.key.toLowerCase();
  const button = document.getElementById('key-' + key);
  if (button) { event.preventDefault(); button.click(); }
});
</script>
"""


def build_app(review: Review) -> Any:
    import gradio as gr

    queue = review.queue
    what = "label-issues' flags, most suspect first" if queue.kind == "label-issues" else "select's picks, ranked"
    with gr.Blocks(title=f"Review: {queue.folder.name}", analytics_enabled=False) as app:
        gr.Markdown(f"# Review {queue.folder.name}\n{what}. Keys: a number sets the class, `a` keeps the given "
                    "label, `x` excludes the image, `s` skips it, `u` (or Backspace) undoes the last decision.")
        progress = gr.Markdown(elem_id="progress")
        shown = gr.State("")
        with gr.Row():
            image = gr.Image(type="pil", interactive=False, label="Image", elem_id="image", height=520)
            where = gr.Image(type="pil", interactive=False, elem_id="map", height=520,
                             visible=review.maps.method != "none",
                             label="Where the model finds its evidence for the suggested class")
        with gr.Row():
            info = gr.Markdown(elem_id="info")
            copies = gr.Gallery(label="Copies and near-copies", elem_id="copies", height=160, columns=4)
        buttons = []
        with gr.Row():
            for key, action in review.keys.items():
                if action == "keep" and queue.kind != "label-issues":
                    continue
                name = action.split(":", 1)[1] if action.startswith("label:") else action
                buttons.append((gr.Button(f"[{key}] {name}", elem_id=f"key-{key}"), action))
        outputs = [progress, image, where, info, shown, copies]
        for button, action in buttons:
            button.click(lambda digest, action=action: review.act(digest, action), [shown], outputs,
                         concurrency_limit=1, concurrency_id="decisions")
        app.load(review.view, None, outputs)
    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="a label-issues output folder (label_issues.csv) or a select "
                                                      "output folder (to_label.csv)")
    add_page_arguments(parser, port=7861)
    parser.add_argument("--map", choices=["ablation", "gradcam", "none"], default="ablation",
                        help="each image's explanation map for its suggested class (none: no map, no model loaded)")
    parser.add_argument("--export", choices=["label-studio", "imagefolder"],
                        help="write the queue and its decisions for another tool instead of opening the page")
    parser.add_argument("--output", help="where --export writes (default DIR)")


def command(args: argparse.Namespace) -> int:
    from facemask.curation.journal import open_journal

    # An export only reads the journal: it runs beside an open page, and creates nothing in DIR.
    journal = open_journal(args.folder, lock=not args.export)
    try:
        if journal.queue.without_file:
            print(f"note: {journal.queue.without_file} listed images have no file of their own (images held in a "
                  "dataset): the page cannot show them; write the data as a folder to review them", flush=True)
        if args.export:
            from facemask.curation.exports import export

            for path in export(journal, args.export, Path(args.output or args.folder)):
                print(f"wrote {path}")
            return 0
        warn_if_reachable(args)
        review = Review(journal, args.map)
        c = journal.counts()
        print(f"review {journal.queue.folder}: {c['images']} images, {c['reviewed']} reviewed, {c['remaining']} "
              f"remaining; decisions go to {journal.path}", flush=True)
        build_app(review).launch(server_name=args.host, server_port=args.port, share=args.share, head=KEY_SCRIPT)
        return 0
    finally:
        journal.close()
