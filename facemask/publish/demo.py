"""The demo page (python -m facemask demo): a Gradio app around a run folder or a Hub model.

One tab classifies an upload or a webcam frame with the same code as `predict`, under the decision
rule of the run's operating points (operating_points.json) when it has them; the Scene tab finds
every face in a photo with the code of `detect`, and draws and tables them; the last shows the
run's metrics, confusion matrix and error gallery from the files the run left. A Hub model is
fetched once (the files `push` sends) and then read like a run folder, so the Space built by
`python -m facemask space` runs this same module.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from PIL import Image, UnidentifiedImageError

from facemask.publish.naming import hub_model_id, model_name
from facemask.run_folder import (
    CARD,
    CONFUSION_FIGURE,
    CURVES_FIGURE,
    ERRORS_FIGURE,
    EXPERIMENT,
    ONNX_DIR,
    ONNX_FILES,
    OPERATING_POINTS,
    PUSH_PATTERNS,
    RunFiles,
    read_run,
    split_name,
)

logger = logging.getLogger("facemask")

# Larger uploads get a message instead of a decode: a 20,000 x 20,000 PNG would take gigabytes.
MAX_MEGAPIXELS = 50
MAX_FILE_SIZE = "50mb"
ARGMAX_RULE = "highest probability"
UPLOAD_HINT = "upload a photo (JPEG, PNG, WebP, BMP, TIFF or GIF)"
METRIC_COLUMNS = {"accuracy": "accuracy", "f1": "F1", "precision": "precision", "recall": "recall",
                  "roc_auc": "ROC-AUC", "loss": "loss"}


class BadUpload(ValueError):
    """An upload the demo cannot classify; the message is shown in the page."""


def check_upload(path: str | Path) -> str:
    """Refuse what cannot be classified (BadUpload); returns a note for what is classified with a caveat."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise BadUpload(f"{path.name} is an empty file: {UPLOAD_HINT}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                size, frames = image.size, getattr(image, "n_frames", 1)
    except UnidentifiedImageError:
        raise BadUpload(f"{path.name} is not an image: {UPLOAD_HINT}.") from None
    except OSError as err:  # e.g. a JPEG whose headers stop early: PIL fails while opening
        raise BadUpload(f"{path.name} could not be read ({err}): {UPLOAD_HINT}.") from None
    except Image.DecompressionBombError:
        raise BadUpload(f"{path.name} is far too large (over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels): "
                        f"the demo takes images up to {MAX_MEGAPIXELS} megapixels. Resize it and upload again.") from None
    megapixels = size[0] * size[1] / 1e6
    if megapixels > MAX_MEGAPIXELS:
        raise BadUpload(f"{path.name} is {size[0]} x {size[1]} pixels ({megapixels:.0f} megapixels): the demo takes "
                        f"images up to {MAX_MEGAPIXELS} megapixels. Resize it and upload again.")
    if frames > 1:
        return f"{path.name} is animated ({frames} frames): its first frame was classified."
    return ""


def decision_rules(operating_points: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """Choices of the page's decision rule: the arg-max, then each reachable operating point's threshold."""
    rules: Dict[str, Optional[float]] = {ARGMAX_RULE: None}
    for row in operating_points.get("rows") or []:
        if row.get("threshold") is not None:
            rules[f"{row['name']} (threshold {row['threshold']:.3f})"] = float(row["threshold"])
    return rules


def default_rule(rules: Dict[str, Optional[float]]) -> str:
    """The card's best-F1 operating point where the run has one, else the arg-max."""
    return next((name for name in rules if name.startswith("best F1")), ARGMAX_RULE)


def metrics_markdown(run: RunFiles) -> str:
    """The run's evaluated splits as one table, from its *_results.json."""
    rows = []
    for prefix, metrics in run.results.items():
        if prefix == "train":
            continue
        cells = [metrics.get(f"{prefix}_{key}") for key in METRIC_COLUMNS]
        if all(value is None for value in cells):
            continue
        images = (run.calibration.get(prefix) or {}).get("images")
        rows.append(f"| {split_name(prefix)} | {images if images is not None else ''} | "
                    + " | ".join("" if v is None else f"{v:.4f}" for v in cells) + " |")
    if not rows:
        return "This run has no evaluation results (no *_results.json in its folder)."
    header = "| split | images | " + " | ".join(METRIC_COLUMNS.values()) + " |"
    return "\n".join([header, "|---|---:|" + "---:|" * len(METRIC_COLUMNS), *rows])


def run_figures(run: RunFiles) -> List[Tuple[str, Path]]:
    """The run's confusion matrices, error galleries and training curves that exist, with captions."""
    figures = []
    for prefix in sorted(run.confusion, key=lambda p: p != "test"):
        figures.append((f"Confusion matrix, {split_name(prefix)} split", CONFUSION_FIGURE.path(run.directory, prefix)))
    for prefix, errors in sorted(run.errors.items(), key=lambda item: item[0] != "test"):
        figures.append((f"Worst errors, {split_name(prefix)} split ({errors.get('misclassified', '?')} of "
                        f"{errors.get('images', '?')} misclassified)", ERRORS_FIGURE.path(run.directory, prefix)))
    figures.append(("Training curves", CURVES_FIGURE.path(run.directory)))
    return [(caption, path) for caption, path in figures if path.is_file()]


@dataclass
class Demo:
    """What the page needs: the model, the run's files and the decision rules."""

    source: str
    model: Any
    processor: Any
    run: RunFiles
    backend: str = "torch"
    rules: Dict[str, Optional[float]] = field(default_factory=dict)
    # explain.METHODS, or "none": the Classify tab's map of where the model found its evidence.
    map_method: str = "ablation"

    @property
    def labels(self) -> List[str]:
        from facemask.evaluation.predict import class_labels

        return class_labels(self.model)

    @cached_property
    def positive_label(self) -> Optional[str]:
        """The class the operating points' thresholds are on (predict's owner of that rule); None where
        the run's files do not say."""
        from facemask.runtime.decision import run_positive_label

        return run_positive_label(self.run.directory, self.labels, self.run.operating_points)[0]

    def scene(self, path: Optional[str], rule: str) -> Tuple[str, Optional[Image.Image], List[List[Any]]]:
        """(the page's message, the photo with each face drawn, the table's rows) for one upload."""
        from dataclasses import replace

        from facemask.detection.scenes import label_counts
        from facemask.runtime.files import read_input

        if not path:
            return "Upload a photo of a scene (a street, a queue, a classroom), or take one with the webcam.", None, []
        try:
            note = check_upload(path)
            image, reason = read_input(Path(path))
            if image is None:
                raise BadUpload(f"{Path(path).name} could not be read ({reason}): {UPLOAD_HINT}.")
            scene = replace(self.scene_classifier, threshold=self.rules.get(rule))
            faces = scene.faces(image)
        except BadUpload as err:
            return f"**Not analysed.** {err}", None, []
        except Exception as err:  # the page shows a message; the console keeps the traceback
            logger.exception("demo: finding faces in %s failed", path)
            return f"**Not analysed.** {type(err).__name__}: {err}", None, []
        rows = scene.rows(Path(path).name, faces)
        if rows:
            message = (f"## {len(rows)} face{'s' * (len(rows) != 1)}: "
                       + label_counts([row["label"] for row in rows], self.labels))
        else:
            message = f"## No face found\n\n{Path(path).name}: the detector found no face of at least " \
                      f"{scene.min_face} pixels."
        table = [[i + 1] + [row[c] for c in self.scene_columns[1:]] for i, row in enumerate(rows)]
        return message + (f"\n\n{note}" if note else ""), scene.draw(image, faces.boxes, faces.probs), table

    @property
    def scene_columns(self) -> List[str]:
        from facemask.detection.scenes import table_columns

        return ["face"] + [c for c in table_columns(self.labels) if c not in ("file", "frame", "time_s", "track")]

    @cached_property
    def scene_classifier(self) -> Any:
        from facemask.data.labels import resolve_positive_label
        from facemask.detection.detectors import load_detector
        from facemask.detection.scenes import SceneClassifier
        from facemask.evaluation.predict import TorchClassifier

        positive = resolve_positive_label(self.labels, self.positive_label)
        return SceneClassifier(TorchClassifier(self.model, self.processor), load_detector(), positive=positive)

    def decide(self, path: str, rule: str) -> Tuple[List[Dict[str, Any]], List[Tuple[str, str]]]:
        """predict's row for the upload under the decision rule (its label is the one the page
        shows), or the reason it was skipped."""
        from facemask.evaluation.predict import predict_files

        threshold = self.rules.get(rule)
        return predict_files(self.model, self.processor, [Path(path)], 1, threshold,
                             self.positive_label if threshold is not None else None)

    def classify(self, path: Optional[str], rule: str) -> Tuple[str, Optional[Dict[str, float]]]:
        """(the page's message in Markdown, class probabilities or None) for one uploaded file."""
        if not path:
            return "Upload a photo of a face, or take one with the webcam.", None
        try:
            note = check_upload(path)
            threshold = self.rules.get(rule)
            rows, skipped = self.decide(path, rule)
            if skipped:
                raise BadUpload(f"{Path(path).name} could not be read ({skipped[0][1]}): {UPLOAD_HINT}.")
        except BadUpload as err:
            return f"**Not classified.** {err}", None
        except Exception as err:  # the page shows a message; the console keeps the traceback
            logger.exception("demo: classifying %s failed", path)
            return f"**Not classified.** {type(err).__name__}: {err}", None
        row = rows[0]
        probabilities = {label: row[f"prob_{label}"] for label in self.labels}
        name = Path(path).name
        if threshold is None:
            detail = f"{name}: the most probable class ({row['confidence']:.1%})."
        else:
            positive = self.positive_label
            side = "at or above" if probabilities[positive] >= threshold else "below"
            detail = (f"{name}: P({positive}) = {probabilities[positive]:.1%}, {side} the threshold {threshold:.3f} of the "
                   f"run's {rule.split(' (')[0]} operating point (chosen on its validation split).")
        message = f"## {row['label']}\n\n{detail}"
        return message + (f"\n\n{note}" if note else ""), probabilities


    def explain(self, path: Optional[str], rule: str) -> Optional[Image.Image]:
        """The upload as the model saw it, with the map of the evidence for the class the page shows
        (under the decision rule); None without an image, a readable one, or a map method."""
        from facemask.evaluation.explain import explain_images
        from facemask.evaluation.figures import explanation_image
        from facemask.runtime.files import read_input
        from facemask.pipeline.processor import processor_image_size

        if not path or self.map_method == "none":
            return None
        try:
            check_upload(path)
            image, _ = read_input(Path(path), 2 * processor_image_size(self.processor))  # as predict reads it
            rows, _ = self.decide(path, rule)
            if image is None or not rows:
                return None
            found = explain_images(self.model, self.processor, [image], rows[0]["label"], self.map_method)[0]
        except BadUpload:
            return None
        except Exception:  # the label stands without its map; the console keeps the traceback
            logger.exception("demo: the map of %s failed", path)
            return None
        return explanation_image(found.seen, found.grid)


def load_demo(source: str, backend: str = "torch", revision: Optional[str] = None,
              map_method: str = "ablation") -> Demo:
    from facemask.evaluation.loading import load_model, model_folder

    # The run's files too, for the metrics tab and the operating points; the card is not needed.
    patterns = [p for p in PUSH_PATTERNS if p != CARD.name and not p.startswith(f"{ONNX_DIR}/")]
    patterns += [f"{ONNX_DIR}/{ONNX_FILES[backend]}"] if backend != "torch" else []
    folder = model_folder(source, revision, patterns)
    model, processor = load_model(source, backend=backend, folder=folder)
    run = read_run(folder)
    demo = Demo(source, model, processor, run, backend, decision_rules(run.operating_points), map_method)
    if demo.positive_label is None and len(demo.rules) > 1:  # a threshold on an unknown class is not offered
        logger.warning("demo: the class of the run's operating points is not recorded (no positive_label in %s, "
                       "no %s): the page offers the arg-max only", OPERATING_POINTS.name, EXPERIMENT.name)
        demo.rules = {ARGMAX_RULE: None}
    return demo


def _undecoded(decode: Any, payload: Any) -> Optional[str]:
    """gr.Image's input as the uploaded file, undecoded: check_upload then explains a bad file in the
    page, where gr.Image's own decode would fail with a bare "Error". (An instance attribute, not a
    subclass: gradio writes a .pyi stub beside the module of every component subclass.)"""
    if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
        return str(payload.path)
    return decode(payload)


def build_app(demo: Demo) -> Any:
    """The Gradio Blocks of the page."""
    import gradio as gr

    name = model_name(demo.run, hub_model_id(demo.run))
    labels = ", ".join(demo.labels)
    results = demo.run.results.get("test") or demo.run.results.get("eval") or {}
    headline = next((f"{split_name(k.split('_')[0])} accuracy {v:.2%}" for k, v in results.items()
                     if k.endswith("_accuracy")), "no evaluation recorded")
    # Gradio's usage telemetry is off: the page must work offline and report to no one.
    with gr.Blocks(title=f"Face-mask classifier: {name}", analytics_enabled=False) as app:
        gr.Markdown(f"# Face-mask classifier: {name}\nClasses: {labels}. Model: `{demo.source}` "
                    f"({demo.backend} backend, {headline}).")
        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(type="filepath", sources=["upload", "webcam"], label="Photo", elem_id="photo")
                    image.preprocess = partial(_undecoded, image.preprocess)
                    rule = gr.Dropdown(list(demo.rules), value=default_rule(demo.rules), label="Decision rule",
                                       elem_id="rule")
                with gr.Column():
                    message = gr.Markdown("Upload a photo of a face, or take one with the webcam.", elem_id="result")
                    # No heading: it would show the arg-max, which an operating point can overrule.
                    probabilities = gr.Label(label="Class probabilities", num_top_classes=len(demo.labels),
                                             show_heading=False, elem_id="probabilities")
                    where = gr.Image(type="pil", interactive=False, elem_id="map", visible=demo.map_method != "none",
                                     label=f"Where the model found its evidence ({demo.map_method}): red for the class "
                                           "shown, blue against it")
            # The label first; its map, which takes one forward pass per patch, follows.
            for event in (image.change, rule.change):
                event(demo.classify, [image, rule], [message, probabilities]).then(demo.explain, [image, rule], [where])
        with gr.Tab("Scene"):
            with gr.Row():
                with gr.Column():
                    scene = gr.Image(type="filepath", sources=["upload", "webcam"], label="Photo of a scene",
                                     elem_id="scene-photo")
                    scene.preprocess = partial(_undecoded, scene.preprocess)
                    scene_rule = gr.Dropdown(list(demo.rules), value=default_rule(demo.rules), label="Decision rule",
                                             elem_id="scene-rule")
                with gr.Column():
                    scene_message = gr.Markdown("Upload a photo of a scene, or take one with the webcam: every face "
                                                "is found, classified and drawn.", elem_id="scene-result")
                    drawn = gr.Image(type="pil", label="Faces found", interactive=False, elem_id="scene-drawn")
            faces = gr.Dataframe(headers=demo.scene_columns, label="Faces", interactive=False, elem_id="scene-table")
            for event in (scene.change, scene_rule.change):
                event(demo.scene, [scene, scene_rule], [scene_message, drawn, faces])
        with gr.Tab("Run metrics"):
            gr.Markdown(metrics_markdown(demo.run), elem_id="metrics")
            for caption, path in run_figures(demo.run):
                gr.Markdown(f"### {caption}")
                gr.Image(str(path), show_label=False, interactive=False)
    return app


def launch(source: str, host: str = "127.0.0.1", port: int = 7860, share: bool = False, backend: str = "torch",
           revision: Optional[str] = None, map_method: str = "ablation") -> None:
    app = build_app(load_demo(source, backend, revision, map_method))
    app.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_FILE_SIZE)
