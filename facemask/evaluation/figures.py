"""PNG figures of a run (matplotlib, optional): confusion matrix, ROC curve, reliability diagram,
error gallery (with explanation maps) and training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from facemask import run_folder

# PNGs without a timestamp or version stamp, so regenerated figures are byte-identical.
_PNG_METADATA = {"Software": None}


def _pyplot() -> Optional[Any]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def confusion_matrix_png(matrix: Dict[str, Any], title: str, path: Path) -> bool:
    """Write the matrix as a heat map; False when matplotlib is not installed."""
    plt = _pyplot()
    if plt is None:
        return False
    labels: List[str] = matrix["labels"]
    values = matrix["matrix"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(labels), 1.2 + 1.1 * len(labels)), dpi=100)
    ax.imshow(values, cmap="Blues")
    peak = max(max(row) for row in values) or 1
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=20)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, metadata=_PNG_METADATA)
    plt.close(fig)
    return True


def confusion_figure(prefix: str, matrix: Dict[str, Any], directory: Path) -> Optional[str]:
    """The split's confusion matrix as <prefix>_confusion_matrix.png in `directory`; its name, or
    None without matplotlib. The evaluation and the card both draw it through here."""
    path = run_folder.CONFUSION_FIGURE.path(directory, prefix)
    return path.name if confusion_matrix_png(matrix, f"{run_folder.split_name(prefix)} split", path) else None


def training_curves_png(log_history: List[Dict[str, Any]], path: Path) -> bool:
    """Training loss and evaluation accuracy (a pretraining run: evaluation loss) against the step;
    False without data or matplotlib."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_accuracy"]) for e in log_history if "eval_accuracy" in e and "step" in e]
    eval_loss = [] if evals else [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    plt = _pyplot()
    if plt is None or not (train or evals or eval_loss):
        return False
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    lines = []
    if train:  # one logged step (a 1-epoch run) is a point: a line alone would draw nothing
        lines += ax.plot(*zip(*train), color="tab:blue", marker="o" if len(train) == 1 else None,
                         label="training loss")
    if eval_loss:
        lines += ax.plot(*zip(*eval_loss), color="tab:orange", marker="o", label="eval loss")
    ax.xaxis.get_major_locator().set_params(integer=True)  # steps, never 9.8
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if evals:
        acc = ax.twinx()
        lines += acc.plot(*zip(*evals), color="tab:orange", marker="o", label="eval accuracy")
        acc.set_ylabel("accuracy")
        acc.set_ylim(0, 1.02)
    ax.legend(lines, [line.get_label() for line in lines], loc="center right")
    fig.tight_layout()
    fig.savefig(path, metadata=_PNG_METADATA)
    plt.close(fig)
    return True


def reconstructions_png(rows: List[Any], path: Path) -> bool:
    """Masked image modelling at work: per row an image, its masked input (hidden patches grey)
    and the model's reconstruction (its prediction pasted into the hidden patches); uint8 HWC
    arrays. False without rows or matplotlib."""
    plt = _pyplot()
    if plt is None or not rows:
        return False
    fig, axes = plt.subplots(len(rows), 3, figsize=(6.0, 2.0 * len(rows)), dpi=100, squeeze=False)
    for row, images in zip(axes, rows):
        for ax, picture, title in zip(row, images, ("image", "masked input", "reconstruction")):
            ax.imshow(picture)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, metadata=_PNG_METADATA)
    plt.close(fig)
    return True


def roc_curve_png(label_ids: Any, probs: Any, labels: List[str], pos_label: int, title: str, path: Path) -> bool:
    """ROC curve of the positive class (binary) or one-vs-rest per class; False if undefined."""
    import numpy as np
    from sklearn.metrics import auc, roc_curve

    plt = _pyplot()
    label_ids, probs = np.asarray(label_ids), np.asarray(probs)
    classes = [pos_label] if len(labels) == 2 else list(range(len(labels)))
    if plt is None or any(len(np.unique(label_ids == c)) < 2 for c in classes):
        return False
    fig, ax = plt.subplots(figsize=(4.8, 4.4), dpi=100)
    for c in classes:
        fpr, tpr, _ = roc_curve(label_ids == c, probs[:, c])
        ax.plot(fpr, tpr, label=f"{labels[c]} (AUC {auc(fpr, tpr):.4f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, metadata=_PNG_METADATA)
    plt.close(fig)
    return True


def reliability_png(calibration: Dict[str, Any], title: str, path: Path) -> bool:
    """Reliability diagram: accuracy against confidence per bin, with the diagonal of perfect calibration."""
    plt = _pyplot()
    if plt is None or not calibration["rows"]:
        return False
    rows = calibration["rows"]
    width = 1.0 / calibration["bins"]
    fig, ax = plt.subplots(figsize=(4.8, 4.4), dpi=100)
    ax.bar([r["low"] for r in rows], [r["accuracy"] for r in rows], width=width, align="edge",
           edgecolor="tab:blue", color="tab:blue", alpha=0.6, label="accuracy")
    ax.plot([r["confidence"] for r in rows], [r["confidence"] for r in rows], "o", color="tab:orange",
            markersize=3, label="mean confidence")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence of the predicted class")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}: ECE {calibration['ece']:.4f}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, metadata=_PNG_METADATA)
    plt.close(fig)
    return True


MAP_COLOURS = "RdBu_r"


def draw_map(ax: Any, seen: Any, grid: Any) -> None:
    """The image as the model saw it, and over it the map, one square per patch (no smoothing: the
    map has no finer detail to show). Diverging colours on a scale symmetric about zero: red speaks
    for the target class, blue against it, clear is neither (map_legend says so on the figure)."""
    import numpy as np

    grid = np.asarray(grid, dtype=np.float32)
    peak = float(np.abs(grid).max()) or 1.0
    height, width = seen.shape[:2]
    ax.imshow(seen)
    ax.imshow(grid, cmap=MAP_COLOURS, vmin=-peak, vmax=peak, alpha=0.55, interpolation="nearest",
              extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    ax.axis("off")


def map_legend(fig: Any, axes: Any) -> Any:
    """The maps' colour key beside `axes`: a map's sign is its meaning, and each map is scaled to its
    own largest value, so the key names the sign, not a number."""
    import matplotlib.cm
    import matplotlib.colors

    key = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(-1, 1), cmap=MAP_COLOURS)
    bar = fig.colorbar(key, ax=axes, ticks=[-1, 0, 1], fraction=0.05, shrink=0.8, alpha=0.55)
    bar.ax.set_yticklabels(["against", "neither", "for"], fontsize=7)
    bar.set_label("evidence for the class in the title", fontsize=7)
    return bar


def explanation_image(seen: Any, grid: Any) -> Optional[Any]:
    """The map over the image (draw_map) as a PIL image, for the demo page; None without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return None
    from PIL import Image

    fig, ax = plt.subplots(figsize=(3.2, 3.2), dpi=100)
    draw_map(ax, seen, grid)
    fig.subplots_adjust(0, 0, 1, 1)
    fig.canvas.draw()
    image = Image.frombuffer("RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba()).convert("RGB")
    plt.close(fig)
    return image


def explanation_png(seen: Any, grid: Any, title: str, path: Path) -> bool:
    """One image beside its map over it (`python -m facemask explain`)."""
    plt = _pyplot()
    if plt is None:
        return False
    fig = _explanation_figure(plt, seen, grid, title)
    fig.savefig(path, metadata=_PNG_METADATA)
    plt.close(fig)
    return True


def _explanation_figure(plt: Any, seen: Any, grid: Any, title: str) -> Any:
    fig, axes = plt.subplots(1, 2, figsize=(6.0, 2.9), dpi=100, layout="constrained")
    axes[0].imshow(seen)
    axes[0].axis("off")
    draw_map(axes[1], seen, grid)
    map_legend(fig, axes[1])
    fig.suptitle(title, fontsize=9)
    return fig


def _gallery_png(images: List[Any], titles: List[str], path: Path, maps: Optional[List[Optional[Any]]],
                 map_titles: List[str], columns: int, height: float, fontsize: int) -> bool:
    """Images in a grid, each titled; with `maps` (explain.Explanation per image, or None), each
    image as the model saw it beside its map."""
    plt = _pyplot()
    if plt is None or not images:
        return False
    fig = _gallery_figure(plt, images, titles, maps, map_titles, columns, height, fontsize)
    fig.savefig(path, metadata=_PNG_METADATA)
    plt.close(fig)
    return True


def _gallery_figure(plt: Any, images: List[Any], titles: List[str], maps: Optional[List[Optional[Any]]],
                   map_titles: List[str], columns: int, height: float, fontsize: int) -> Any:
    # No wider than the images need (two errors on a canvas of four are mostly empty); constrained
    # layout keeps every title's lines inside the figure.
    panels = 2 if maps and any(m is not None for m in maps) else 1
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns * panels, figsize=(2.4 * columns * panels + (0.6 if panels == 2 else 0),
                                                              height * rows), dpi=100, squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for k, (image, title) in enumerate(zip(images, titles)):
        row, column = divmod(k, columns)
        found = maps[k] if panels == 2 and k < len(maps) else None
        ax = axes[row, column * panels]
        ax.imshow(found.seen if found is not None else image)
        ax.set_title(title, fontsize=fontsize)
        if found is not None:
            draw_map(axes[row, column * panels + 1], found.seen, found.grid)
            axes[row, column * panels + 1].set_title(map_titles[k], fontsize=fontsize)
    if panels == 2:
        map_legend(fig, axes)
    return fig


def error_gallery_png(images: List[Any], errors: List[Dict[str, Any]], path: Path, columns: int = 4,
                      maps: Optional[List[Any]] = None) -> bool:
    """The misclassified images with the highest loss, each titled with its true and predicted
    label; with `maps`, each image beside its map for the predicted class: where the model found
    the evidence for its wrong answer."""
    titles = [f"true: {e['true_label']}\npredicted: {e['predicted_label']} ({e['confidence']:.2f})" for e in errors]
    return _gallery_png(images, titles, path, maps, [f"evidence for {e['predicted_label']}" for e in errors],
                        columns, 2.7, 8)


def label_issues_png(images: List[Any], suspects: List[Dict[str, Any]], path: Path,
                     maps: Optional[List[Optional[Any]]] = None, columns: int = 4) -> bool:
    """The most suspect training labels (label-issues), each titled given -> suggested label with its
    label quality and file; with `maps`, each image beside its map for the suggested class."""
    titles = []
    for suspect in suspects:
        name = str(suspect["file"])
        name = name if len(name) <= 26 else "..." + name[-23:]
        titles.append(f"{suspect['given_label']} \u2192 {suspect['suggested_label']}\n"
                      f"quality {suspect['label_quality']:.3f}\n{name}")
    return _gallery_png(images, titles, path, maps, [f"evidence for {s['suggested_label']}" for s in suspects],
                        columns, 2.9, 7)


def robustness_png(record: Dict[str, Any], title: str, path: Path) -> bool:
    """Accuracy against severity, a line per corruption, the clean accuracy as a level."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100, layout="constrained")
    severities = [1, 2, 3, 4, 5]
    for name, cells in record["corruptions"].items():
        ax.plot(severities, [cells[str(s)]["accuracy"] for s in severities], marker="o", label=name.replace("_", " "))
    ax.axhline(record["clean_accuracy"], color="black", linestyle="--", label="clean")
    ax.set(xlabel="severity", ylabel="accuracy", xticks=severities, ylim=(0, 1.02),
           title=f"{title}: {record['images']} images")
    ax.legend(fontsize=8, loc="lower left")
    fig.savefig(path, metadata=_PNG_METADATA)
    plt.close(fig)
    return True


def occlusion_png(images: List[Any], flips: List[Dict[str, Any]], path: Path, mask_class: str,
                  maps: Optional[List[Any]] = None, columns: int = 4) -> bool:
    """No-mask images read as masked once something that is not a mask covered the mouth: each
    titled with its occluder and probability, with `maps` beside it the evidence for the mask class."""
    titles = [f"{f['occluder']}\nP({mask_class}) {f['probability']:.2f}" for f in flips]
    return _gallery_png(images, titles, path, maps, [f"evidence for {mask_class}"] * len(flips), columns, 2.7, 8)
