"""python -m facemask review: the queue, the journal (nothing lost, nothing written twice), the files
training reads from it, the exports, and the page in a real browser."""

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facemask.__main__ import main
from facemask.config.schema import ConfigError
from facemask.curation.journal import Journal, ReviewBusy, open_journal
from facemask.curation.queue import load_queue
from facemask.curation.review import Review

CLASSES = ("with_mask", "without_mask")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_label_issues_folder(root: Path, model: Path | None = None, images: int = 8) -> dict:
    """A label-issues output folder as label-issues writes it (label_issues.csv most suspect first,
    label_issues.json) over an image folder of drawn noise: half the rows flagged, their suggestion the
    other class. `model`, a run folder, stands for every fold model (their maps)."""
    data = root / "data"
    rng = np.random.default_rng(0)
    rows, truth = [], {}
    for k in range(images):
        given = CLASSES[k % 2]
        path = data / "train" / given / f"img{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        flagged = k < images // 2
        suggested = CLASSES[1 - k % 2] if flagged else given
        rows.append({"file": f"train/{given}/img{k}.png", "given_label": given, "suggested_label": suggested,
                     "label_quality": round(0.05 + k / 20, 3), "is_issue": flagged, "sha256": _digest(path),
                     "suggested_probability": 0.9 if flagged else 0.7, "fold": 0})
        truth[_digest(path)] = suggested  # the simulated truth: every flag is right
    out = root / "li"
    out.mkdir()
    with (out / "label_issues.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "label_issues.json").write_text(json.dumps({
        "labels": list(CLASSES), "data_folder": str(data.resolve()),
        "fold_runs": [str(model) if model else "fold-0"]}))
    return {"folder": out, "data": data, "rows": rows, "truth": truth}


@pytest.fixture
def flagged(tmp_path):
    return make_label_issues_folder(tmp_path)


def test_queue_is_label_issues_order_with_files_digests_and_suggestions(flagged):
    queue = load_queue(flagged["folder"])
    assert queue.kind == "label-issues" and queue.labels == list(CLASSES)
    assert [item.file for item in queue.items] == [row["file"] for row in flagged["rows"]]
    first = queue.items[0]
    assert first.path == flagged["data"].resolve() / first.file and first.path.is_file()
    assert first.flagged and first.suggested_label == "without_mask" and first.probability == 0.9


def test_a_folder_that_is_not_an_output_or_an_old_csv_gets_a_clear_error(flagged, tmp_path):
    with pytest.raises(ConfigError, match="neither label_issues.csv .* nor to_label.csv"):
        load_queue(tmp_path)
    csv_path = flagged["folder"] / "label_issues.csv"
    rows = list(csv.DictReader(csv_path.open()))
    with csv_path.open("w", newline="") as f:  # an older label-issues: no digests
        writer = csv.DictWriter(f, fieldnames=["file", "given_label", "suggested_label", "label_quality", "is_issue"])
        writer.writeheader()
        writer.writerows([{k: r[k] for k in writer.fieldnames} for r in rows])
    with pytest.raises(ConfigError, match="no column sha256.*run label-issues again"):
        load_queue(flagged["folder"])


def _lines(folder: Path) -> list:
    return [json.loads(line) for line in (folder / "review.jsonl").read_text().splitlines() if line.strip()]


def test_decisions_are_journalled_at_once_and_resume_where_they_stopped(flagged):
    items = load_queue(flagged["folder"]).items
    with open_journal(flagged["folder"]) as journal:
        assert journal.current() == items[0]
        made = journal.record(items[0].sha256, "label", "without_mask")
        assert made.changed and _lines(flagged["folder"])[-1]["decision"] == "label"  # on disk before it returns
        journal.record(items[1].sha256, "keep")
        journal.record(items[2].sha256, "exclude")
        journal.record(items[3].sha256, "skip")
        assert journal.record(items[0].sha256, "label", "with_mask") is None  # decided: nothing written
        assert len(_lines(flagged["folder"])) == 4
        assert journal.counts() == {"images": 8, "reviewed": 3, "changed": 1, "excluded": 1, "skipped": 1,
                                    "remaining": 5}  # a skipped image remains to be decided
    line = _lines(flagged["folder"])[0]
    assert set(line) == {"seq", "time", "file", "sha256", "given_label", "decision", "label"}
    assert (line["file"], line["sha256"], line["given_label"], line["label"]) == (
        items[0].file, items[0].sha256, "with_mask", "without_mask")
    with open_journal(flagged["folder"]) as journal:  # a restart replays the journal
        assert journal.current() == items[4]
        assert journal.counts()["changed"] == 1


def test_undo_takes_back_the_last_decision_only_and_is_journalled(flagged):
    items = load_queue(flagged["folder"]).items
    with open_journal(flagged["folder"]) as journal:
        first = journal.record(items[0].sha256, "label", "without_mask")
        second = journal.record(items[1].sha256, "exclude")
        assert journal.undo(expected=first.seq) is None  # not the last one standing
        assert journal.undo() == second and journal.current() == items[1]
        assert journal.undo() == first and journal.current() == items[0]
        assert journal.undo() is None
        journal.record(items[0].sha256, "keep")
    assert [line["decision"] for line in _lines(flagged["folder"])] == ["label", "exclude", "undo", "undo", "keep"]
    with open_journal(flagged["folder"]) as journal:
        assert [d.decision for d in journal.standing] == ["keep"] and journal.current() == items[1]


def test_a_half_written_line_is_passed_over_and_nothing_after_it_is_lost(flagged):
    items = load_queue(flagged["folder"]).items
    with open_journal(flagged["folder"]) as journal:
        journal.record(items[0].sha256, "label", "without_mask")
    with (flagged["folder"] / "review.jsonl").open("a") as f:
        f.write('{"seq": 2, "time": "2026-12-07T00:00:00", "file": "tr')  # what a kill mid-write leaves
    with open_journal(flagged["folder"]) as journal:
        assert journal.damaged == 1 and journal.current() == items[1]
        journal.record(items[1].sha256, "keep")
    with open_journal(flagged["folder"]) as journal:
        assert [d.sha256 for d in journal.standing] == [items[0].sha256, items[1].sha256]


def test_a_second_review_of_the_same_folder_is_refused(flagged):
    with open_journal(flagged["folder"]):
        with pytest.raises(ReviewBusy, match="another review is open"):
            open_journal(flagged["folder"])
        # ... by another process too (the lock is the kernel's, on the file)
        probe = subprocess.run([sys.executable, "-c", "import sys; from facemask.curation.journal import open_journal;"
                                f"open_journal({str(flagged['folder'])!r})"], capture_output=True, text=True)
        assert probe.returncode != 0 and "another review is open" in probe.stderr


def test_corrections_and_exclusions_follow_every_decision_and_training_reads_them(flagged):
    from facemask.data.corrections import read_corrections
    from facemask.data.exclude import read_exclude_list

    items = load_queue(flagged["folder"]).items
    with open_journal(flagged["folder"]) as journal:
        journal.record(items[0].sha256, "label", "without_mask")
        journal.record(items[1].sha256, "keep")
        journal.record(items[2].sha256, "exclude")
        journal.record(items[3].sha256, "skip")
        corrections = read_corrections(flagged["folder"] / "corrections.csv")
        assert [(c.file, c.sha256, c.given_label, c.label) for c in corrections.rows] == [
            (items[0].file, items[0].sha256, "with_mask", "without_mask"),
            (items[1].file, items[1].sha256, "without_mask", "without_mask")]
        header = (flagged["folder"] / "corrections.csv").read_text().splitlines()[0]
        assert header == "file,sha256,given_label,label"
        excluded = read_exclude_list(flagged["folder"] / "review_exclude.txt")
        assert excluded.digests == {items[2].sha256} and excluded.not_found == 0
        journal.undo()  # the skip
        journal.undo()  # the exclusion
        assert read_exclude_list(flagged["folder"] / "review_exclude.txt").digests == frozenset()
    # label-issues' own blind list beside it is not touched
    assert not (flagged["folder"] / "exclude.txt").exists()


def test_the_page_state_refuses_a_stale_tab_and_a_path_from_the_browser(flagged):
    queue = load_queue(flagged["folder"])
    items = queue.items
    with Journal(queue) as journal:
        review = Review(journal, "none")
        progress, image, _, text, shown, _ = review.view()
        assert shown == items[0].sha256 and image.size == (40, 40) and items[0].file in text
        assert "0 reviewed" in progress and "8 remaining" in progress
        tab_a, tab_b = shown, shown  # two tabs on the same image
        _, _, _, _, shown, _ = review.act(tab_a, "label:without_mask")
        assert shown == items[1].sha256
        review.act(tab_b, "label:with_mask")  # the second tab's key on the image already decided
        assert len(journal.standing) == 1 and journal.standing[0].label == "without_mask"
        review.act(tab_b, "undo")  # a stale tab does not undo either
        assert len(journal.standing) == 1
        review.act(str(flagged["data"] / "train" / "with_mask" / "img2.png"), "exclude")  # a path: not a digest
        assert len(journal.standing) == 1
        _, _, _, _, shown, _ = review.act(items[1].sha256, "undo")
        assert shown == items[0].sha256 and not journal.standing
    assert len(_lines(flagged["folder"])) == 2  # the decision and its undo


def test_the_map_comes_from_the_fold_model_and_is_made_ahead(tiny_run, tmp_path):
    from facemask.evaluation.explain import explain_images
    from facemask.evaluation.loading import load_model

    made = make_label_issues_folder(tmp_path, model=tiny_run("vit").out)
    queue = load_queue(made["folder"])
    with Journal(queue) as journal:
        review = Review(journal, "ablation")
        _, image, shown_map, _, _, _ = review.view()
        assert shown_map is not None and shown_map.size[0] > 0
        # The next images' maps were started while this one is shown.
        assert queue.items[1].sha256 in review.maps._done and queue.items[2].sha256 in review.maps._done
    model, processor = load_model(str(tiny_run("vit").out))
    with Image.open(queue.items[0].path) as opened:
        expected = explain_images(model, processor, [opened.convert("RGB")],
                                  [model.config.label2id["without_mask"]], "ablation")[0]
    from facemask.evaluation.figures import explanation_image

    # The map shown is that model's evidence for the suggested class (not the given one).
    assert np.array_equal(np.asarray(shown_map), np.asarray(explanation_image(expected.seen, expected.grid)))


def test_imagefolder_export_is_read_by_datasets_with_the_reviewed_labels(flagged, tmp_path, capsys):
    import datasets

    items = load_queue(flagged["folder"]).items
    with open_journal(flagged["folder"]) as journal:
        journal.record(items[0].sha256, "label", "without_mask")
        journal.record(items[1].sha256, "keep")
        journal.record(items[2].sha256, "exclude")
    assert main(["review", str(flagged["folder"]), "--export", "imagefolder", "--output", str(tmp_path / "ex")]) == 0
    ds = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "ex" / "imagefolder"), split="train")
    assert len(ds) == 2
    by_digest = {row["sha256"]: row for row in ds}
    assert by_digest[items[0].sha256]["label"] == "without_mask"
    assert by_digest[items[1].sha256]["label"] == "without_mask" and by_digest[items[1].sha256]["decision"] == "keep"
    assert ds[0]["image"].size == (40, 40)
    # The user's images are where they were, unchanged.
    assert all(_digest(item.path) == item.sha256 for item in items)
    # A second export is refused, not mixed into the first.
    assert main(["review", str(flagged["folder"]), "--export", "imagefolder", "--output", str(tmp_path / "ex")]) == 2
    assert "exists (an earlier export)" in capsys.readouterr().err


def test_label_studio_export_follows_its_documented_task_format(flagged, tmp_path):
    import xml.etree.ElementTree as ET

    items = load_queue(flagged["folder"]).items
    with open_journal(flagged["folder"]) as journal:
        journal.record(items[0].sha256, "label", "without_mask")
    assert main(["review", str(flagged["folder"]), "--export", "label-studio", "--output", str(tmp_path)]) == 0
    tasks = json.loads((tmp_path / "label_studio_tasks.json").read_text())
    config = ET.fromstring((tmp_path / "label_studio_config.xml").read_text())
    image, choices = config.find("Image"), config.find("Choices")
    assert image.get("value") == "$image" and choices.get("toName") == image.get("name")
    assert [c.get("value") for c in choices.findall("Choice")] == list(CLASSES)
    # The flagged images (the first half), and the one decided.
    assert [task["data"]["sha256"] for task in tasks] == [item.sha256 for item in items if item.flagged]
    for task, item in zip(tasks, items):
        # https://labelstud.io/guide/predictions: data holds the object's value; each prediction's
        # result names the control (from_name) and the object (to_name) of the config.
        assert task["data"]["image"] == f"/data/local-files/?d={item.file}" and task["data"]["sha256"] == item.sha256
        [prediction] = task["predictions"]
        [result] = prediction["result"]
        assert (result["from_name"], result["to_name"], result["type"]) == (choices.get("name"), image.get("name"),
                                                                             "choices")
        assert result["value"]["choices"] == [item.suggested_label] and prediction["score"] == item.probability
    assert tasks[0]["annotations"][0]["result"][0]["value"]["choices"] == ["without_mask"]
    assert "annotations" not in tasks[1]


def _start(folder: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "-m", "facemask", "review", str(folder), "--port", str(port)],
                              env=env, stdout=log.open("a"), stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
            return server
        except OSError:
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "the review page did not start in 180 s"
            time.sleep(0.5)


@pytest.mark.slow  # two servers started, a browser: ~40 s
def test_review_page_in_headless_chromium_keys_journal_restart_undo_and_two_tabs(tiny_run, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from test_demo import _browser, _free_port, _listening_addresses

    made = make_label_issues_folder(tmp_path, model=tiny_run("vit").out)
    folder, items = made["folder"], load_queue(made["folder"]).items
    log = tmp_path / "review.log"
    port = _free_port()
    server = _start(folder, port, log)
    browser = None
    try:
        assert _listening_addresses(port) == {"127.0.0.1"}  # this machine only, by default
        browser = _browser()
        wait = WebDriverWait(browser, 60)

        def shows(k: int) -> None:
            wait.until(lambda b: items[k].file in b.find_element(By.ID, "info").text)

        def press(key: str, lines: int) -> None:
            ActionChains(browser).send_keys(key).perform()
            wait.until(lambda b: (folder / "review.jsonl").exists() and len(_lines(folder)) == lines)

        browser.get(f"http://127.0.0.1:{port}/")
        shows(0)
        assert "0 reviewed" in browser.find_element(By.ID, "progress").text
        assert "Suggested: without_mask" in browser.find_element(By.ID, "info").text
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#map img"))  # the fold model's map
        press("2", 1)  # the second class: without_mask
        shows(1)
        press("a", 2)  # keep the given label
        shows(2)
        press("x", 3)  # exclude
        shows(3)
        assert [(line["decision"], line["label"]) for line in _lines(folder)] == [
            ("label", "without_mask"), ("keep", "without_mask"), ("exclude", None)]
        wait.until(lambda b: "3 reviewed" in b.find_element(By.ID, "progress").text
                   and "1 labels changed" in b.find_element(By.ID, "progress").text)
        press("u", 4)  # undo: the exclusion is taken back, its image shown again
        shows(2)
        assert _lines(folder)[-1] == {**_lines(folder)[-1], "decision": "undo", "undoes": 3}
        assert items[2].sha256 not in (folder / "review_exclude.txt").read_text()

        # A killed server loses nothing: a new one resumes at the first undecided image.
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        port = _free_port()
        server = _start(folder, port, log)
        browser.get(f"http://127.0.0.1:{port}/")
        shows(2)

        # Two tabs on the same image: the second tab's key writes nothing.
        first = browser.current_window_handle
        browser.switch_to.new_window("tab")
        browser.get(f"http://127.0.0.1:{port}/")
        shows(2)
        second = browser.current_window_handle
        browser.switch_to.window(first)
        press("1", 5)
        shows(3)
        browser.switch_to.window(second)
        ActionChains(browser).send_keys("2").perform()
        shows(3)  # refreshed to the next image, not decided twice
        time.sleep(1)
        assert len(_lines(folder)) == 5 and _lines(folder)[-1]["label"] == "with_mask"
        assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text
        assert all(_digest(item.path) == item.sha256 for item in items)  # the images untouched
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        server.wait(timeout=30)


def test_copies_the_audit_found_are_shown_beside_the_image(flagged):
    folder, data = flagged["folder"], flagged["data"].resolve()
    rows = flagged["rows"]
    fold = folder / "fold-0"
    fold.mkdir()

    def side(k: int) -> dict:  # the audit names files as the dataset holds them (absolute for a folder)
        return {"split": "train", "file": str(data / rows[k]["file"]), "label": rows[k]["given_label"]}

    (fold / "data_audit.json").write_text(json.dumps({
        "duplicates_within_splits": [{"a": side(0), "b": side(4), "distance": 2}],
        "label_conflicts": [{"a": side(1), "b": side(5), "distance": 0}], "leaks": []}))
    queue = load_queue(folder)
    items = queue.items
    assert [(c["file"], c["distance"]) for c in queue.copies[items[0].sha256]] == [(str(data / rows[4]["file"]), 2)]
    assert [c["label"] for c in queue.copies[items[5].sha256]] == [rows[1]["given_label"]]
    assert items[2].sha256 not in queue.copies
    with Journal(queue) as journal:
        review = Review(journal, "none")
        _, _, _, text, _, copies = review.view()
        assert "img4.png [with_mask] at distance 2" in text
        assert len(copies) == 1 and copies[0][0].size == (40, 40) and "distance 2" in copies[0][1]


def test_decisions_outlive_a_new_label_issues_run_that_no_longer_lists_the_image(flagged):
    from facemask.data.corrections import read_corrections

    items = load_queue(flagged["folder"]).items
    with open_journal(flagged["folder"]) as journal:
        journal.record(items[0].sha256, "label", "without_mask")
        journal.record(items[1].sha256, "exclude")
    csv_path = flagged["folder"] / "label_issues.csv"
    rows = list(csv.DictReader(csv_path.open()))
    with csv_path.open("w", newline="") as f:  # label-issues run again: image 0 and 1 no longer listed
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[2:])
    with open_journal(flagged["folder"]) as journal:
        assert journal.current() == items[2] and journal.counts()["remaining"] == 6
        journal.record(items[2].sha256, "keep")
        assert {c.sha256 for c in read_corrections(flagged["folder"] / "corrections.csv").rows} == {
            items[0].sha256, items[2].sha256}
        assert "sha256:" + items[1].sha256 in (flagged["folder"] / "review_exclude.txt").read_text()


def test_a_select_output_is_reviewed_without_given_labels_and_its_labels_join_training(tiny_run, synth_folder,
                                                                                      tmp_path):
    """The loop closed: select picks pool images, a person labels them on the page's state,
    corrections.csv names them by absolute path and digest with no given label, and a run given
    data.corrections trains on them (run_info.json counts them) with nothing else to set."""
    import shutil

    import train
    from conftest import tiny_config

    run = tmp_path / "run"
    shutil.copytree(tiny_run().out, run)
    assert main(["select", str(run), str(synth_folder), "--budget", "5", "--strategy", "margin",
                 "--output", str(tmp_path / "picked")]) == 0
    queue = load_queue(tmp_path / "picked")
    assert queue.kind == "select" and len(queue.items) == 5 and queue.model == str(run.resolve())
    assert queue.labels == list(CLASSES)  # the model's classes, in its order
    assert all(item.given_label is None and item.path.is_absolute() for item in queue.items)
    with Journal(queue) as journal:
        review = Review(journal, "none")
        _, image, _, text, shown, _ = review.view()
        assert "Given label: none" in text and "`a` keep" not in text
        review.act(shown, "keep")  # no given label to keep: nothing written
        assert not journal.standing
        for item in queue.items[:4]:
            review.act(item.sha256, f"label:{item.path.parent.name}")  # the drawn set's folder is the truth
        review.act(queue.items[4].sha256, "exclude")
    rows = list(csv.DictReader((tmp_path / "picked" / "corrections.csv").open()))
    assert [(r["file"], r["given_label"]) for r in rows] == [(str(item.path), "") for item in queue.items[:4]]

    data = {"synthetic": True, "synthetic_num_images": 40, "synthetic_image_size": 32, "test_split": 0.25}
    data["corrections"] = str(tmp_path / "picked" / "corrections.csv")
    train.main([str(tiny_config(tmp_path / "t", data=data, training={"max_steps": 1}))])
    record = json.loads((tmp_path / "t" / "out" / "run_info.json").read_text())["data"]["corrections"]
    assert record["added"] == 4 and record["rows"] == 4 and record["unmatched"] == 0


def test_a_skipped_image_comes_back_once_the_others_are_decided(flagged):
    items = load_queue(flagged["folder"]).items
    with open_journal(flagged["folder"]) as journal:
        journal.record(items[0].sha256, "skip")
        assert journal.record(items[0].sha256, "skip") is None  # skipped already: nothing written
        for item in items[1:]:
            journal.record(item.sha256, "keep")
        assert journal.current() == items[0] and journal.counts()["remaining"] == 1
        review = Review(journal, "none")
        _, _, _, text, shown, _ = review.view()
        assert shown == items[0].sha256 and "Skipped earlier" in text
        _, _, _, _, shown, _ = review.act(shown, "label:without_mask")
        assert shown == "" and journal.counts()["remaining"] == 0 and journal.counts()["changed"] == 1
        review.act("", "undo")  # the label taken back: the skip stands again
        assert journal.decided[items[0].sha256].decision == "skip" and journal.current() == items[0]


def test_exact_copies_under_two_labels_are_one_image_and_keep_is_refused(flagged):
    import shutil

    data, rows = flagged["data"], flagged["rows"]
    shutil.copy(data / rows[0]["file"], data / "train" / "without_mask" / "copy0.png")  # a label conflict
    copy = {**rows[0], "file": "train/without_mask/copy0.png", "given_label": "without_mask",
            "suggested_label": "without_mask", "is_issue": False}
    with (flagged["folder"] / "label_issues.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([rows[0], *rows[1:4], copy, *rows[4:]])
    queue = load_queue(flagged["folder"])
    assert len(queue.items) == 8 and queue.items[0].conflict and queue.items[0].file == rows[0]["file"]
    with Journal(queue) as journal:
        review = Review(journal, "none")
        _, _, _, text, shown, _ = review.view()
        assert "listed under other labels" in text
        review.act(shown, "keep")
        assert not journal.standing  # no one label to keep
        with pytest.raises(ValueError, match="choose its class"):
            journal.record(shown, "keep")
        review.act(shown, "label:with_mask")
        assert journal.standing[0].file == rows[0]["file"] and journal.standing[0].label == "with_mask"


def test_a_kill_between_a_decision_and_the_files_is_repaired_when_the_journal_opens(flagged, monkeypatch):
    from facemask.data.corrections import read_corrections

    items = load_queue(flagged["folder"]).items
    with open_journal(flagged["folder"]) as journal:
        journal.record(items[0].sha256, "label", "without_mask")
        monkeypatch.setattr(Journal, "write_outputs", lambda self: None)  # the process dies here
        journal.record(items[1].sha256, "keep")
        monkeypatch.undo()
    assert len(read_corrections(flagged["folder"] / "corrections.csv").rows) == 1  # a decision behind
    with open_journal(flagged["folder"]):
        assert len(read_corrections(flagged["folder"] / "corrections.csv").rows) == 2


def test_an_export_reads_beside_an_open_page_and_creates_nothing(flagged, tmp_path):
    with open_journal(flagged["folder"]) as journal:  # the page is open
        journal.record(load_queue(flagged["folder"]).items[0].sha256, "label", "without_mask")
        assert main(["review", str(flagged["folder"]), "--export", "label-studio", "--output", str(tmp_path)]) == 0
    tasks = json.loads((tmp_path / "label_studio_tasks.json").read_text())
    assert tasks[0]["annotations"][0]["result"][0]["value"]["choices"] == ["without_mask"]
    fresh = make_label_issues_folder(tmp_path / "fresh")
    assert main(["review", str(fresh["folder"]), "--export", "label-studio", "--output", str(tmp_path / "x")]) == 0
    assert not (fresh["folder"] / "review.jsonl").exists()


def test_the_page_keeps_the_maps_of_the_images_ahead_only(tiny_run, tmp_path):
    made = make_label_issues_folder(tmp_path, model=tiny_run("vit").out)
    queue = load_queue(made["folder"])
    with Journal(queue) as journal:
        review = Review(journal, "ablation")
        shown = review.view()[4]
        for _ in range(4):
            shown = review.act(shown, "skip")[4]
        assert set(review.maps._done) == {item.sha256 for item in queue.items[4:7]}
