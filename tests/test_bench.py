"""The benchmarks' own code paths, run small on CPU so they do not rot between measurements."""

import csv
import importlib.util
import json
import sys

import pytest
from conftest import REPO


def load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_bench_runs_its_code_path_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    assert load("gpu").main(["--tiny", "--steps", "1", "--repeats", "2", "--compile", "no", "--batch", "4",
                             "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(r["model"], r["batch"], r["compiled"]) for r in result["rows"]] == [("vit-base", 4, False),
                                                                                 ("beit-base", 4, False)]
    for row in result["rows"]:
        for key in ("train_images_per_s", "inference_images_per_s"):
            figure = row[key]
            assert 0 < figure["min"] <= figure["median"] <= figure["max"]
        assert row["dtype"] == "float32" and row["side"] == 32


def test_audit_bench_compares_both_searches(tmp_path):
    out = tmp_path / "audit.json"
    assert load("audit").main(["--sizes", "3000", "--repeats", "1", "--output", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["same_pairs"] is True and row["pairs"] > 0 and len(row["all_pairs_s"]) == 1


def test_cache_check_bench_times_the_check_against_the_build(tmp_path, capsys):
    out = tmp_path / "cache_check.json"
    assert load("cache_check").main(["--sets", "60x32x1.0", "--repeats", "2", "--output", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["images"] == 60 and row["side"] == 32 and row["cache_mb"] > 60 * 32 * 32 * 3 / 1e6
    assert len(row["build_s"]) == len(row["check_from_disk_s"]) == 2 and all(s > 0 for s in row["check_in_memory_s"])
    assert row["checksum_gb_per_s"]["xxh3_64 (xxhash, chosen)"] > 0
    assert "of the build" in capsys.readouterr().out


@pytest.mark.slow
def test_pipeline_bench_repeats_and_reports_median_and_spread(tmp_path, capsys):
    out = tmp_path / "pipeline.json"
    assert load("pipeline").main(["--sizes", "32", "--images", "16", "--copies", "2", "--repeats", "2",
                                  "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["files"] == 32 and report["repeats"] == 2
    row = report["sizes"]["32"]
    for name in ("cached", "per_image", "input_cached", "input_per_image"):
        assert len(row[name]) == 2 and all(r["peak_rss_mb"] > 0 for r in row[name])
    table = capsys.readouterr().out
    assert "median (min-max) over 2 repeats" in table and "16 distinct drawn images, each under 2 names" in table
    ratios = [r["train_images_per_s"] / r["model_train_images_per_s"] for r in row["cached"]]
    assert f"{min(ratios):.3f}-{max(ratios):.3f}) of (1)" in table


def test_accuracy_bench_sees_where_the_pipelines_differ(tmp_path):
    """bench/accuracy.py's pixel comparison: the cached crops (stored at 8/7 of the model side)
    lose detail that the per-image path, cropping the decoded photo, keeps."""
    sys.path.insert(0, str(REPO / "bench"))
    from accuracy import fidelity
    from pipeline import make_folder

    make_folder(tmp_path / "photos" / "train", 6, detail=96)
    seen = fidelity(tmp_path / "photos", 32, [0.08, 1.0], 6)
    assert seen["cache_side"] == 37
    for path_name in ("cache", "per_image"):
        # Both resize the decoded photo as the example does, after the decoder's shrink by a whole
        # factor (kept at twice the model's side or more): within 2.5 of 255 levels on average.
        assert 0 <= seen[path_name]["evaluation"] < 2.5
    cached = [v for k, v in seen["cache"].items() if k.startswith("crop") and v is not None]
    per_image = [v for k, v in seen["per_image"].items() if k.startswith("crop") and v is not None]
    assert sum(cached) / len(cached) > sum(per_image) / len(per_image) > 0


@pytest.mark.slow  # torch.compile of even a tiny model takes the better part of a minute on 2 cores
def test_inference_bench_times_all_four_backends(tmp_path, capsys):
    out = tmp_path / "inference.json"
    results = load("inference").main(["--tiny", "--models", "vit-base", "--batches", "1", "3", "--repeats", "2",
                                      "--iters", "1", "--warmup", "1", "--output", str(out)])
    assert json.loads(out.read_text()) == results
    assert list(results) == ["vit-base batch 1", "vit-base batch 3"]
    for figures in results.values():
        assert list(figures) == ["eager", "compile", "onnx", "onnx-int8"]
        assert figures["eager"]["ratio_to_eager"] == 1.0
        for name, f in figures.items():
            assert 0 < f["min"] <= f["images_per_s"] <= f["max"], name
            assert f["ratio_min"] <= f["ratio_to_eager"] <= f["ratio_max"], name
        assert figures["onnx"]["max_abs_logit_diff"] < 1e-3 and figures["compile"]["max_abs_logit_diff"] < 1e-3
    assert "onnx-int8" in capsys.readouterr().out


def test_detect_bench_times_the_detector_and_each_classifier_arm(tmp_path, capsys):
    out = tmp_path / "detect.json"
    results = load("detect").main(["--models", "tiny", "--backends", "torch", "onnx-int8", "--repeats", "2",
                                   "--iters", "1", "--output", str(out)])
    assert json.loads(out.read_text()) == results
    arms = ["detector only", "+ tiny ViT torch", "+ tiny ViT onnx-int8"]
    assert list(results) == [f"{size} {arm}" for size in ("640x480", "1920x1080") for arm in arms]
    for name, f in results.items():
        assert f["faces"] == (4 if name.startswith("640") else 6), name  # every pasted face found
        assert 0 < f["min"] <= f["images_per_s"] <= f["max"], name
        assert f["faces_per_s"] == pytest.approx(f["images_per_s"] * f["faces"])
    assert "faces/s" in capsys.readouterr().out


def test_bootstrap_bench_times_the_intervals(capsys):
    results = load("bootstrap").main(["--images", "500", "--resamples", "100", "1000", "--repeats", "2"])
    assert list(results) == ["100", "1000"]
    for figures in results.values():
        assert 0 < figures["min"] <= figures["seconds"] <= figures["max"]
    assert "one thread" in capsys.readouterr().out


def test_lora_bench_measures_each_mode_in_its_own_process(capsys):
    import argparse

    runs = load("lora").cost(argparse.Namespace(batch=2, steps=1, repeats=1, tiny=True))
    full, lora = runs["full"][0], runs["lora"][0]
    assert full["trainable_parameters"] == full["total_parameters"]
    assert 0 < lora["trainable_parameters"] < 0.5 * lora["total_parameters"]
    assert all(r["step_s"] > 0 and r["peak_rss_mb"] > r["peak_above_imports_mb"] >= 0 for r in (full, lora))
    assert "full / LoRA, paired within each repeat" in capsys.readouterr().out


def test_distill_bench_times_teacher_and_student_on_both_backends(evaluated_run, capsys):
    import argparse

    results = load("distill").speed(argparse.Namespace(repeats=2, iters=1), {"teacher": evaluated_run,
                                                                             "student": evaluated_run})
    assert list(results) == ["batch 1", "batch 32"]
    for rates in results.values():
        assert set(rates) == {"teacher eager", "teacher onnx-int8", "student eager", "student onnx-int8"}
        assert all(rate > 0 for rate in rates.values())
    assert "student / teacher, onnx-int8" in capsys.readouterr().out


@pytest.mark.slow
def test_step_regression_bench_alternates_commits_and_reports_ratios(capsys):
    # HEAD against itself: the mechanics (worktree, warm-up, alternation, ratios), small and short.
    assert load("step_regression").main(["--base", "HEAD", "--repeats", "2", "--epochs", "1", "--set",
                                         "data.synthetic_num_images=300"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("HEAD             run") == 2 and printed.count("now (") == 2
    assert "train_runtime  median" in printed and "wall           median" in printed


@pytest.mark.slow
def test_explain_bench_checks_both_methods_and_times_them(tmp_path, capsys):
    report = load("explain").main(["--seeds", "0", "--archs", "vit", "--images", "6", "--tiny", "--repeats", "1",
                                   "--runs", str(tmp_path / "runs")])
    evidence, baselines = report["evidence"]["vit"][0], report["baselines"]["vit"][0]
    assert set(evidence) == {"ablation", "gradcam"} and set(baselines) == {"grey", "blur"}
    for row in [*evidence.values(), *baselines.values()]:
        assert row["images"] == 6
        # The check's similarity takes, image by image, the larger of the signed and the absolute
        # maps' rank correlations (in size), so its mean is at least either mean's size.
        assert row["similarity"] >= max(abs(row["rank_correlation"]), abs(row["absolute_rank_correlation"])) - 1e-9
        if row["correct_with_mask"]:  # the drawn mask lies inside the drawn face; a share is a share
            assert 0 < row["mask_area"] < row["face_area"] < 1 and 0 <= row["mask_share"] <= 1
    # Another ablation baseline makes other maps of the same images.
    assert baselines["grey"]["similarity"] != evidence["ablation"]["similarity"]
    for model in ("quickstart", "vit-base-224"):
        assert all(seconds > 0 for seconds in report["cost"][model].values())
    printed = capsys.readouterr().out
    assert "| ablation |" in printed and "error gallery: maps of 16 images add" in printed


def test_label_issues_bench_flips_labels_and_scores_the_flags_against_them(tmp_path):
    bench = load("label_issues")
    clean = bench.draw(tmp_path / "clean", 20, seed=0)
    train = tmp_path / "noise-20" / "train"
    moved = bench.flip(clean, train, 0.2)
    assert len(moved) == 4 and len(list(train.glob("*/*"))) == 20
    for name in moved:  # each moved file sits in the other class's folder now, and only there
        other = "without_mask" if name.startswith("with_mask/") else "with_mask"
        assert (train / name).is_file() and not (clean / name).is_file()
        assert (clean / other / name.split("/")[1]).is_file()
    assert bench.flip(clean, train, 0.2) == moved  # resumed from flips.json, not drawn again
    # label-issues' outputs as it writes them: 2 of the 4 moved files flagged, and 4 clean ones.
    out = tmp_path / "found"
    out.mkdir()
    files = sorted(str(p.relative_to(train)) for p in train.glob("*/*"))
    flagged = set(moved[:2]) | set(sorted(set(files) - set(moved))[:4])
    lines = ["file,given_label,suggested_label,label_quality,is_issue"]
    lines += [f"{f},{f.split('/')[0]},x,0.5,{f in flagged}" for f in files]
    (out / "label_issues.csv").write_text("\n".join(lines) + "\n")
    (out / "label_issues.json").write_text(json.dumps({"joint": {"matrix": [[0.4, 0.1], [0.05, 0.45]]},
                                                       "fold_accuracy": {"fold-0": 0.9, "fold-1": 0.8}}))
    found = bench.recovery(out, moved)
    assert (found["flagged"], found["hits"], found["flipped"]) == (6, 2, 4)
    assert found["precision"] == 2 / 6 and found["recall"] == 0.5 and found["true_noise"] == 0.2
    assert abs(found["estimated_noise"] - 0.15) < 1e-9


@pytest.mark.slow  # 4 training processes (2 folds, 2 arms) of a tiny model: about two minutes on 2 cores
def test_label_issues_bench_runs_its_code_path(tmp_path, capsys):
    from scipy.stats import binomtest

    (result,) = load("label_issues").main(["--tiny", "--noise", "0.15", "--work", str(tmp_path)])
    assert result["flipped"] == 12 and result["images"] == 80
    # Its scores are label-issues' own flags counted against the files it moved (flips.json).
    moved = set(json.loads((tmp_path / "noise-15" / "flips.json").read_text())["moved"])
    with (tmp_path / "noise-15" / "label-issues" / "label_issues.csv").open() as f:
        flagged = {row["file"] for row in csv.DictReader(f) if row["is_issue"] == "True"}
    assert (result["flagged"], result["hits"]) == (len(flagged), len(flagged & moved))
    assert len(result["noisy"]["accuracy"]) == len(result["cleaned"]["accuracy"]) == 1
    # compare pairs the two arms on the 40 clean test images: McNemar's exact test on the discordant ones.
    mc = result["compare"]["mcnemar"]
    discordant = mc["a_right_b_wrong"] + mc["a_wrong_b_right"]
    assert result["compare"]["images"] == 40
    assert mc["p_value"] == pytest.approx(binomtest(mc["a_wrong_b_right"], discordant).pvalue if discordant else 1.0)
    assert all(result["cost"][step]["cpu_s"] > 0 for step in ("label-issues", "noisy", "cleaned"))
    printed = capsys.readouterr().out
    assert "| noise (true) |" in printed and "after data.exclude" in printed and "label-issues CPU s" in printed


@pytest.mark.slow  # a pretraining and 2 fine-tuning processes of the quickstart model, 1 epoch each: about a minute
def test_pretrain_bench_runs_its_code_path(tmp_path, capsys):
    summary = load("pretrain").main(["--tiny", "--work", str(tmp_path)])
    assert summary["pretraining"]["images"]["train"] + summary["pretraining"]["images"]["validation"] == 1000
    (result,) = summary["results"]
    assert result["labels"] == 200 and result["test_images"] == 100
    for arm in ("scratch", "pretrained"):
        assert len(result[arm]["test"]) == len(result[arm]["street"]) == 1
    assert [c["images"] for c in result["compare"]["street"]] == [200]
    # The pretrained arm did start from the pretraining run: its card says so.
    card = (tmp_path / "labels-200" / "pretrained" / "seed-42" / "README.md").read_text()
    assert "**Pretraining:** the encoder started from `pretrain`" in card
    printed = capsys.readouterr().out
    assert "| labels | set | from scratch | pretrained |" in printed and "| 200 | street |" in printed


@pytest.mark.slow  # a server process and ~1,000 requests: about 20 s
def test_serve_bench_runs_its_code_path(onnx_run, capsys):
    figures = load("serve").main([str(onnx_run), "--requests", "6", "--soak", "80", "--attack", "4",
                                  "--attack-side", "2000"])
    attack = figures["attack"]
    assert attack["codes"] == {200: 4} and attack["side"] == 2000
    # The peak is the process's highest resident set: at least what it held before and after, and
    # above the start by no more than serve's memory budget (the bound docs/serving.md states).
    from facemask.runtime.limits import MAX_MEMORY_MB

    assert max(attack["rss_before_mb"], attack["rss_after_mb"]) <= attack["peak_mb"]
    assert attack["peak_mb"] - attack["rss_before_mb"] < MAX_MEMORY_MB
    assert [r["clients"] for r in figures["rounds"]] == [1, 8, 32]
    assert all(r["codes"] == {200: r["requests"]} for r in figures["rounds"])
    assert figures["mixed"]["wrong"] == [] and {400, 413, 415} <= set(figures["mixed"]["codes"])
    assert figures["alive"] and figures["exit_code"] == 0
    # 32 clients at once are served in shared batches, none over --max-batch (32, the bench's default).
    assert 1 < figures["rounds"][2]["mean_batch"] <= 32
    assert "| clients | requests | p50 ms |" in capsys.readouterr().out


@pytest.mark.slow  # a virtual environment made from requirements-serve.txt: a minute or two
def test_runtime_bench_runs_its_code_path(tmp_path, capsys):
    results = load("runtime").main(["--models", "tiny", "--repeats", "1", "--output", str(tmp_path / "r.json")])
    assert len(results["cold_start_s"]) == 3
    assert all(v["runs"] == 1 and v["min"] == v["median"] == v["max"] for v in results["cold_start_s"].values())
    # The torch-free environment is the smaller install (338 MiB against 2288 when measured).
    sizes = results["install_bytes"]
    assert 0 < sizes["requirements-serve.txt"] < sizes["requirements.txt (this interpreter's environment)"] / 2
    assert "cold start of one image, tiny ViT, serve env, --backend onnx" in capsys.readouterr().out


def test_data_engine_reviewer_answers_the_truth_in_the_pages_order_up_to_each_budget(tmp_path):
    bench = load("data_engine")
    clean = load("label_issues").draw(tmp_path / "clean", 20, seed=0)
    train = tmp_path / "noisy"
    moved = bench.flip(clean, train, 0.2, seed=3)
    assert moved != load("label_issues").flip(clean, tmp_path / "other" / "noisy", 0.2)  # the seed draws its own
    truth = {f: (f.split("/")[0] if f not in moved else
                 ("without_mask" if f.startswith("with_mask/") else "with_mask"))
             for f in (str(p.relative_to(train)) for p in train.glob("*/*"))}
    # label-issues' output as it writes it, ranked so that 2 of the 4 moved files come in the first 4.
    files = sorted(truth)
    ranked = [moved[0], files[0] if files[0] not in moved else files[1], moved[1]]
    ranked += [f for f in files if f not in ranked]
    out = tmp_path / "found"
    out.mkdir()
    with (out / "label_issues.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "given_label", "suggested_label", "label_quality", "is_issue", "sha256",
                         "suggested_probability", "fold"])
        for name in ranked:
            writer.writerow([name, name.split("/")[0], "with_mask", 0.5, False, bench.digest(train / name), 0.5, 0])
    (out / "label_issues.json").write_text(json.dumps({"labels": ["with_mask", "without_mask"],
                                                       "data_folder": str(train), "fold_runs": []}))
    tallies = bench.simulate_review(out, truth, {4: tmp_path / "1x", 8: tmp_path / "2x"})
    assert tallies[4] == {"reviewed": 4, "moved_reviewed": 2, "moved_fixed": 2, "right_changed": 0, "excluded": 0}
    assert tallies[8]["reviewed"] == 8 and tallies[8]["right_changed"] == 0
    with (tmp_path / "1x" / "corrections.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    # The first 4 of the page's order, each with its true label; the journal holds them in that order.
    assert [r["file"] for r in rows] == ranked[:4] and all(r["label"] == truth[r["file"]] for r in rows)
    assert [json.loads(line)["decision"] for line in (out / "review.jsonl").read_text().splitlines()][:3] == \
        ["label", "keep", "label"]
    # Resumed: the journal replays, nothing is decided twice.
    assert bench.simulate_review(out, truth, {8: tmp_path / "2x"})[8] == tallies[8]
    assert len((out / "review.jsonl").read_text().splitlines()) == 8
    assert bench.simulate_review(out, truth, {4: tmp_path / "1x"})[4] == tallies[4]  # a smaller budget, counted alone


@pytest.mark.slow  # 2 label-issues runs (2 folds each), 8 training processes of a tiny model: ~4 minutes on 2 cores
def test_data_engine_bench_runs_its_review_code_path(tmp_path, capsys):
    load("data_engine").main(["review", "--tiny", "--work", str(tmp_path), "--output", str(tmp_path / "review.json")])
    (result,) = json.loads((tmp_path / "review.json").read_text())["results"]
    assert result["moved"] == 8 and set(result["review"]) == {"1x", "2x", "3x"}
    assert all(t["right_changed"] == 0 and t["moved_fixed"] == t["moved_reviewed"] for t in result["review"].values())
    assert set(result["accuracy"]) == {"noisy", "blind", "true", "reviewed-1x", "reviewed-2x", "reviewed-3x",
                                       "clean-blind", "clean-reviewed-2x"}
    # The reviewed arms trained on the corrections: the run says how many labels it changed.
    log = (tmp_path / "drawn" / "seed-0" / "reviewed-3x.log").read_text()
    assert f"{result['review']['3x']['moved_fixed']} labels changed" in log
    assert 0 <= result["compare"]["reviewed-2x vs noisy"]["mcnemar_p"] <= 1
    assert "| reviewed-2x vs true |" in capsys.readouterr().out
