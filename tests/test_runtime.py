"""The torch-free runtime (facemask/runtime/): the image processor's pixels to 1e-6 from its saved
JSON, the same predictions as the exported graph on the PyTorch-side path, predict and detect with
torch, transformers and datasets unimportable, and a fresh virtual environment from
requirements-serve.txt."""

import ast
import csv
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY_MODELS, compose_scene
from PIL import Image

from facemask.__main__ import main as cli
from facemask.config.schema import ConfigError, ModelConfig
from facemask.data.images import load_image
from facemask.run_folder import OPERATING_POINTS, PROCESSOR, read_json
from facemask.runtime.decision import decision_rule
from facemask.runtime.files import collect_paths, format_rows
from facemask.runtime.model import load_onnx_model
from facemask.runtime.predict import predict_files
from facemask.runtime.preprocess import Preprocessor

FORBIDDEN = ("torch", "transformers", "datasets")


def requirement_names(path):
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[=<>\[ ;]", line)[0].lower().replace("_", "-"))
    return names


def training_only_modules():
    """The modules of what requirements.txt installs and requirements-serve.txt does not (torch,
    transformers, datasets, omegaconf, scikit-learn, ...): absent where the runtime is deployed."""
    absent = requirement_names(REPO / "requirements.txt") - requirement_names(REPO / "requirements-serve.txt")
    return sorted(module for module, dists in importlib.metadata.packages_distributions().items()
                  if any(d.lower().replace("_", "-") in absent for d in dists))


# Importing them fails in the child, as where they are not installed.
BLOCKER = textwrap.dedent("""
    import sys

    class Absent:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {absent!r}:
                raise ImportError("no module named " + name + " (blocked by the test)")

    sys.meta_path.insert(0, Absent())
""")


@pytest.fixture(scope="module")
def varied_images(tmp_path_factory):
    """Files that take every branch of the one decoder: EXIF-rotated JPEG, RGBA and palette PNGs
    with transparency, 8- and 16-bit greyscale, odd and one-pixel sizes, a large photo."""
    root = tmp_path_factory.mktemp("varied")
    rng = np.random.default_rng(7)

    def noise(height, width, channels=3):
        ramp = np.linspace(0, 255, width)[None, :, None] * np.linspace(0.2, 1, height)[:, None, None]
        return np.clip(ramp + rng.normal(0, 40, (height, width, channels)), 0, 255).astype(np.uint8)

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to show upright
    Image.fromarray(noise(40, 70)).save(root / "rotated.jpg", exif=exif, quality=90)
    Image.fromarray(noise(50, 45, 4), "RGBA").save(root / "alpha.png")
    Image.fromarray(noise(37, 91)).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "palette.png",
                                                                                       transparency=0)
    Image.fromarray(noise(33, 60)[..., 0], "L").save(root / "grey.png")
    Image.fromarray((noise(29, 31)[..., 0].astype(np.uint16) * 257)).save(root / "grey16.png")
    Image.fromarray(noise(91, 37)).save(root / "odd.png")
    Image.fromarray(noise(1, 300)).save(root / "one_row.png")
    Image.fromarray(noise(300, 1)).save(root / "one_column.png")
    Image.fromarray(noise(1600, 2400)).save(root / "large.jpg", quality=85)
    return sorted(root.iterdir())


def saved_processor(folder, model_type, **overrides):
    """preprocessor_config.json as training writes it (the processor of pipeline/processor.py, saved)."""
    from facemask.pipeline.processor import load_image_processor

    cfg = ModelConfig(from_config=dict(TINY_MODELS.get(model_type, {**TINY_MODELS["vit"], "model_type": model_type})),
                      image_processor=overrides or None)
    load_image_processor(cfg).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def processor_folders(evaluated_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("processors")
    return {
        "vit run": evaluated_run,
        "beit": saved_processor(tmp / "beit", "beit"),
        "beit, shortest edge + centre crop": saved_processor(
            tmp / "beit-crop", "beit", size={"shortest_edge": 40}, do_center_crop=True,
            crop_size={"height": 32, "width": 32}),
        "deit, crop padded": saved_processor(tmp / "deit", "deit", size={"height": 20, "width": 20},
                                             do_center_crop=True, crop_size={"height": 24, "width": 28}),
        # The longer side capped: 91x37 goes to 24x59, a 1x300 row is left as it is.
        "vit, shortest + longest edge": saved_processor(tmp / "vit-longest", "vit",
                                                        size={"shortest_edge": 32, "longest_edge": 60}),
        "beit, shortest + longest edge + centre crop": saved_processor(
            tmp / "beit-longest", "beit", size={"shortest_edge": 40, "longest_edge": 48}, do_center_crop=True,
            crop_size={"height": 32, "width": 32}),
        "vit, max height and width": saved_processor(tmp / "vit-max", "vit", size={"max_height": 30, "max_width": 50}),
    }


def _coordinates(height, width):
    """An image whose pixels name their own source position, counted from 1 so that black is the
    padding (R, G: x + 1 and y + 1 mod 256; B: the rest)."""
    y, x = np.mgrid[1:height + 1, 1:width + 1]
    return Image.fromarray(np.stack([x % 256, y % 256, (x // 256) * 16 + y // 256], -1).astype(np.uint8))


def _source(pixel):
    r, g, b = (int(v) for v in pixel)
    return r + 256 * (b // 16) - 1, g + 256 * (b % 16) - 1


@pytest.mark.parametrize("size", [{"height": 24, "width": 30}, {"shortest_edge": 32},
                                  {"shortest_edge": 32, "longest_edge": 60}, {"max_height": 30, "max_width": 50}],
                         ids=["height-width", "shortest", "shortest-longest", "max"])
@pytest.mark.parametrize("crop", [False, True], ids=["no-crop", "centre-crop"])
def test_every_size_form_resizes_as_the_image_processor(size, crop):
    """Every form of 'size', with and without a centre crop, against transformers' PIL image
    processor run on images of shapes that take every branch (square, tall, wide, already at size,
    the longer side capped, one-pixel rows): the runtime resizes to the processor's output shape and
    reads its input side, and the pipeline (pipeline/processor.py) reads the same side and the
    part of the image the processor's pixels come from (nearest resampling, so each output pixel
    names its source)."""
    from transformers import ViTImageProcessorPil

    from facemask.pipeline.processor import input_region, processor_image_size

    crop_size = {"height": 20, "width": 26}
    theirs = ViTImageProcessorPil(size=size, do_center_crop=crop, crop_size=crop_size, resample=0,
                                  do_rescale=False, do_normalize=False)
    ours = Preprocessor.from_dict({**json.loads(theirs.to_json_string()), "image_processor_type": "ViTImageProcessor"})
    assert ours.size == size
    assert processor_image_size(theirs) == ours.input_side == (crop_size["height"] if crop else next(iter(size.values())))
    sides = (1, 7, 20, 32, 37, 60, 91, 300)
    shapes = [(h, w) for h in sides for w in sides] + [(1, 2400), (1600, 1)]
    for height, width in shapes:
        where = (size, crop, height, width)
        resized = ours.resized(height, width)
        if 0 in resized:  # a one-pixel row capped to a zero side: refused (test_the_pixels_are_...)
            continue
        out = theirs([_coordinates(height, width)], return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        assert out.shape[:2] == ((crop_size["height"], crop_size["width"]) if crop else resized), where
        left, top, right, bottom = input_region(theirs, width, height)
        sx, sy = width / resized[1], height / resized[0]
        rows, cols = np.nonzero(out.any(-1) | (not crop))  # a crop larger than the image is padded
        first, last = _source(out[rows.min(), cols.min()]), _source(out[rows.max(), cols.max()])
        # Nearest resampling takes the source pixel under each output pixel's centre.
        assert abs(first[0] - (left + sx / 2)) <= 1 and abs(first[1] - (top + sy / 2)) <= 1, (where, first)
        assert abs(last[0] - (right - sx / 2)) <= 1 and abs(last[1] - (bottom - sy / 2)) <= 1, (where, last)


def test_the_pixels_are_the_image_processors_to_1e_6(processor_folders, varied_images):
    from transformers import AutoImageProcessor

    from facemask.pipeline.processor import BACKEND

    images = [load_image(path) for path in varied_images]
    rotated = images[[p.name for p in varied_images].index("rotated.jpg")]
    assert rotated.size == (40, 70), "the EXIF orientation was not applied"
    for name, folder in processor_folders.items():
        ours = Preprocessor.from_folder(folder)
        theirs = AutoImageProcessor.from_pretrained(str(folder), backend=BACKEND)
        shapes, kept = set(), []
        for path, image in zip(varied_images, images):
            try:
                expected = theirs([image], return_tensors="np")["pixel_values"]
            except ValueError as err:  # a one-pixel row capped to a zero side: refused by both
                with pytest.raises(ValueError, match=str(err)):
                    ours([image])
                continue
            got = ours([image])
            assert got.dtype == np.float32 and got.shape == expected.shape, (name, path.name)
            assert np.abs(got - expected).max() <= 1e-6, (name, path.name)
            shapes.add(got.shape)
            kept.append(image)
        if len(shapes) == 1:  # a fixed input size: the images batch together
            assert ours(kept).shape == (len(kept), *shapes.pop()[1:])


@pytest.mark.parametrize("settings", [{}, {"do_normalize": False}, {"do_rescale": False},
                                      {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}],
                         ids=["standard", "not-normalised", "not-rescaled", "imagenet"])
def test_seen_pixels_undo_the_processor_to_the_image_it_was_given(settings):
    """The one de-normalisation (runtime/preprocess.py seen_pixels), as explain's overlays and the
    pretraining figures use it, gives back the image the processor was given (already at the
    model's size, so nothing is resampled), whichever steps the processor takes."""
    import torch
    from transformers import ViTImageProcessorPil

    from facemask.evaluation.explain import seen_images
    from facemask.runtime.preprocess import seen_pixels

    image = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    theirs = ViTImageProcessorPil(size={"height": 24, "width": 24}, **settings)
    pixels = theirs([Image.fromarray(image)], return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(seen_images(theirs, torch.from_numpy(pixels))[0], image)
    np.testing.assert_array_equal(seen_pixels(pixels[0], theirs), image)
    ours = Preprocessor.from_dict({**json.loads(theirs.to_json_string()), "image_processor_type": "ViTImageProcessor"})
    np.testing.assert_array_equal(seen_pixels(ours([Image.fromarray(image)]), ours)[0], image)


def test_an_image_processor_the_runtime_does_not_reproduce_is_refused_by_name(processor_folders, tmp_path):
    fields = read_json(PROCESSOR.path(processor_folders["beit"]))
    with pytest.raises(ConfigError, match="image_processor_type is 'ConvNextImageProcessor'.*--backend torch"):
        Preprocessor.from_dict({**fields, "image_processor_type": "ConvNextImageProcessor"})
    with pytest.raises(ConfigError, match="'size'.*reads .*shortest_edge, longest_edge.*--backend torch"):
        Preprocessor.from_dict({**fields, "size": {"longest_edge": 30}})
    with pytest.raises(ConfigError, match=f"{tmp_path}.*does not exist"):
        Preprocessor.from_folder(tmp_path)


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_predictions_equal_the_graph_on_the_pytorch_side_path(onnx_run, varied_images, backend):
    from facemask.evaluation.loading import load_model
    from facemask.evaluation.predict import predict_files as torch_side_predict_files

    paths, _ = collect_paths([str(varied_images[0].parent)])
    model = load_onnx_model(str(onnx_run), backend)
    assert model.labels == ["with_mask", "without_mask"]
    rule = decision_rule(onnx_run, model.labels, "best F1", None).threshold
    best_f1 = {row["name"]: row["threshold"] for row in read_json(OPERATING_POINTS.path(onnx_run))["rows"]}["best F1"]
    assert rule == best_f1
    for threshold in (None, rule):
        ours, skipped = predict_files(model, paths, 4, threshold)
        theirs, _ = torch_side_predict_files(*load_model(str(onnx_run), backend=backend), paths, 4, threshold)
        assert not skipped and len(ours) == len(paths)
        assert ours == theirs
    # The rule applied: the positive class (with_mask) from the threshold up, the other below it.
    probs = model.probabilities([load_image(p, 2 * model.input_side) for p in paths], 4)
    assert [row["label"] for row in ours] == [model.labels[0] if p >= rule else model.labels[1] for p in probs[:, 0]]
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-6)


def test_the_runtime_imports_no_torch_transformers_or_datasets_at_any_level():
    """Every module of facemask/runtime/ and every project module it reaches, lazy imports included."""
    package = REPO / "facemask"
    # runtime/cli.py is predict's command module (the top layer, above evaluation/): with --backend
    # torch it loads PyTorch; with ONNX it runs without it (the next test blocks the training stack).
    todo = [p for p in (package / "runtime").rglob("*.py") if p.name != "cli.py"]
    seen, offenders = set(), []
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for name in names:
                if name.split(".")[0] in FORBIDDEN:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno} imports {name}")
                if name.startswith("facemask."):
                    target = REPO.joinpath(*name.split("."))
                    todo += [p for p in (target.with_suffix(".py"), target / "__init__.py") if p.is_file()]
    assert len(seen) > 6 and not offenders, offenders


def test_predict_and_detect_run_without_the_training_stack(onnx_run, varied_images, tmp_path):
    """And every other package that only requirements.txt installs."""
    absent = training_only_modules()
    assert set(FORBIDDEN) | {"omegaconf", "sklearn"} <= set(absent)
    photo = tmp_path / "street.jpg"
    compose_scene()[0].save(photo, quality=92)
    image = varied_images[-1]
    script = BLOCKER.format(absent=absent) + textwrap.dedent(f"""
        from facemask.__main__ import main
        codes = [main(["predict", {str(onnx_run)!r}, {str(image)!r}, "--backend", "onnx"]),
                 main(["predict", {str(onnx_run)!r}, {str(image)!r}, "--backend", "onnx-int8",
                       "--threshold", "best F1"]),
                 main(["detect", {str(onnx_run)!r}, {str(photo)!r}, "--backend", "onnx",
                       "--output", {str(tmp_path / "faces")!r}])]
        print("codes", codes)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "codes [0, 0, 0]" in lines, done.stdout + done.stderr
    expected = []
    for backend, threshold in (("onnx", None), ("onnx-int8", "best F1")):
        model = load_onnx_model(str(onnx_run), backend)
        rule = threshold and decision_rule(onnx_run, model.labels, threshold, None).threshold
        expected.append(format_rows(predict_files(model, [image], threshold=rule)[0]).strip())
    assert lines[:2] == expected
    with (tmp_path / "faces" / "detections.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 3 and {row["label"] for row in rows} <= {"with_mask", "without_mask"}


@pytest.mark.slow
def test_a_fresh_environment_from_requirements_serve_runs_predict_and_detect(onnx_run, varied_images, tmp_path):
    """python3 -m venv + pip install -r requirements-serve.txt: no torch there, and the repository's
    code classifies and detects with the exported graph."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REPO / "requirements-serve.txt")],
                   check=True, timeout=1200)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    for module in FORBIDDEN:
        absent = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True, text=True, env=env)
        assert absent.returncode != 0 and "ModuleNotFoundError" in absent.stderr, module

    def facemask(*args):
        return subprocess.run([str(python), "-m", "facemask", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300)

    image = varied_images[-1]
    predicted = facemask("predict", str(onnx_run), str(image), "--backend", "onnx", "--output", "rows.json")
    assert predicted.returncode == 0, predicted.stderr
    expected, _ = predict_files(load_onnx_model(str(onnx_run)), [image])
    assert json.loads((tmp_path / "rows.json").read_text()) == json.loads(json.dumps(expected))
    photo = tmp_path / "street.jpg"
    compose_scene()[0].save(photo, quality=92)
    detected = facemask("detect", str(onnx_run), str(photo), "--backend", "onnx-int8", "--output", "faces")
    assert detected.returncode == 0, detected.stderr
    assert len(json.loads((tmp_path / "faces" / "detections.json").read_text())) >= 3
    assert Path(tmp_path / "faces" / "street.jpg").is_file()
    # The service the Dockerfile runs, from the same environment: up, answering, drained by SIGTERM.
    import httpx
    from test_serve import free_port, wait_ready

    port = free_port()
    server = subprocess.Popen([str(python), "-m", "facemask", "serve", str(onnx_run), "--backend", "onnx", "--port",
                               str(port)], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}", server)
        served = httpx.post(f"http://127.0.0.1:{port}/predict", content=image.read_bytes(),
                            headers={"content-type": "application/octet-stream"}, timeout=60).json()["predictions"]
        assert served == [{**expected[0], "path": "body"}]
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()


def test_every_format_is_shrunk_right_after_decoding(tmp_path):
    """With a draft side, the one decoder keeps the shorter side at that side or more and less
    than twice it, whatever the format and mode (JPEG by its DCT scale, the others by a whole-factor
    reduce), upright, in RGB; the pixels the model then sees stay close to the full decode's."""
    from skimage import data as samples

    photo = Image.fromarray(samples.astronaut())  # a real photograph, 512 x 512
    exif = Image.Exif()
    exif[0x0112] = 6
    wide = photo.resize((900, 600))
    cases = {"photo.png": (photo, {}), "photo.jpg": (photo, {"quality": 92}), "wide.gif": (wide.convert("P"), {}),
             "rotated.png": (wide, {"exif": exif}), "alpha.png": (wide.convert("RGBA"), {}),
             "grey16.png": (Image.fromarray(np.asarray(wide.convert("L"), dtype=np.uint16) * 257), {}),
             "float.tiff": (Image.fromarray(np.asarray(wide.convert("L"), dtype=np.float32) / 3), {}),
             "bilevel.png": (wide.convert("1"), {})}
    preprocess = Preprocessor(size={"height": 56, "width": 56}, resample=2)
    for name, (image, options) in cases.items():
        image.save(tmp_path / name, **options)
        full, small = load_image(tmp_path / name), load_image(tmp_path / name, 112)
        assert small.mode == "RGB" and 112 <= min(small.size) < 224, (name, small.size)
        assert (small.width > small.height) == (full.width > full.height), name  # the orientation applied
        difference = np.abs(preprocess([small]) - preprocess([full]))
        assert difference.mean() < 0.01, (name, difference.mean())  # of a -1..1 range: about a grey level
    assert load_image(tmp_path / "rotated.png").size == (600, 900)
    assert load_image(tmp_path / "photo.png", 300).size == (512, 512)  # less than twice the side: as it is


def test_16_bit_and_float_images_are_converted_without_a_full_size_copy(tmp_path):
    """The decoder's own arrays stay a fraction of the image (numpy's allocations, which tracemalloc
    sees): no float64 copy of the whole image, as there was (8 bytes a pixel, then more)."""
    import tracemalloc

    ramp = (np.arange(3000, dtype=np.uint32)[None, :] * 7 + np.arange(2000, dtype=np.uint32)[:, None]) % 60000
    for name, array in (("grey16.png", ramp.astype(np.uint16)), ("float.tiff", ramp.astype(np.float32) / 7)):
        Image.fromarray(array).save(tmp_path / name)
        expected = (array.astype(np.float64) / array.max() * 255).astype(np.uint8)  # the conversion's definition
        tracemalloc.start()
        try:
            image = load_image(tmp_path / name)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2.5 * array.size, (name, peak / array.size)  # bytes a pixel: the 8-bit result and blocks
        got = np.asarray(image)
        assert got.shape == (2000, 3000, 3) and np.array_equal(got[..., 0], expected), name
