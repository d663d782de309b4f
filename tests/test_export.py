"""ONNX export: parity on the run's validation images, int8, both backends in predict/evaluate, card, push."""

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import torch
from conftest import REPO
from fake_hub import FakeHub

from facemask.__main__ import main as cli
from facemask.publish.export import ExportError, export

_spec = importlib.util.spec_from_file_location("evaluate_script", REPO / "evaluate.py")
evaluate_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluate_script)


@pytest.fixture(scope="module")
def exported(onnx_run):
    """A tiny run, exported with int8 kept whatever its accuracy (the session's: tests that write into
    it copy it first)."""
    return onnx_run


def test_a_pretraining_run_is_refused_for_having_no_classifier(evaluated_run, tmp_path, capsys):
    """export once advised renaming class folders here: the encoder's labels (LABEL_0, LABEL_1) matched
    no data, but the cause is that a pretraining run has no classifier at all."""
    from transformers import ViTConfig, ViTForMaskedImageModeling

    folder = tmp_path / "pretrained"
    shutil.copytree(evaluated_run, folder)  # a run's data and processor around the encoder
    config = ViTConfig.from_pretrained(evaluated_run)
    config.id2label, config.label2id = {0: "LABEL_0", 1: "LABEL_1"}, {"LABEL_0": 0, "LABEL_1": 1}
    ViTForMaskedImageModeling(config).save_pretrained(folder)  # the model `pretrain` saves, untrained
    (folder / "pretraining.json").write_text(json.dumps({"objective": "simmim"}))
    assert cli(["export", str(folder), "--max-images", "8"]) == 2
    err = capsys.readouterr().err
    assert "has no classifier to run: it is a pretraining run" in err and "model.name_or_path=" in err
    assert "Rename" not in err and not (folder / "onnx").exists()
    # Without its record (a Hub copy of the encoder): told by its architecture.
    (folder / "pretraining.json").unlink()
    assert cli(["predict", str(folder), str(folder / "test_confusion_matrix.png")]) == 2
    assert "it is a ViTForMaskedImageModeling, an encoder without a classification head" in capsys.readouterr().err


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    assert cli(["synth", str(root), "--num-images", "24", "--image-size", "64", "--seed", "5"]) == 0
    return root


def test_export_writes_both_graphs_and_their_parity(exported):
    onnx_dir = exported / "onnx"
    parity = json.loads((onnx_dir / "parity.json").read_text())
    assert parity["files"] == ["onnx/model.onnx", "onnx/model_quantized.onnx"]
    carved = json.loads((exported / "run_info.json").read_text())["data"]["splits"]["validation"]["num_images"]
    assert f"(validation, {carved} images)" in parity["images"]  # the split training carved, all of it
    fp32, int8 = parity["fp32"], parity["int8"]
    assert fp32["max_abs_logit_diff"] <= parity["tolerance"] == 1e-3
    assert fp32["top1_agreement"] == 1.0 and fp32["accuracy_onnx"] == fp32["accuracy_pytorch"]
    assert int8["kept"] and int8["max_accuracy_drop_points"] == 100
    assert int8["accuracy_drop_points"] == pytest.approx(100 * (int8["accuracy_pytorch"] - int8["accuracy_onnx"]))
    assert fp32["images_per_s_onnx"] > 0 and int8["speedup_vs_onnx_fp32"] > 0
    # The graphs are pushed: no stack trace naming this machine's files (the exporter records one per node).
    import site

    local = [str(REPO), *site.getsitepackages()]
    for graph in ("model.onnx", "model_quantized.onnx"):
        content = (onnx_dir / graph).read_bytes()
        assert not [path for path in local if path.encode() in content], graph

    # The batch dimension is dynamic, and the graph equals the saved model on inputs it never saw.
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(exported).eval()
    session = onnxruntime.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)
    for batch in (1, 7):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            expected = model(pixel_values=x).logits.numpy()
        got = session.run(["logits"], {"pixel_values": x.numpy()})[0]
        assert got.shape == (batch, 2) and np.abs(got - expected).max() < 1e-4


def test_a_beit_run_trained_with_sdpa_exports_with_parity(tiny_run, tmp_path):
    # BEiT's SDPA attention cannot be traced by the exporter: the graph is traced with eager
    # attention, and parity holds against the model as trained (SDPA).
    out = tmp_path / "out"
    shutil.copytree(tiny_run("beit").out, out)
    assert json.loads((out / "run_info.json").read_text())["switches"]["used"]["attn_implementation"] == "sdpa"
    assert cli(["export", str(out)]) == 0
    fp32 = json.loads((out / "onnx" / "parity.json").read_text())["fp32"]
    assert fp32["max_abs_logit_diff"] <= 1e-3 and fp32["top1_agreement"] == 1.0


def test_predict_gives_the_same_labels_with_either_backend(exported, images, tmp_path):
    rows = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        out = tmp_path / f"{backend}.csv"
        assert cli(["predict", str(exported), str(images), "--backend", backend, "--output", str(out)]) == 0
        with open(out, newline="") as f:
            rows[backend] = {r["path"]: r for r in csv.DictReader(f)}
    assert len(rows["torch"]) == 24 and rows["onnx"].keys() == rows["torch"].keys()
    for path, row in rows["torch"].items():
        assert rows["onnx"][path]["label"] == row["label"]
        assert float(rows["onnx"][path]["confidence"]) == pytest.approx(float(row["confidence"]), abs=1e-4)


def test_evaluate_script_onnx_backend_matches_pytorch(exported, images, tmp_path):
    results = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / backend
        results[backend] = evaluate_script.main([str(exported), "--data", str(images), "--output-dir", str(out),
                                                 "--backend", backend])
        with open(out / "test_predictions.csv", newline="") as f:
            results[backend + "_labels"] = [r["predicted_label"] for r in csv.DictReader(f)]
    assert results["onnx_labels"] == results["torch_labels"]
    assert json.loads((tmp_path / "onnx" / "test_results.json").read_text())["test_backend"] == "onnx"
    assert results["torch"]["test_backend"] == "torch"
    assert results["onnx"]["test_accuracy"] == results["torch"]["test_accuracy"]
    assert results["onnx"]["test_loss"] == pytest.approx(results["torch"]["test_loss"], abs=1e-4)


def test_a_graph_that_disagrees_is_refused_and_the_earlier_export_kept(exported, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(exported, run)
    before = {p.name: p.read_bytes() for p in (run / "onnx").iterdir()}
    import facemask.publish.export as export_module

    real = export_module.export_graph

    def drifted(model, side, path, opset):
        import copy

        faulty = copy.deepcopy(model)  # a graph whose every logit is off by 0.01, as a faulty conversion's
        with torch.no_grad():
            faulty.classifier.bias += 0.01
        real(faulty, side, path, opset)

    monkeypatch.setattr(export_module, "export_graph", drifted)
    with pytest.raises(ExportError, match=r"max \|logit difference\| 0\.01.*tolerance 0\.001"):
        export(run)
    assert {p.name: p.read_bytes() for p in (run / "onnx").iterdir()} == before


def test_int8_beyond_the_allowed_accuracy_drop_is_removed(exported, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(exported, run)
    result = export(run, quantize="int8", max_accuracy_drop=-100)
    assert not result["int8"]["kept"] and result["files"] == ["onnx/model.onnx"]
    assert not (run / "onnx" / "model_quantized.onnx").exists()
    assert "int8 model removed" in caplog.text
    assert cli(["predict", str(run), str(REPO / "README.md"), "--backend", "onnx-int8"]) == 2  # says to export


def test_export_prints_only_its_own_lines(exported, tmp_path):
    """No warning about torchvision operators no model here uses, no torch-internal FutureWarning and
    no onnxruntime hint to pre-process (export does pre-process before quantizing)."""
    run = tmp_path / "run"  # the session's exported run stays as the other tests read it
    shutil.copytree(exported, run)
    done = subprocess.run([sys.executable, "-m", "facemask", "export", str(run), "--quantize", "int8",
                           "--max-accuracy-drop", "100", "--max-images", "8", "--output", str(tmp_path / "onnx")],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    for noise in ("torchvision", "FutureWarning", "pre-processing", "WARNING:root"):
        assert noise not in output, output
    assert output.startswith("parity on") and "int8: accuracy" in output


def test_an_int8_graph_slower_than_fp32_is_not_recommended(exported, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(exported, run)
    import facemask.publish.export as export_module

    speeds = iter([300.0, 200.0, 180.0])  # PyTorch, the fp32 graph, the int8 graph: int8 at 0.9x fp32
    monkeypatch.setattr(export_module, "images_per_second", lambda run, pixels: next(speeds))
    assert cli(["export", str(run), "--quantize", "int8", "--max-accuracy-drop", "100", "--max-images", "8"]) == 0
    out = capsys.readouterr().out
    assert "0.90x the fp32 graph's speed: kept for its size, but slower than the fp32 graph on this machine: use " \
           "--backend onnx here" in out and "(--backend onnx-int8)" not in out
    int8 = json.loads((run / "onnx" / "parity.json").read_text())["int8"]
    assert int8["kept"] and int8["faster_than_fp32"] is False
    assert cli(["card", str(run)]) == 0
    card = (run / "README.md").read_text()
    assert "It ran at 0.90x the fp32 graph's speed on the\nexporting machine: smaller, not faster there" in card


def test_a_new_export_without_int8_drops_the_earlier_int8_graph(exported, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported, run)
    assert (run / "onnx" / "model_quantized.onnx").is_file()
    assert export(run)["files"] == ["onnx/model.onnx"]
    assert not (run / "onnx" / "model_quantized.onnx").exists()  # it matched the replaced model.onnx


@pytest.mark.slow  # three facemask processes (a push, then predict by Hub id and locally): 14-19 s on 2 busy cores
def test_card_shows_the_onnx_section_and_push_sends_onnx(onnx_run, images, tmp_path):
    exported = tmp_path / "run"  # card and push write into the run folder
    shutil.copytree(onnx_run, exported)
    assert cli(["card", str(exported)]) == 0
    card = (exported / "README.md").read_text()
    section = card[card.index("## ONNX"):card.index("## Training data")]
    parity = json.loads((exported / "onnx" / "parity.json").read_text())
    assert "onnx/model.onnx, onnx/model_quantized.onnx" in section
    assert f"{parity['fp32']['accuracy_onnx']:.4f}" in section and "--backend onnx" in section

    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    with FakeHub() as hub:
        # An earlier push of other weights left a second shard; the user added notes and an fp16 graph.
        hub.stored["tester/onnx"] = {"model-00002-of-00002.safetensors": b"old", "notes.md": b"mine",
                                     "onnx/model_fp16.onnx": b"mine"}
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="0",
                   HF_TOKEN="hf_" + "Qx7" * 12)
        result = subprocess.run([sys.executable, "-m", "facemask", "push", str(exported), "--model-id", "tester/onnx"],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        # The pushed graph, loaded by Hub id, classifies as the local one does.
        predicted = {}
        for model in ("tester/onnx", str(exported)):
            done = subprocess.run([sys.executable, "-m", "facemask", "predict", model, str(images), "--backend", "onnx"],
                                  cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            predicted[model] = done.stdout
    assert predicted["tester/onnx"] == predicted[str(exported)] and predicted["tester/onnx"].count("\n") == 24
    assert any(method == "GET" and path.startswith("/tester/onnx/resolve/") and path.endswith("onnx/model.onnx")
               for method, path in hub.requests)
    files = hub.commits[0]["files"]
    for name in ("model.onnx", "model_quantized.onnx", "parity.json"):
        assert files[f"onnx/{name}"] == (exported / "onnx" / name).read_bytes()
    assert "config.json" in files and "preprocessor_config.json" in files
    assert hub.commits[0]["deleted"] == ["model-00002-of-00002.safetensors"]
    assert {"notes.md", "onnx/model_fp16.onnx"} <= set(hub.stored["tester/onnx"])
    assert "removing 1 file(s) of an earlier push" in result.stdout
