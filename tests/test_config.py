from pathlib import Path

import pytest
from conftest import REPO

from facemask.config.dump import to_yaml
from facemask.config.loading import load_config
from facemask.config.schema import ConfigError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


BASE = """
model:
  from_config: {model_type: vit, image_size: 32}
data:
  synthetic: true
training:
  output_dir: OUT
  learning_rate: 3.0e-5
  eval_strategy: epoch
"""


def test_file_and_overrides_become_typed_dataclasses(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["training.learning_rate=1e-4", "data.validation_split=0.2",
                                              "training.num_train_epochs=2", "hub.private=false"])
    assert cfg.training["learning_rate"] == pytest.approx(1e-4)
    assert isinstance(cfg.training["num_train_epochs"], float)  # TrainingArguments declares it float
    assert cfg.data.validation_split == pytest.approx(0.2)
    assert cfg.hub.private is False
    assert cfg.model.from_config == {"model_type": "vit", "image_size": 32}
    assert cfg.data.image_column == "image" and cfg.data.label_column == "label"


def test_yaml_no_means_the_strategy_no(tmp_path):
    cfg = load_config(write(tmp_path, BASE.replace("eval_strategy: epoch", "eval_strategy: no")))
    assert cfg.training["eval_strategy"] == "no"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("training.lerning_rate=1", "unknown key 'training.lerning_rate'.*did you mean 'learning_rate'"),
        ("data.valdation_split=0.1", "unknown key 'data.valdation_split'.*did you mean 'validation_split'"),
        ("modle.name_or_path=x", "unknown key 'modle'.*did you mean 'model'"),
        ("data.validation_split=abc", "'data.validation_split'.*Float"),
        ("training.learning_rate=fast", "'training.learning_rate': expected float, got 'fast'"),
        ("training.eval_strategy=epochs", "'training.eval_strategy': expected one of 'no', 'steps', 'epoch'"),
        ("training.bf16=maybe", "'training.bf16': expected bool"),
        ("data.validation_split=1.5", "'data.validation_split': expected a fraction"),
        ("trainingoutput_dir", "section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(tmp_path, override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, BASE), [override])


@pytest.mark.parametrize(
    "override, expected",
    [
        ("training.learning_rate=-1", "'training.learning_rate': expected a learning rate >= 0, got -1"),
        ("training.per_device_train_batch_size=0", "'training.per_device_train_batch_size': expected a batch size"),
        ("training.per_device_eval_batch_size=-4", "'training.per_device_eval_batch_size': expected a batch size"),
        ("training.gradient_accumulation_steps=0", "'training.gradient_accumulation_steps'"),
        ("training.num_train_epochs=0", "'training.num_train_epochs': expected a number of epochs > 0"),
        ("training.adam_beta2=1.0", "'training.adam_beta2': expected a factor in \\[0, 1\\)"),
        ("training.warmup_steps=-3", "'training.warmup_steps'"),
        ("training.dataloader_num_workers=-1", "'training.dataloader_num_workers'"),
        ("training.save_total_limit=0", "'training.save_total_limit'"),
        ("training.max_steps=0", "'training.max_steps': expected a number of steps > 0, or -1"),
        ("training.seed=-1", "'training.seed'"),
        ("training.eval_steps=0", "'training.eval_steps'"),
    ],
)
def test_training_values_out_of_range_name_the_key(tmp_path, override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, BASE), [override])


def test_training_values_in_range_pass(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["training.learning_rate=0", "training.max_steps=-1",
                                              "training.warmup_steps=0.1", "training.max_grad_norm=0",
                                              "training.per_device_train_batch_size=1"])
    assert cfg.training["learning_rate"] == 0 and cfg.training["max_steps"] == -1


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = write(tmp_path, BASE.replace("  synthetic: true", "  synthetic: true\n  image_colum: img"))
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'data.image_colum'; did you mean 'image_column'"):
        load_config(path)


def test_missing_output_dir_and_conflicting_sources_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="training.output_dir"):
        load_config(write(tmp_path, BASE.replace("  output_dir: OUT\n", "")))
    with pytest.raises(ConfigError, match="exactly one data source"):
        load_config(write(tmp_path, BASE.replace("synthetic: true", "synthetic: false")))
    both = BASE.replace("model:\n", "model:\n  name_or_path: google/vit-base-patch16-224-in21k\n", 1)
    assert both != BASE
    with pytest.raises(ConfigError, match="exactly one of 'model.name_or_path'"):
        load_config(write(tmp_path, both))


def test_a_checkpoint_on_the_command_line_replaces_the_files_model(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["model.name_or_path=google/vit-base-patch16-224-in21k"])
    assert cfg.model.name_or_path == "google/vit-base-patch16-224-in21k" and cfg.model.from_config is None


def test_a_source_on_the_command_line_replaces_the_files(tmp_path):
    cfg = load_config(write(tmp_path, BASE), [f"data.train_dir={tmp_path}"])
    assert cfg.data.train_dir == str(tmp_path) and cfg.data.synthetic is False


def test_written_config_reads_back_equal(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["training.seed=7", "data.test_split=0.1"])
    again = load_config(write(tmp_path, to_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).parent.parent / "configs").glob("*.yaml")))
def test_shipped_configs_load_and_state_their_command(name):
    from conftest import REPO

    path = REPO / "configs" / f"{name}.yaml"
    header = path.read_text(encoding="utf-8").split("\nmodel:")[0]
    commands = ("train.py", "python -m facemask pretrain")  # a pretraining config states pretrain's
    assert any(f"{c} configs/{name}.yaml" in header for c in commands) and "Expected" in header
    cfg = load_config(path)
    assert cfg.training["output_dir"]


def test_a_config_header_that_quotes_seeds_names_the_seed_the_config_trains():
    """quickstart-lora.yaml's header quoted seeds 0, 1, 2 while the file trained seed 42: a newcomer
    running it could not get any figure it quoted."""
    import re

    import yaml

    for path in sorted((REPO / "configs").glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        header = "".join(line[1:] for line in text.splitlines(keepends=True) if line.startswith("#"))
        seed = (yaml.safe_load(text).get("training") or {}).get("seed")
        for quoted in re.findall(r"over seeds ((?:\d+, )*\d+)", " ".join(header.split())):
            seeds = [int(s) for s in quoted.split(", ")]
            assert seed in seeds, f"{path.name}: its header quotes seeds {seeds}, it trains seed {seed}"


def test_training_keys_read_from_transformers_source_are_the_dataclass_fields():
    """The names a misspelled training key is checked against, read without importing
    transformers, are TrainingArguments' init fields."""
    from facemask.config.validation import _fields_in_source, training_argument_types

    assert _fields_in_source() == set(training_argument_types())


@pytest.mark.parametrize("entry", [["train.py"], ["pretrain.py"], ["-m", "facemask", "train"],
                                   ["-m", "facemask", "pretrain"]])
def test_a_misspelled_key_is_reported_before_torch_is_imported(entry, tmp_path):
    """A typo used to cost the import of torch and transformers (seconds) before it was named: the
    entry points check the config's keys first. Here those imports fail, so only a check made before
    them can answer, with exit code 2 and the nearest key."""
    import subprocess
    import sys
    import textwrap

    from test_runtime import BLOCKER

    config = "configs/pretrain-quickstart.yaml" if "pretrain" in entry[-1] else "configs/quickstart.yaml"
    for typo, nearest in (("data.trian_dir=photos", "did you mean 'train_dir'?"),
                          ("training.learning_rat=1e-4", "did you mean 'learning_rate'?")):
        argv = [*(entry if entry[0] != "-m" else ["facemask", entry[-1]]), config, typo,
                f"training.output_dir={tmp_path / 'out'}"]
        run = (f"runpy.run_module('facemask', run_name='__main__', alter_sys=True)" if entry[0] == "-m" else
               f"runpy.run_path({str(REPO / entry[0])!r}, run_name='__main__')")
        script = BLOCKER.format(absent={"torch"}) + textwrap.dedent(f"""
            import runpy
            sys.argv = {argv!r}
            {run}
        """)
        # From another folder: the config is the one the package carries.
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                              env={**__import__("os").environ, "PYTHONPATH": str(REPO)}, timeout=120)
        assert done.returncode == 2, done.stderr
        assert f"unknown key '{typo.split('=')[0]}'" in done.stderr and nearest in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_a_config_that_is_not_a_file_is_one_the_package_carries(tmp_path, monkeypatch):
    """`configs/quickstart.yaml` (or `quickstart.yaml`) from any folder is the package's config, as
    with an installed package; a file of the user's of that name wins; anything else is refused
    with the names the package carries."""
    import facemask
    from facemask.config.loading import config_path

    monkeypatch.chdir(tmp_path)
    bundled = facemask.CONFIGS / "quickstart.yaml"
    assert config_path("configs/quickstart.yaml") == bundled == config_path("quickstart.yaml")
    assert config_path("configs/accelerate/multi-cpu.yaml") == facemask.CONFIGS / "accelerate" / "multi-cpu.yaml"
    assert load_config("configs/quickstart.yaml") == load_config(bundled)
    mine = tmp_path / "configs" / "quickstart.yaml"
    mine.parent.mkdir()
    mine.write_text(BASE, encoding="utf-8")
    assert config_path("configs/quickstart.yaml") == Path("configs/quickstart.yaml")
    assert load_config("configs/quickstart.yaml").training["output_dir"] == "OUT"
    for missing in ("configs/quickstrat.yaml", "../facemask/configs/quickstart.yaml", str(tmp_path / "x.yaml")):
        with pytest.raises(ConfigError, match=r"config file not found: .*configs/NAME.yaml with NAME one of .*"
                                              r"quickstart, quickstart-beit"):
            config_path(missing)
