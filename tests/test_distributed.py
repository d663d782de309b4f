"""accelerate launch with two CPU processes, resuming after SIGKILL, and reproducible runs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, tiny_config
from safetensors.torch import load_file

import train
from facemask.config.schema import ConfigError

TIMING = ("runtime", "per_second", "preparation_time")


def stable(metrics):
    """Metrics without the wall-clock ones, which differ from run to run by nature."""
    return {k: v for k, v in metrics.items() if not any(t in k for t in TIMING)}


def launch(args, **kwargs):
    return subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           "configs/accelerate/multi-cpu.yaml", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, **kwargs)


@pytest.mark.slow  # tens of seconds: the default suite stays under ~8 minutes
def test_two_processes_train_the_quickstart_model_and_count_each_sample_once(tmp_path):
    out = tmp_path / "out"
    # With the recipe's switches that touch every process: EMA, mixup/CutMix, layer decay, early stopping.
    result = launch(["train.py", "configs/quickstart.yaml", f"training.output_dir={out}", "training.max_steps=4",
                     "training.eval_strategy=steps", "training.eval_steps=2", "training.save_strategy=steps",
                     "training.save_steps=2", "data.synthetic_num_images=190", "data.max_eval_samples=17",
                     "recipe.ema_decay=0.9", "recipe.mixup_alpha=0.4", "recipe.cutmix_alpha=1.0",
                     "recipe.layer_decay=0.75", "recipe.early_stopping_patience=3"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.parent.name for p in out.glob("checkpoint-*/ema.safetensors")] == ["checkpoint-2"]  # the best, kept
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["effective_batch_size"] == 64
    assert ("effective batch size 64 = 32 per device x 1 device(s) per process x 1 accumulation steps x "
            "2 processes") in result.stderr
    assert result.stderr.count("model card:") == 1  # only the main process writes the card
    sizes = {s: info["data"]["splits"][s]["num_images"] for s in ("validation", "test")}
    for prefix, split in (("eval", "validation"), ("test", "test")):
        matrix = json.loads((out / f"{prefix}_confusion_matrix.json").read_text())
        assert sum(map(sum, matrix["matrix"])) == sizes[split]  # 17: odd, uneven across 2 processes
    assert sizes == {"validation": 17, "test": 17}
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert "Processes: 2 (effective batch size 64)" in (out / "README.md").read_text()


@pytest.mark.slow  # several training runs: ~20 s
def test_a_finished_run_is_never_reused_silently(tmp_path):
    config = tiny_config(tmp_path, "vit", training={"save_strategy": "steps", "save_steps": 2})
    first = train.main([str(config)])
    with pytest.raises(ConfigError, match=r"already holds a finished run.*--resume.*--overwrite"):
        train.main([str(config)])
    # --resume on a finished run continues from its last checkpoint: nothing is left to do, so the
    # model and its metrics are the same (the Trainer recounts the epoch fraction on resume).
    resumed = train.main([str(config), "--resume"])
    without_epoch = lambda m: {k: v for k, v in stable(m).items() if k != "epoch"}  # noqa: E731
    assert without_epoch(resumed["eval"]) == without_epoch(first["eval"])
    marker = tmp_path / "out" / "stale.txt"
    marker.write_text("from an older run")
    train.main([str(config), "--overwrite"])
    assert not marker.exists() and (tmp_path / "out" / "train_results.json").is_file()
    with pytest.raises(ConfigError, match="not a checkpoint folder"):
        train.main([str(config), f"--resume={tmp_path}"])


def test_same_seed_same_results(tmp_path):
    runs = []
    for name in ("a", "b"):
        config = tiny_config(tmp_path / name, "vit", training={"max_steps": 3})
        runs.append(train.main([str(config)]))
    assert stable(runs[0]["eval"]) == stable(runs[1]["eval"])
    assert stable(runs[0]["test"]) == stable(runs[1]["test"])
    a = load_file(tmp_path / "a" / "out" / "model.safetensors")
    b = load_file(tmp_path / "b" / "out" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    info = json.loads((tmp_path / "a" / "out" / "run_info.json").read_text())
    assert info["seed"] == 0 and info["world_size"] == 1
    assert info["data_fingerprint"]["kind"] == "synthetic" and info["data_fingerprint"]["num_images"] == 60
    assert set(info["git"]) <= {"commit", "dirty"} and {"PyTorch", "Transformers"} <= set(info["versions"])
    card = (tmp_path / "a" / "out" / "README.md").read_text()
    assert "- Seed: 0" in card and "- Data fingerprint: `{" in card


@pytest.mark.slow  # tens of seconds: the default suite stays under ~8 minutes
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    # Bit-for-bit on CPU: the Trainer restores model, optimizer, scheduler and RNG states and skips
    # the batches already seen; augmentation and mixing draw from (seed, epoch or step, sample)
    # keys, and the weight average is checkpointed beside the weights.
    training = {"max_steps": 60, "save_strategy": "steps", "save_steps": 10, "per_device_train_batch_size": 16,
                "logging_steps": 5}
    data = {"synthetic": True, "synthetic_num_images": 300, "synthetic_image_size": 40, "test_split": 0.2}
    # EMA, mixup/CutMix and colour jitter on: their state and draws must resume exactly too.
    recipe = {"ema_decay": 0.9, "mixup_alpha": 0.4, "cutmix_alpha": 1.0, "color_jitter": 0.4}
    config = tiny_config(tmp_path / "killed", "vit", data=data, training=training, recipe=recipe)
    out = tmp_path / "killed" / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "train.py", str(config)], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoint-10" / "trainer_state.json").is_file():
        assert process.poll() is None and time.time() < deadline, "training ended before its first checkpoint"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "train_results.json").exists()  # it really was cut short
    with pytest.raises(ConfigError, match="interrupted run"):
        train.main([str(config)])

    resumed = subprocess.run([sys.executable, "train.py", str(config), "--resume"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr

    straight = tiny_config(tmp_path / "straight", "vit", data=data, training=training, recipe=recipe)
    subprocess.run([sys.executable, "train.py", str(straight)], cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=600)
    for name in ("eval_results.json", "test_results.json"):
        a = json.loads((out / name).read_text())
        b = json.loads((tmp_path / "straight" / "out" / name).read_text())
        assert stable(a) == stable(b), name
    a, b = load_file(out / "model.safetensors"), load_file(tmp_path / "straight" / "out" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


SLURM = REPO / "scripts" / "slurm" / "multi-node.sbatch"
TWO_PROCESS_RUN = ["configs/quickstart.yaml", "training.max_steps=4", "training.eval_strategy=steps",
                   "training.eval_steps=2", "training.save_strategy=steps", "training.save_steps=2",
                   "data.synthetic_num_images=190", "data.max_eval_samples=17", "recipe.mixup_alpha=0.4",
                   "training.log_level_replica=info"]


def slurm_env(tmp_path, nodes=2):
    """SLURM's environment for an allocation of `nodes` machines, all of them this host: the
    stand-in srun (tests/fake_slurm) runs the script's task once per machine, as SLURM would."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bin_dirs = [str(REPO / "tests" / "fake_slurm"), os.path.dirname(sys.executable)]
    return {**os.environ, "PATH": os.pathsep.join([*bin_dirs, os.environ["PATH"]]), "SLURM_NNODES": str(nodes),
            "SLURM_JOB_NODELIST": f"node[1-{nodes}]", "SLURM_JOB_ID": "4242", "GPUS_PER_NODE": "1",
            "MAIN_PORT": str(port), "SRUN_LOGS": str(tmp_path), "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow  # two distributed runs of the quickstart model: tens of seconds
def test_two_machines_through_the_slurm_script_match_two_processes_on_one(tmp_path):
    machines = tmp_path / "machines"
    machines.mkdir()
    result = subprocess.run(["bash", str(SLURM), *TWO_PROCESS_RUN, f"training.output_dir={machines / 'out'}",
                             f"data.preprocess_dir={machines / 'cache'}"], cwd=REPO, env=slurm_env(machines),
                            capture_output=True, text=True, timeout=300)
    logs = {n: (machines / f"machine-{n}.log") for n in (0, 1)}
    logs = {n: log.read_text() if log.is_file() else "" for n, log in logs.items()}
    assert result.returncode == 0, result.stdout + result.stderr + logs[0][-3000:] + logs[1][-3000:]
    assert "2 machine(s) x 1 process(es), rendezvous at 127.0.0.1" in result.stdout
    one = tmp_path / "one"
    single = launch(["train.py", *TWO_PROCESS_RUN, f"training.output_dir={one / 'out'}",
                     f"data.preprocess_dir={one / 'cache'}"])
    assert single.returncode == 0, single.stderr[-3000:]

    out = machines / "out"
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["effective_batch_size"] == 64
    both = logs[0] + logs[1]
    assert both.count("model card:") == 1 and (out / "README.md").is_file()  # one card, by the main process
    # The data prepared once: the main process built each split's cache; the other machine read them.
    assert both.count("built the preprocessing cache") == 3 and both.count("reused the preprocessing cache") == 3
    for prefix, split in (("eval", "validation"), ("test", "test")):
        matrix = json.loads((out / f"{prefix}_confusion_matrix.json").read_text())
        assert sum(map(sum, matrix["matrix"])) == info["data"]["splits"][split]["num_images"]  # each image once
        a = json.loads((out / f"{prefix}_results.json").read_text())
        b = json.loads((one / "out" / f"{prefix}_results.json").read_text())
        assert stable(a) == stable(b), prefix
    a, b = load_file(out / "model.safetensors"), load_file(one / "out" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same samples, in the same order, on the same ranks


def test_the_slurm_script_says_how_to_call_it(tmp_path):
    result = subprocess.run(["bash", str(SLURM)], cwd=REPO, capture_output=True, text=True, env=slurm_env(tmp_path))
    assert result.returncode == 2 and "usage: sbatch" in result.stderr
    env = {k: v for k, v in slurm_env(tmp_path).items() if k != "SLURM_NNODES"}
    result = subprocess.run(["bash", str(SLURM), "configs/quickstart.yaml"], cwd=REPO, capture_output=True, text=True,
                            env=env)
    assert result.returncode != 0 and "run this script with sbatch" in result.stderr


@pytest.mark.slow  # a two-process launch: tens of seconds
def test_a_data_error_of_the_main_process_stops_every_process_instead_of_leaving_them_waiting(tmp_path):
    from PIL import Image

    for name in ("with_mask", "without_mask", "scarf"):  # three classes where two are expected
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (40 * i, 80, 120)).save(tmp_path / "data" / name / f"{i}.png")
    started = time.time()
    result = launch(["train.py", "configs/quickstart.yaml", f"data.train_dir={tmp_path / 'data'}",
                     f"training.output_dir={tmp_path / 'out'}", f"data.preprocess_dir={tmp_path / 'cache'}"])
    assert result.returncode != 0
    assert result.stderr.count("found 3 classes") >= 2  # each process met the error, none hung at a barrier
    assert time.time() - started < 120


@pytest.mark.slow  # a two-process launch: tens of seconds
def test_two_processes_pretrain_with_one_record_and_figures(tmp_path):
    out = tmp_path / "out"
    result = launch(["pretrain.py", "configs/pretrain-quickstart.yaml", f"training.output_dir={out}",
                     "training.max_steps=4", "training.eval_strategy=steps", "training.eval_steps=2",
                     "training.save_strategy=steps", "training.save_steps=2", "data.synthetic_num_images=300",
                     "pretrain.reconstructions=3"])
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2
    record = json.loads((out / "pretraining.json").read_text())
    assert sum(record["images"].values()) == 300 and record["eval_loss"] > 0
    assert len((out / "pretraining_images.txt").read_text().split()) == 300
    assert (out / "reconstructions.png").is_file() and result.stderr.count("model card:") == 1
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
