"""One owner for every output name: run_folder.py names what a run writes, and everything that reads,
copies, pushes or documents a run folder follows it."""

import json

from conftest import REPO, tiny_config

import train
from facemask import run_folder
from facemask.publish.hub import files_to_push


def test_docs_outputs_table_is_the_registry():
    page = (REPO / "docs" / "outputs.md").read_text(encoding="utf-8")
    start = page.index("<!-- outputs table")
    table = page[page.index("\n", start) + 1:page.index("<!-- end of outputs table -->")]
    assert table == run_folder.outputs_table()


def test_a_run_folder_holds_only_registered_names_and_each_split_has_its_files(tmp_path):
    out = tmp_path / "out"
    train.main([str(tiny_config(tmp_path)), "training.save_strategy=steps", "training.save_steps=2",
                "data.robustness=true"])
    assert run_folder.unknown_files(out) == []
    for prefix in ("eval", "test"):
        present = {o.name for o in run_folder.SPLIT_OUTPUTS if o.path(out, prefix).is_file()}
        # Every per-split file but the galleries, which exist only when images were misclassified or
        # occluded faces flipped, and the shortcut and robustness tests, which run on the split that
        # reports the headline number (test).
        expected = {o.name for o in run_folder.SPLIT_OUTPUTS} - {run_folder.ERRORS_FIGURE.name,
                                                                 run_folder.OCCLUSION_FIGURE.name}
        if prefix == "eval":
            expected -= {run_folder.SHORTCUT_TEST.name, run_folder.ROBUSTNESS.name, run_folder.ROBUSTNESS_FIGURE.name}
        assert expected <= present, expected - present
        matrix = json.loads((out / f"{prefix}_confusion_matrix.json").read_text())["matrix"]
        rows = (out / f"{prefix}_predictions.csv").read_text().splitlines()
        assert len(rows) - 1 == sum(map(sum, matrix)) > 0
    for output in (run_folder.CONFIG, run_folder.WEIGHTS, run_folder.PROCESSOR, run_folder.EXPERIMENT,
                   run_folder.RUN_INFO, run_folder.TRAIN_LOG, run_folder.STATE, run_folder.ALL_RESULTS,
                   run_folder.AUDIT_JSON, run_folder.AUDIT_MD, run_folder.OPERATING_POINTS, run_folder.CARD):
        assert output.path(out).is_file(), output.name
    assert any(out.glob(run_folder.CHECKPOINTS.name))
    # A push sends the model and what describes it, and nothing else: named here one by one.
    pushed = {p.relative_to(out).as_posix() for p in files_to_push(out)}
    expected = {"config.json", "model.safetensors", "preprocessor_config.json", "experiment.yaml", "run_info.json",
                "trainer_state.json", "all_results.json", "train_results.json", "data_audit.json", "data_audit.md",
                "operating_points.json", "README.md", "test_shortcut_test.json", "test_robustness.json",
                "test_robustness.png"}
    expected |= {f"{prefix}_{suffix}" for prefix in ("eval", "test") for suffix in (
        "results.json", "confusion_matrix.json", "confusion_matrix.png", "roc_curve.png", "slices.json",
        "calibration.json", "calibration.png", "intervals.json", "errors.json")}
    expected |= {name for name in ("training_curves.png", "eval_errors.png", "test_errors.png", "test_occlusion.png")
                 if (out / name).is_file()}
    assert pushed == expected
    # A file no writer names is reported.
    (out / "notes.txt").write_text("mine")
    assert run_folder.unknown_files(out) == ["notes.txt"]


def test_the_reader_reads_every_per_split_json_the_evaluation_writes(tmp_path):
    run_folder.write_json(run_folder.CONFUSION.path(tmp_path, "holdout"), {"labels": ["a", "b"], "matrix": [[1, 0], [0, 1]]})
    run_folder.write_json(run_folder.RESULTS.path(tmp_path, "holdout"), {"holdout_accuracy": 1.0})
    run_folder.write_json(run_folder.ALL_RESULTS.path(tmp_path), {"holdout_accuracy": 1.0})
    run = run_folder.read_run(tmp_path)
    assert list(run.results) == ["holdout"] and run.confusion["holdout"]["labels"] == ["a", "b"]
