"""The demo page (python -m facemask demo) driven by headless Chromium, and its Space (python -m
facemask space) pushed to the stand-in Hub and run from what was pushed."""

import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, best_iou, compose_scene
from fake_hub import FakeHub
from PIL import Image

from facemask.data.synthetic import draw_face
from facemask.evaluation.predict import predict_files
from facemask.publish.demo import (
    ARGMAX_RULE,
    BadUpload,
    check_upload,
    decision_rules,
    default_rule,
    load_demo,
    metrics_markdown,
)

TOKEN = "hf_" + "Dm4" * 12


@pytest.fixture(scope="module")
def run_dir(evaluated_run):
    return evaluated_run


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    """A face with a mask, one without, and the three kinds of bad upload."""
    root = tmp_path_factory.mktemp("uploads")
    draw_face(random.Random(1), 96, True).save(root / "with-mask.jpg")
    draw_face(random.Random(2), 96, False).save(root / "without-mask.png")
    (root / "notes.png").write_text("not an image, whatever its name says")
    Image.new("L", (8000, 7000)).save(root / "huge.png")  # 56 megapixels, a few kilobytes of PNG
    frames = [draw_face(random.Random(i), 64, i % 2 == 0) for i in range(3)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=200, loop=0)
    return root


def test_bad_uploads_get_a_message_and_an_animation_a_note(uploads, tmp_path):
    with pytest.raises(BadUpload, match="notes.png is not an image"):
        check_upload(uploads / "notes.png")
    with pytest.raises(BadUpload, match=r"8000 x 7000 pixels \(56 megapixels\).*up to 50 megapixels"):
        check_upload(uploads / "huge.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(BadUpload, match="empty file"):
        check_upload(tmp_path / "empty.jpg")
    assert check_upload(uploads / "animated.gif") == "animated.gif is animated (3 frames): its first frame was classified."
    assert check_upload(uploads / "with-mask.jpg") == ""


def test_decision_rules_come_from_the_operating_points():
    table = {"positive_label": "with_mask", "rows": [
        {"name": "precision>=0.99", "threshold": None},
        {"name": "recall>=0.99", "threshold": 0.125},
        {"name": "best F1", "threshold": 0.4375}]}
    rules = decision_rules(table)
    assert rules == {ARGMAX_RULE: None, "recall>=0.99 (threshold 0.125)": 0.125, "best F1 (threshold 0.438)": 0.4375}
    assert default_rule(rules) == "best F1 (threshold 0.438)"
    assert default_rule(decision_rules({})) == ARGMAX_RULE


def test_classify_matches_predict_and_follows_the_threshold(run_dir, uploads, tmp_path):
    demo = load_demo(str(run_dir))
    assert demo.positive_label == "with_mask" and default_rule(demo.rules).startswith("best F1")
    path = uploads / "with-mask.jpg"
    [row], _ = predict_files(demo.model, demo.processor, [path])
    message, probabilities = demo.classify(str(path), ARGMAX_RULE)
    assert message == f"## {row['label']}\n\nwith-mask.jpg: the most probable class ({row['confidence']:.1%})."
    assert probabilities == {label: row[f"prob_{label}"] for label in demo.labels}
    demo.rules.update({"always": 0.0, "never": 1.01})
    assert demo.classify(str(path), "always")[0].startswith("## with_mask\n")
    assert demo.classify(str(path), "never")[0].startswith("## without_mask\n")
    message, probabilities = demo.classify(str(uploads / "notes.png"), ARGMAX_RULE)
    assert message.startswith("**Not classified.**") and probabilities is None
    data = path.read_bytes()
    for cut in (60, len(data) // 2):  # the file stops inside its headers, then inside the image data
        truncated = tmp_path / "truncated.jpg"
        truncated.write_bytes(data[:cut])
        message, probabilities = demo.classify(str(truncated), ARGMAX_RULE)
        assert message.startswith("**Not classified.** truncated.jpg could not be read ("), (cut, message)
        assert probabilities is None


def test_the_map_shown_is_the_evidence_for_the_class_the_page_shows(run_dir, uploads):
    from facemask.evaluation.explain import explain_images
    from facemask.evaluation.figures import explanation_image

    demo = load_demo(str(run_dir))
    demo.rules.update({"always": 0.0, "never": 1.01})
    path = uploads / "with-mask.jpg"
    image = Image.open(path).convert("RGB")
    for rule, shown in (("always", "with_mask"), ("never", "without_mask")):
        found = explain_images(demo.model, demo.processor, [image], shown)[0]
        expected = np.asarray(explanation_image(found.seen, found.grid))
        assert np.array_equal(np.asarray(demo.explain(str(path), rule)), expected)
    assert demo.explain(str(uploads / "notes.png"), ARGMAX_RULE) is None
    demo.map_method = "none"
    assert demo.explain(str(path), ARGMAX_RULE) is None


def test_scene_tab_finds_draws_and_tables_every_face(run_dir, uploads, tmp_path):
    demo = load_demo(str(run_dir))
    scene, known = compose_scene()
    scene.save(tmp_path / "queue.png")
    message, drawn, table = demo.scene(str(tmp_path / "queue.png"), ARGMAX_RULE)
    assert message.startswith("## 4 faces: ") and drawn.size == scene.size and len(table) == 4
    assert demo.scene_columns[:5] == ["face", "x0", "y0", "x1", "y1"]
    assert all(best_iou(box, [row[1:5] for row in table]) >= 0.5 for box in known)
    labels = [row[demo.scene_columns.index("label")] for row in table]
    assert message == "## 4 faces: " + ", ".join(f"{label} {labels.count(label)}" for label in demo.labels
                                                 if label in labels)
    # A threshold of 0 makes every face the positive class.
    rules = {**demo.rules, "everything": 0.0}
    demo.rules = rules
    _, _, table = demo.scene(str(tmp_path / "queue.png"), "everything")
    assert {row[demo.scene_columns.index("label")] for row in table} == {demo.positive_label or "with_mask"}
    Image.new("RGB", (320, 240), (90, 160, 90)).save(tmp_path / "lawn.png")
    assert demo.scene(str(tmp_path / "lawn.png"), ARGMAX_RULE)[0].startswith("## No face found")
    assert demo.scene(str(uploads / "notes.png"), ARGMAX_RULE) == (
        "**Not analysed.** notes.png is not an image: upload a photo (JPEG, PNG, WebP, BMP, TIFF or GIF).", None, [])


def test_metrics_tab_reads_the_run_folder(run_dir):
    import json

    from facemask.run_folder import read_run

    table = metrics_markdown(read_run(run_dir))
    test = json.loads((run_dir / "test_results.json").read_text())
    row = next(line for line in table.splitlines() if line.startswith("| test |"))
    assert f"{test['test_accuracy']:.4f}" in row and f"{test['test_loss']:.4f}" in row
    assert "| validation |" in table


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening_addresses(port: int) -> set:
    """Local addresses of the LISTEN sockets on `port`, from /proc/net/tcp (IPv4)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def _browser():
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        reason = ("no Chromium or chromedriver on this machine: install them with "
                  "`apt-get update && apt-get install -y chromium chromium-driver` (the README's test command does)")
        if os.environ.get("FACEMASK_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-extensions", "--window-size=1280,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_demo_page_in_headless_chromium(run_dir, uploads, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    log = (tmp_path / "demo.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "facemask", "demo", str(run_dir), "--port", str(port)], cwd=REPO,
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    browser = None
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "demo.log").read_text()[-3000:]
                assert time.time() < deadline, "the demo did not start in 180 s"
                time.sleep(1)
        assert _listening_addresses(port) == {"127.0.0.1"}  # this machine only, by default
        browser = _browser()
        browser.get(url)
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#photo input[type=file]"))

        def upload(path: Path) -> str:
            browser.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(path))
            wait.until(lambda b: path.name in b.find_element(By.ID, "result").text)
            return browser.find_element(By.ID, "result").text

        demo = load_demo(str(run_dir))
        for name in ("with-mask.jpg", "without-mask.png"):
            [row], _ = predict_files(demo.model, demo.processor, [uploads / name], 1,
                                     demo.rules[default_rule(demo.rules)], demo.positive_label)
            text = upload(uploads / name)
            assert text.splitlines()[0] == row["label"], text
            p = row["prob_with_mask"]
            side = "at or above" if p >= demo.rules[default_rule(demo.rules)] else "below"
            assert f"{name}: P(with_mask) = {p:.1%}, {side} the threshold" in text and "best F1" in text, text
            shown = browser.find_element(By.ID, "probabilities").text
            for label in demo.labels:
                assert f"{label}\n{row[f'prob_{label}']:.0%}" in shown, shown
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#map img"))  # its map follows the label
        browser.save_screenshot(str(tmp_path / "demo.png"))
        assert "notes.png is not an image" in upload(uploads / "notes.png")
        assert "56 megapixels" in upload(uploads / "huge.png")
        assert "its first frame was classified" in upload(uploads / "animated.gif")
        assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text
        with Image.open(tmp_path / "demo.png") as shot:
            assert shot.size[0] >= 1000

        # The Scene tab: every face of a photo found, drawn and tabled.
        next(b for b in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == "Scene").click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#scene-photo input[type=file]"))
        scene, known = compose_scene()
        scene.save(tmp_path / "queue.png")
        browser.find_element(By.CSS_SELECTOR, "#scene-photo input[type=file]").send_keys(str(tmp_path / "queue.png"))
        wait.until(lambda b: "4 faces" in b.find_element(By.ID, "scene-result").text)
        rows = "#scene-table div[role=row]"  # Gradio's data grid: one div a row, the header apart
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, rows)) == 4)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#scene-drawn img"))
        cells = [[c.text for c in row.find_elements(By.CSS_SELECTOR, "[role=gridcell]")]
                 for row in browser.find_elements(By.CSS_SELECTOR, rows)]
        header = [c.get_attribute("title") for c in browser.find_elements(By.CSS_SELECTOR, "#scene-table th")]
        assert header[:5] == ["face", "x0", "y0", "x1", "y1"], header
        shown = [[float(v) for v in row[1:5]] for row in cells]
        assert all(best_iou(box, shown) >= 0.5 for box in known), cells
        browser.save_screenshot(str(tmp_path / "scene.png"))
        browser.find_element(By.CSS_SELECTOR, "#scene-photo input[type=file]").send_keys(str(uploads / "notes.png"))
        wait.until(lambda b: "notes.png is not an image" in b.find_element(By.ID, "scene-result").text)
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _hub_env(hub, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="0",
               HF_HUB_DISABLE_TELEMETRY="1", HF_TOKEN=TOKEN, GRADIO_ANALYTICS_ENABLED="False")
    return env


@pytest.mark.slow  # a Space pushed and run from the stand-in Hub: ~25 s
def test_space_is_pushed_and_runs_from_the_model_hub_id(run_dir, uploads, tmp_path):
    with FakeHub() as hub:
        # The Space as an earlier version of this package left it, with a file of the user's.
        hub.stored["tester/demo-space"] = {"facemask/retired.py": b"raise ImportError", "notes.md": b"mine"}
        env = _hub_env(hub, tmp_path)
        for args in (["push", str(run_dir), "--model-id", "tester/demo-model"],
                     ["space", str(run_dir), "--space-id", "tester/demo-space", "--model-id", "tester/demo-model",
                      "--output", str(tmp_path / "written")]):
            done = subprocess.run([sys.executable, "-m", "facemask", *args], cwd=REPO, env=env, capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
        assert hub.repos["tester/demo-space"]["type"] == "space" and hub.repos["tester/demo-space"]["sdk"] == "gradio"
        [commit] = [c for c in hub.commits if c["repo_id"] == "tester/demo-space"]
        files = commit["files"]
        assert commit["repo_type"] == "space"
        assert {"app.py", "README.md", "requirements.txt", "facemask/publish/demo.py"} <= set(files)
        assert files["requirements.txt"] == (REPO / "requirements.txt").read_bytes()
        assert files["facemask/publish/demo.py"] == (REPO / "facemask" / "publish" / "demo.py").read_bytes()
        front = files["README.md"].decode().split("---")[1]
        assert "sdk: gradio" in front and "app_file: app.py" in front and "- tester/demo-model" in front
        assert all(TOKEN.encode() not in content for content in files.values())
        assert commit["deleted"] == ["facemask/retired.py"] and "notes.md" in hub.stored["tester/demo-space"]
        assert (tmp_path / "written" / "app.py").read_bytes() == files["app.py"]

        # The Space as pushed, on its own: its app.py downloads the model by Hub id and classifies.
        space = tmp_path / "space-checkout"
        for name, content in files.items():
            (space / name).parent.mkdir(parents=True, exist_ok=True)
            (space / name).write_bytes(content)
        compose_scene()[0].save(tmp_path / "scene.png")
        script = ("import json, sys, app, facemask\n"
                  "rule = app.page.rules and next(iter(app.page.rules))\n"
                  "message, probabilities = app.page.classify(sys.argv[1], rule)\n"
                  "scene_message, _, table = app.page.scene(sys.argv[2], rule)\n"
                  "print(json.dumps([facemask.__file__, message, probabilities, scene_message, len(table)]))\n")
        env.pop("HF_TOKEN")
        inputs = [str(uploads / "with-mask.jpg"), str(tmp_path / "scene.png")]
        done = subprocess.run([sys.executable, "-c", script, *inputs], cwd=space, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    import json

    module_file, message, probabilities, scene_message, faces = json.loads(done.stdout.splitlines()[-1])
    assert Path(module_file).parent == space / "facemask"
    local = load_demo(str(run_dir))
    assert [message, probabilities] == list(local.classify(str(uploads / "with-mask.jpg"), ARGMAX_RULE))
    assert faces == 4 and scene_message == local.scene(str(tmp_path / "scene.png"), ARGMAX_RULE)[0]
    assert any(method == "GET" and "/tester/demo-model/resolve/" in path for method, path in hub.requests)


def test_a_space_for_a_model_not_on_the_hub_is_refused_before_it_is_created(run_dir, tmp_path):
    with FakeHub() as hub:
        done = subprocess.run([sys.executable, "-m", "facemask", "space", str(run_dir), "--space-id", "tester/early",
                               "--model-id", "tester/not-pushed", "--output", str(tmp_path / "written")],
                              cwd=REPO, env=_hub_env(hub, tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "the Hub has no model tester/not-pushed" in done.stderr
    assert "python -m facemask push RUN_DIR --model-id tester/not-pushed" in done.stderr
    assert "tester/early" not in hub.repos and not hub.commits
    assert not (tmp_path / "written").exists()  # checked before anything is written


def test_space_needs_a_model_id(run_dir, tmp_path, capsys):
    from facemask.__main__ import main

    assert main(["space", str(run_dir), "--space-id", "tester/s", "--no-push", "--output", str(tmp_path / "s")]) == 1
    assert "names no Hub model (hub.model_id): pass --model-id" in capsys.readouterr().err
