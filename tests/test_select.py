"""python -m facemask select: the strategies on arrays (held to scikit-activeml's where it has them),
and the command on a tiny run and generated pools: the run's own images and copies left out, the
table, both backends, bad input."""

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facemask.__main__ import main as cli
from facemask.curation import strategies
from facemask.run_folder import RUN_IMAGES, SELECT_JSON, TO_LABEL_CSV


def probabilities(p_first):
    p = np.asarray(p_first, dtype=np.float64)
    return np.stack([p, 1 - p], axis=1)


def test_margin_and_entropy_pick_the_fifty_fifty_images_and_match_scikit_activeml():
    from skactiveml.pool import uncertainty_scores

    rng = np.random.default_rng(0)
    p = rng.uniform(0.8, 1.0, size=200)
    fifty = [17, 93, 150]
    p[fifty] = [0.5, 0.51, 0.49]
    probs = probabilities(p)
    for strategy in ("margin", "entropy"):
        picked, _ = strategies.select(strategy, probs, 3)
        assert sorted(picked.tolist()) == fifty, strategy
    three = rng.dirichlet(np.ones(3), size=50)
    assert np.allclose(strategies.margin_utility(three), uncertainty_scores(three, method="margin_sampling"))
    assert np.allclose(strategies.entropy_utility(three), uncertainty_scores(three, method="entropy"))


def clustered(rng, centres=4, per_centre=20, dims=16, spread=0.01):
    """Points in tight clusters around random directions; the first cluster's points are the most
    uncertain, so an uncertainty strategy alone would take them all (fewer than clusters' PREFILTER x
    budget candidates: a cluster larger than that is all the candidates clusters sees)."""
    centre = rng.normal(size=(centres, dims))
    x = np.concatenate([c + spread * rng.normal(size=(per_centre, dims)) for c in centre])
    cluster = np.repeat(np.arange(centres), per_centre)
    p = np.where(cluster == 0, rng.uniform(0.5, 0.55, len(x)), rng.uniform(0.6, 0.9, len(x)))
    return x, probabilities(p), cluster


@pytest.mark.parametrize("strategy", ["coreset", "clusters"])
def test_diverse_strategies_spread_over_the_clusters_where_margin_does_not(strategy):
    x, probs, cluster = clustered(np.random.default_rng(1))
    picked, _ = strategies.select(strategy, probs, 4, embeddings=x)
    assert sorted(cluster[picked].tolist()) == [0, 1, 2, 3]
    by_margin, _ = strategies.select("margin", probs, 4)
    assert set(cluster[by_margin].tolist()) == {0}  # N near-alike images, as the diverse ones must not pick


def test_k_centre_greedy_is_scikit_activemls_from_the_same_start():
    from skactiveml.pool import k_greedy_center

    x = strategies.normalised(np.random.default_rng(2).normal(size=(120, 8)))
    ours, _ = strategies.k_centre_greedy(x, 10, first=7)
    y = np.full(len(x), np.nan)
    y[7] = 0  # the start as the one labelled image
    theirs = k_greedy_center(x.astype(np.float64), y, batch_size=9)
    theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    assert ours.tolist() == [7, *np.asarray(theirs).tolist()]


def test_random_is_seeded_and_every_strategy_refuses_what_it_cannot_do():
    probs = probabilities(np.linspace(0, 1, 50))
    a, _ = strategies.select("random", probs, 10, seed=3)
    b, _ = strategies.select("random", probs, 10, seed=3)
    c, _ = strategies.select("random", probs, 10, seed=4)
    assert a.tolist() == b.tolist() != c.tolist() and len(set(a.tolist())) == 10
    assert len(strategies.select("margin", probs, 500)[0]) == 50
    with pytest.raises(ValueError, match="embeddings"):
        strategies.select("coreset", probs, 3)


def drawn_pool(root, count=12, seed=0):
    """`count` distinct generated face-like images (PNG), in a nested folder."""
    rng = np.random.default_rng(seed)
    (root / "a" / "b").mkdir(parents=True)
    files = []
    for k in range(count):
        pixels = np.kron(rng.integers(0, 256, size=(6, 6, 3)), np.ones((8, 8, 1))).astype(np.uint8)
        path = root / ("a/b" if k % 2 else "a") / f"img{k:02d}.png"
        Image.fromarray(pixels).save(path)
        files.append(path)
    return files


def read_table(folder):
    with (folder / TO_LABEL_CSV).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_the_run_records_each_splits_digests_as_its_prediction_files_do(tiny_run):
    out = tiny_run().out
    with RUN_IMAGES.path(out).open(newline="", encoding="utf-8") as f:
        recorded = list(csv.DictReader(f))
    for split, prefix in (("validation", "eval"), ("test", "test")):
        with (out / f"{prefix}_predictions.csv").open(newline="", encoding="utf-8") as f:
            predicted = {row["sha256"] for row in csv.DictReader(f)}
        assert {r["sha256"] for r in recorded if r["split"] == split} == predicted
    assert len({r["sha256"] for r in recorded if r["split"] == "train"}) == 40


def test_select_leaves_out_the_runs_images_and_copies_and_writes_the_ranked_table(tiny_run, synth_folder, tmp_path,
                                                                                  capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run().out, run)
    pool = tmp_path / "pool"
    shutil.copytree(synth_folder, pool)  # 40 drawn faces, a folder per class
    files = sorted(p for p in pool.rglob("*") if p.is_file())
    # A pool image the run trained on (its digest in the run's record), an exact copy, a near copy
    # (re-encoded as JPEG: other bytes, the same picture) and a file that is no image.
    digest = hashlib.sha256(files[0].read_bytes()).hexdigest()
    with RUN_IMAGES.path(run).open("a", encoding="utf-8") as f:
        f.write(f"train,{digest}\n")
    shutil.copy(files[1], pool / "exact.png")
    Image.open(files[2]).convert("RGB").resize((44, 44)).save(pool / "near.jpg", quality=90)
    (pool / "broken.png").write_bytes(b"not an image")
    assert cli(["select", str(run), str(pool), "--budget", "100", "--strategy", "margin"]) == 0
    out = run / "select-margin-100"
    table = read_table(out)
    assert list(table[0])[:6] == ["rank", "file", "sha256", "score", "suggested_label", "probability"]
    picked = [row["file"] for row in table]
    # 40 drawn - 1 trained on, + the near copy - 1 of that pair; the exact copy and broken file never count
    assert len(picked) == 39 == len(set(row["sha256"] for row in table))
    assert str(files[0].resolve()) not in picked
    assert sum(name in (str(files[1]), str(pool / "exact.png")) for name in picked) == 1
    assert sum(name in (str(files[2]), str(pool / "near.jpg")) for name in picked) == 1
    assert all(name.startswith("/") and Path(name).is_file() for name in picked)
    assert [int(row["rank"]) for row in table] == list(range(1, 40))
    scores = [float(row["score"]) for row in table]
    assert scores == sorted(scores, reverse=True)
    for row in table:
        assert float(row["probability"]) == max(float(row["prob_with_mask"]), float(row["prob_without_mask"]))
        assert float(row["probability"]) == float(row[f"prob_{row['suggested_label']}"])
    summary = json.loads((out / SELECT_JSON).read_text())
    assert summary["skipped"] == {"in_train_data": 1, "exact_copy": 1, "unreadable": 1, "near_copy": 1}
    assert summary["pool_files"] == 43 and summary["candidates"] == 39 and summary["images_per_s"] > 0
    assert "broken.png" in capsys.readouterr().err
    # An existing table is never replaced unless asked.
    before = (out / TO_LABEL_CSV).read_bytes()
    assert cli(["select", str(run), str(pool), "--budget", "100", "--strategy", "margin"]) == 2
    assert "--force" in capsys.readouterr().err and (out / TO_LABEL_CSV).read_bytes() == before
    assert cli(["select", str(run), str(pool), "--budget", "3", "--strategy", "coreset", "--output",
                str(out), "--force"]) == 0
    assert len(read_table(out)) == 3


@pytest.mark.parametrize("strategy", ["margin", "coreset"])
def test_onnx_ranks_as_torch_does(onnx_run, tmp_path, strategy):
    pool = tmp_path / "pool"
    drawn_pool(pool, count=16, seed=4)
    tables = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / backend
        assert cli(["select", str(onnx_run), str(pool), "--budget", "8", "--strategy", strategy, "--backend",
                    backend, "--output", str(out)]) == 0
        tables[backend] = read_table(out)
        assert json.loads((out / SELECT_JSON).read_text())["backend"] == backend
    assert [r["file"] for r in tables["torch"]] == [r["file"] for r in tables["onnx"]]
    assert np.allclose([float(r["probability"]) for r in tables["torch"]],
                       [float(r["probability"]) for r in tables["onnx"]], atol=1e-4)


def test_a_graph_exported_without_the_embedding_runs_uncertainty_and_says_what_diversity_needs(
        onnx_run, tmp_path, capsys):
    import onnx

    run = tmp_path / "run"
    shutil.copytree(onnx_run, run)
    graph = onnx.load(str(run / "onnx" / "model.onnx"))
    assert [o.name for o in graph.graph.output] == ["logits", "embedding"]
    del graph.graph.output[1]
    onnx.save(graph, str(run / "onnx" / "model.onnx"))
    pool = tmp_path / "pool"
    drawn_pool(pool, count=4)
    assert cli(["select", str(run), str(pool), "--budget", "2", "--backend", "onnx", "--strategy", "clusters"]) == 2
    assert "export the run again" in capsys.readouterr().err
    assert cli(["select", str(run), str(pool), "--budget", "2", "--backend", "onnx", "--strategy", "entropy"]) == 0


def test_bad_input_gets_a_clear_error(tiny_run, tmp_path, capsys):
    run = tiny_run().out
    pool = tmp_path / "pool"
    drawn_pool(pool, count=2)
    not_a_run = tmp_path / "not-a-run"
    not_a_run.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [([str(run), str(pool), "--budget", "0"], "--budget 0"),
             ([str(not_a_run), str(pool), "--budget", "2"], RUN_IMAGES.name),
             ([str(tmp_path / "missing"), str(pool), "--budget", "2"], "run folder not found"),
             ([str(run), str(empty), "--budget", "2", "--output", str(tmp_path / "o")], "holds no files"),
             ([str(run), str(tmp_path / "nowhere"), "--budget", "2"], "pool folder not found")]
    for argv, message in cases:
        assert cli(["select", *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not (run / "select-clusters-2").exists()
