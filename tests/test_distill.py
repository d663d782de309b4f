"""recipe.distill: a student trained on a teacher's soft targets and the labels; the teacher sees
the student's batch, its logits cached when nothing varies, its accuracy on the card."""

import csv
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, TINY_MODELS, tiny_config
from transformers import AutoImageProcessor, AutoModelForImageClassification

import train
from facemask.config.loading import load_config
from facemask.config.schema import ConfigError, DistillConfig
from facemask.data.synthetic import sample
from facemask.recipe.distill import Teacher, distillation_loss
from facemask.training.trainer import FaceMaskTrainer

SMALL = {**TINY_MODELS["vit"], "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}


@pytest.fixture(scope="module")
def teacher_run(six_step_run):
    return six_step_run


def student_config(tmp_path, teacher, distill=None, recipe=None, data=None, training=None):
    return tiny_config(tmp_path, model={"from_config": SMALL}, data=data, training=training,
                       recipe={"distill": {"teacher": str(teacher), **(distill or {})}, **(recipe or {})})


def test_the_loss_is_the_weighted_sum_of_cross_entropy_and_the_tempered_kl():
    student, teacher = torch.randn(5, 2), torch.randn(5, 2)
    hard = torch.tensor(0.7)
    t = 3.0
    p, q = F.softmax(teacher / t, -1), F.log_softmax(student / t, -1)
    kl = (p * (p.log() - q)).sum(-1).mean()
    assert distillation_loss(student, teacher, hard, 0.25, t) == pytest.approx(float(0.75 * hard + 0.25 * t * t * kl),
                                                                              rel=1e-5)
    # A student that already agrees with its teacher is left with the hard term only.
    assert distillation_loss(teacher, teacher, hard, 0.25, t) == pytest.approx(0.75 * 0.7, abs=1e-6)


def test_the_teacher_gets_its_own_input_and_its_cache_never_changes_a_target(teacher_run, tmp_path):
    # A student processor with another normalisation and image size than the teacher's.
    student_processor = AutoImageProcessor.from_pretrained(teacher_run)
    student_processor.image_mean, student_processor.image_std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    teacher = Teacher(DistillConfig(teacher=str(teacher_run)), student_processor, cache=True)
    images = [sample(3, i, 40)[0] for i in range(4)]
    own = teacher.processor(images=images, return_tensors="pt")["pixel_values"]
    theirs = student_processor(images=images, return_tensors="pt")["pixel_values"]
    assert torch.allclose(teacher._input(theirs), own, atol=1e-5)
    plain = AutoModelForImageClassification.from_pretrained(teacher_run).eval()
    with torch.no_grad():
        expected = plain(pixel_values=own).logits
    first = teacher.logits(theirs)
    assert torch.allclose(first, expected, atol=1e-5) and (teacher.misses, teacher.hits) == (4, 0)
    again = teacher.logits(torch.cat([theirs[2:], theirs[:1]]))  # three seen, in another order
    assert torch.equal(again, torch.cat([first[2:], first[:1]])) and teacher.hits == 3
    # A student at another image size: its batch is resized to the teacher's, close to what the
    # teacher's own processor makes of the same images (PIL resizes from the source instead).
    student_processor.size = {"height": 48, "width": 48}
    big = student_processor(images=images, return_tensors="pt")["pixel_values"]
    assert big.shape[-1] == 48 and teacher._input(big).shape == own.shape
    assert (teacher._input(big) - own).abs().mean() < 0.05
    assert torch.allclose(teacher.logits(big), expected, atol=0.01) and teacher.misses == 8


def test_a_student_learns_from_the_teacher_on_the_batch_it_sees(teacher_run, tmp_path, monkeypatch):
    steps = []  # per training step: what the student model was fed, its logits, the targets, the loss
    compute_loss = FaceMaskTrainer.compute_loss

    def spy_loss(self, model, inputs, return_outputs=False, *args, **kwargs):
        if not model.training:
            return compute_loss(self, model, inputs, return_outputs, *args, **kwargs)
        fed = {}
        hook = model.register_forward_pre_hook(lambda _module, _args, kw: fed.update(kw), with_kwargs=True)
        try:
            loss, outputs = compute_loss(self, model, inputs, True, *args, **kwargs)
        finally:
            hook.remove()
        steps.append({"pixels": fed["pixel_values"].detach().clone(), "logits": outputs.logits.detach().clone(),
                      "targets": inputs["labels"].detach().clone(), "loss": loss.detach().clone()})
        return (loss, outputs) if return_outputs else loss

    monkeypatch.setattr(FaceMaskTrainer, "compute_loss", spy_loss)
    # Augmentation and mixup on: the teacher must see the mixed, augmented batch, not the image.
    alpha, t = 0.7, 2.0
    config = student_config(tmp_path, teacher_run, {"alpha": alpha, "temperature": t},
                            recipe={"mixup_alpha": 0.4, "color_jitter": 0.3},
                            training={"max_steps": 3, "eval_strategy": "steps", "eval_steps": 3})
    metrics = train.main([str(config)])
    assert len(steps) == 3
    # The batches were mixed (soft targets), so the images alone would give the teacher other logits.
    assert any(((s["targets"] > 0) & (s["targets"] < 1)).any() for s in steps)

    # Each step's loss by hand: the teacher's logits of what the student was fed, converted from the
    # student's normalisation to the teacher's own processor's, then (1 - alpha) CE + alpha T^2 KL.
    plain = AutoModelForImageClassification.from_pretrained(teacher_run).eval()
    mine = AutoImageProcessor.from_pretrained(tmp_path / "out")
    theirs = AutoImageProcessor.from_pretrained(teacher_run)

    def channels(values):
        return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)

    for s in steps:
        pixels = s["pixels"] * channels(mine.image_std) + channels(mine.image_mean)
        assert pixels.shape[-2:] == (theirs.size["height"], theirs.size["width"])
        with torch.no_grad():
            teacher = plain(pixel_values=(pixels - channels(theirs.image_mean)) / channels(theirs.image_std)).logits
        hard = F.cross_entropy(s["logits"], s["targets"])
        soft = F.kl_div(F.log_softmax(s["logits"] / t, -1), F.softmax(teacher / t, -1), reduction="batchmean")
        assert float(s["loss"]) == pytest.approx(float((1 - alpha) * hard + alpha * t * t * soft), rel=1e-5)

    out = tmp_path / "out"
    record = json.loads((out / "teacher.json").read_text())
    assert record["teacher"] == teacher_run.name and record["alpha"] == 0.7 and record["cached_logits"] is False
    # The teacher judged on the student's test split: the same images and metric as its own run's test split.
    own = json.loads((teacher_run / "test_results.json").read_text())
    assert record["results"]["test"]["test_accuracy"] == pytest.approx(own["test_accuracy"])
    assert set(record["results"]) == {"eval", "test"}
    # The student carved the teacher's own validation and test splits (same data, same seed): the
    # teacher's run records them by digest, so its scores there are held out.
    assert record["held_out"] == {"eval": True, "test": True}
    card = (out / "README.md").read_text()
    assert "### Distillation" in card and f"- Teacher: `{teacher_run.name}`" in card
    used = record["results_as_used"]["test"]["test_accuracy"]
    assert f"| test | {used:.4f} | {own['test_accuracy']:.4f} | {metrics['test']['test_accuracy']:.4f} |" in card
    assert str(teacher_run) not in card and "recipe.distill" not in card.split("### Distillation")[0]


def test_a_teacher_that_may_have_trained_on_the_students_splits_is_not_presented_as_held_out(teacher_run, tmp_path):
    # Another seed carves other splits of the same drawn images: the teacher trained on some of the
    # student's test images, and nothing it recorded shows which.
    train.main([str(student_config(tmp_path, teacher_run, training={"seed": 1, "eval_strategy": "steps",
                                                                     "eval_steps": 2}))])
    record = json.loads((tmp_path / "out" / "teacher.json").read_text())
    assert record["held_out"] == {"eval": None, "test": None}
    card = (tmp_path / "out" / "README.md").read_text()
    accuracy = record["results"]["test"]["test_accuracy"]
    assert f"| test | {accuracy:.4f} (*) |" in card
    assert "(*) Not a held-out score of the teacher: validation: not shown to be held out" in card
    # The teacher's own training split as the student's test split: known to be trained on.
    from facemask.data.inspection import split_digest
    from facemask.recipe.distill import teacher_held_out

    info = json.loads((teacher_run / "run_info.json").read_text())
    train_digest = info["data"]["splits"]["train"]["content_sha256"]
    assert teacher_held_out(str(teacher_run), {"test": train_digest, "eval": "other"}) == {"test": False, "eval": None}
    assert teacher_held_out("someone/hub-model", {"test": train_digest}) == {"test": None}
    assert split_digest(None, [0], ["a"]) is None


def test_without_augmentation_each_image_goes_through_the_teacher_once(teacher_run, tmp_path):
    data = {"synthetic": True, "synthetic_num_images": 60, "synthetic_image_size": 40, "test_split": 0.2,
            "augment": False}
    config = student_config(tmp_path, teacher_run, data=data, training={"max_steps": 12})
    train.main([str(config)])
    record = json.loads((tmp_path / "out" / "teacher.json").read_text())
    info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    n_train = info["data"]["splits"]["train"]["num_images"]
    assert record["cached_logits"] is True
    assert record["logit_cache"]["misses"] == n_train and record["logit_cache"]["hits"] == 12 * 8 - n_train


def test_bad_distillation_settings_are_errors_before_any_work(teacher_run, tmp_path):
    with pytest.raises(ConfigError, match="cache_logits.*mixup_alpha.*mixed image"):
        load_config(student_config(tmp_path / "a", teacher_run, {"cache_logits": True}, recipe={"mixup_alpha": 0.4}))
    with pytest.raises(ConfigError, match="cache_logits.*data.augment"):
        load_config(student_config(tmp_path / "b", teacher_run, {"cache_logits": True}))
    with pytest.raises(ConfigError, match=r"recipe.distill.alpha.*remove recipe.distill"):
        load_config(student_config(tmp_path / "c", teacher_run, {"alpha": 0.0}))
    with pytest.raises(ConfigError, match=r"recipe.distill.teacher.*cannot load"):
        train.main([str(student_config(tmp_path / "d", tmp_path / "no-such-run"))])
    # A teacher of the same classes in another order would teach the opposite.
    swapped = tmp_path / "swapped"
    model = AutoModelForImageClassification.from_pretrained(teacher_run)
    labels = [model.config.id2label[i] for i in range(2)][::-1]
    model.config.id2label, model.config.label2id = dict(enumerate(labels)), {n: i for i, n in enumerate(labels)}
    model.save_pretrained(swapped)
    AutoImageProcessor.from_pretrained(teacher_run).save_pretrained(swapped)
    with pytest.raises(ConfigError, match="same names, same order"):
        train.main([str(student_config(tmp_path / "e", swapped))])
    assert not (tmp_path / "e" / "out" / "model.safetensors").exists()
    three = tmp_path / "three"
    AutoModelForImageClassification.from_config(
        AutoModelForImageClassification.from_pretrained(teacher_run).config.__class__(
            **{k: v for k, v in TINY_MODELS["vit"].items() if k != "model_type"}, num_labels=3)).save_pretrained(three)
    with pytest.raises(ConfigError, match="predicts 3 classes"):
        train.main([str(student_config(tmp_path / "f", three))])
    assert not (tmp_path / "f" / "out" / "data_audit.json").exists()  # stopped before the data


def test_the_teacher_is_scored_as_it_was_used_and_at_its_own_resolution(teacher_run, tmp_path):
    """The student reads 16 px, the teacher 32 px: its targets came from 16 px inputs upsampled."""
    from facemask.__main__ import main
    from facemask.data.images import load_image

    assert main(["synth", str(tmp_path / "faces"), "--num-images", "60", "--image-size", "48", "--seed", "4"]) == 0
    config = tiny_config(tmp_path, model={"from_config": {**SMALL, "image_size": 16}},
                         data={"train_dir": str(tmp_path / "faces"), "test_split": 0.3, "preprocess": "per_image",
                               "shortcut_threshold": 1.01, "max_class_ratio": 10},
                         recipe={"distill": {"teacher": str(teacher_run)}})
    metrics = train.main([str(config)])
    out = tmp_path / "out"
    record = json.loads((out / "teacher.json").read_text())
    assert (record["student_side"], record["teacher_side"]) == (16, 32)
    as_used, own = record["results_as_used"]["test"], record["results"]["test"]

    # By hand, on the run's test images: the student's processor, then the student-to-teacher
    # conversion training applies to each batch (renormalise, bilinear upsampling), then the teacher;
    # and the teacher's own processor at its own 32 px.
    student = AutoImageProcessor.from_pretrained(out)
    theirs = AutoImageProcessor.from_pretrained(teacher_run)
    teacher = AutoModelForImageClassification.from_pretrained(teacher_run).eval()
    rows = list(csv.DictReader((out / "test_predictions.csv").open()))
    labels = torch.tensor([teacher.config.label2id[row["true_label"]] for row in rows])
    small = student([load_image(row["file"], 32) for row in rows], return_tensors="pt")["pixel_values"]
    s_mean, s_std, t_mean, t_std = (torch.tensor(v).view(1, 3, 1, 1) for v in (
        student.image_mean, student.image_std, theirs.image_mean, theirs.image_std))
    upsampled = F.interpolate((small * s_std + s_mean - t_mean) / t_std, size=(32, 32), mode="bilinear",
                              align_corners=False, antialias=True)
    full = theirs([load_image(row["file"], 64) for row in rows], return_tensors="pt")["pixel_values"]
    assert small.shape[-1] == 16 and full.shape[-1] == 32
    for pixels, found in ((upsampled, as_used), (full, own)):
        with torch.no_grad():
            logits = teacher(pixel_values=pixels).logits
        assert found["test_accuracy"] == pytest.approx(float((logits.argmax(-1) == labels).float().mean()))
        assert found["test_loss"] == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-4)
    assert own["test_loss"] != pytest.approx(as_used["test_loss"], rel=1e-4)  # two inputs, two scores

    card = (out / "README.md").read_text().split("### Distillation")[1].split("\n## ")[0]
    assert ("| split | teacher accuracy as used in training (student's 16 px input upsampled) | teacher accuracy at "
            "its own resolution (32 px) | this model's accuracy |") in card
    # The teacher trained on other images than these (its own drawn set): not shown to be held out, marked.
    assert record["held_out"]["test"] is None
    assert (f"| test | {as_used['test_accuracy']:.4f} (*) | {own['test_accuracy']:.4f} (*) | "
            f"{metrics['test']['test_accuracy']:.4f} |") in card and "(*) Not a held-out score" in card


def _shipped_distillation_configs():
    import yaml

    configs = sorted((REPO / "configs").glob("*.yaml"))
    found = [c for c in configs if ((yaml.safe_load(c.read_text()) or {}).get("recipe") or {}).get("distill")]
    # ~20 s each: the runnable example in the default suite, the full-size ones with the slow tests.
    return [pytest.param(c, id=c.name, marks=() if c.name == "quickstart-distill.yaml" else pytest.mark.slow)
            for c in found]


@pytest.mark.parametrize("config", _shipped_distillation_configs())
def test_every_shipped_config_with_a_teacher_trains_to_its_card(config, teacher_run, tmp_path):
    # The config's recipe and training arguments as shipped (label smoothing, EMA, best-model reload,
    # per-epoch evaluation), on a tiny model, a little drawn data and a few steps on the CPU.
    out = tmp_path / "out"
    model = [f"model.from_config.{k}={v}" for k, v in SMALL.items()]
    results = train.main([str(config), *model, f"recipe.distill.teacher={teacher_run}", "data.synthetic=true",
                       "data.synthetic_num_images=60", "data.synthetic_image_size=40", "training.max_steps=2",
                       "training.per_device_train_batch_size=8", "training.per_device_eval_batch_size=16",
                       "training.use_cpu=true", "training.bf16=false", "training.dataloader_num_workers=0",
                       "training.logging_steps=1", f"training.output_dir={out}"])
    assert "test_accuracy" in results["test"]
    record = json.loads((out / "teacher.json").read_text())
    assert set(record["results_as_used"]) == {"eval", "test"}
    assert "test_accuracy" in record["results_as_used"]["test"]
    assert "teacher" in (out / "README.md").read_text().lower()
