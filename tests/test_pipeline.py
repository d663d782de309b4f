"""The preprocessing cache and the batched augmentation (the input pipeline of issue 7)."""

import io
import json
import logging
import os

import datasets
import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image
from safetensors.torch import load_file

import train
from facemask.config.schema import DataConfig, ModelConfig
from facemask.data.synthetic import synthetic_dataset
from facemask.pipeline.augment import BatchTransform
from facemask.pipeline.cache import CacheSpec, build_or_load, collate_cached
from facemask.pipeline.geometry import INDEX_COLUMN, AugmentationClock
from facemask.pipeline.per_image import make_transforms
from facemask.pipeline.processor import load_image_processor


def _processor(side=32, **overrides):
    return load_image_processor(ModelConfig(from_config={"model_type": "vit", "image_size": side},
                                            image_processor=overrides or None))


def _photos(count=12, seed=0, replace=None):
    """Images of mixed sizes, aspect ratios and modes, as datasets stores undecoded files;
    `replace` maps positions to other stored items."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(count):
        w, h = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        base = rng.integers(0, 255, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((w, h), Image.BICUBIC)
        if i % 3 == 1:
            image = image.convert("L")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        items.append({"bytes": buffer.getvalue(), "path": None})
    for index, item in (replace or {}).items():
        items[index] = item
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=["a", "b"])})
    return datasets.Dataset.from_dict({"image": items, "label": [i % 2 for i in range(count)]}, features=features)


def _batch(cached, indices=None):
    return collate_cached(cached.__getitems__(list(range(len(cached))) if indices is None else indices))


@pytest.mark.parametrize("overrides", [{}, {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
                                            "resample": 3}])
def test_evaluation_batches_equal_the_image_processor(tmp_path, overrides):
    processor = _processor(32, **overrides)
    ds = _photos()
    spec = CacheSpec.for_split(processor, train=False)
    cached, _ = build_or_load(ds, "validation", "image", "label", spec, processor, tmp_path)
    ours = BatchTransform(processor, DataConfig(), 32)(_batch(cached), train=False)["pixel_values"]
    images = [Image.open(io.BytesIO(item["bytes"])).convert("RGB") for item in ds["image"]]
    reference = processor(images, return_tensors="pt")["pixel_values"]
    assert type(processor).__name__ == "ViTImageProcessorPil"
    assert ours.shape == reference.shape == (12, 3, 32, 32) and ours.dtype == reference.dtype
    assert torch.equal(ours, reference)


def test_reused_output_holds_each_new_batch_and_is_off_when_metrics_keep_inputs(tmp_path):
    from transformers import TrainingArguments

    from facemask.training.modeling import build_model
    from facemask.training.trainer import FaceMaskTrainer

    processor = _processor(32)
    cached, _ = build_or_load(_photos(), "validation", "image", "label", CacheSpec.for_split(processor, False),
                              processor, tmp_path)
    transform = BatchTransform(processor, DataConfig(), 32)
    first, second = _batch(cached, [0, 1, 2]), _batch(cached, [3, 4, 5])
    fresh = [transform(b, train=False)["pixel_values"] for b in (first, second)]
    transform.reuse_output = True
    a = transform(first, train=False)["pixel_values"]
    assert torch.equal(a, fresh[0])
    b = transform(second, train=False)["pixel_values"]
    assert b.data_ptr() == a.data_ptr() and torch.equal(b, fresh[1])

    model = build_model(ModelConfig(from_config={"model_type": "vit", "image_size": 32, "num_hidden_layers": 1,
                                                 "hidden_size": 32, "num_attention_heads": 2,
                                                 "intermediate_size": 32}), {0: "a", 1: "b"}, {"a": 0, "b": 1})
    for keep, reuse in (([], True), (["inputs"], False)):
        args = TrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True, report_to="none",
                                 include_for_metrics=keep)
        FaceMaskTrainer(model=model, args=args, batch_transform=transform)
        assert transform.reuse_output is reuse


def test_cache_is_reused_and_rebuilt_when_an_image_or_setting_changes(tmp_path):
    processor = _processor(32)
    ds = _photos()
    spec = CacheSpec.for_split(processor, train=True)
    first, report = build_or_load(ds, "train", "image", "label", spec, processor, tmp_path)
    assert not report.reused and report.images == 12 and "decoded" in report.describe()
    again, report = build_or_load(ds, "train", "image", "label", spec, processor, tmp_path)
    assert report.reused and "no decoding" in report.describe() and report.path == str(first.path)
    assert torch.equal(_batch(again)["pixels"], _batch(first)["pixels"])
    relabelled = ds.map(lambda row: {"label": 1 - row["label"]})
    flipped, report = build_or_load(relabelled, "train", "image", "label", spec, processor, tmp_path)
    assert report.reused and _batch(flipped)["labels"].tolist() == [1 - i % 2 for i in range(12)]

    changed = _photos(replace={5: _photos(seed=1)[5]["image"]})
    _, report = build_or_load(changed, "train", "image", "label", spec, processor, tmp_path)
    assert not report.reused
    bigger = CacheSpec.for_split(processor, train=True, scale=1.5)
    assert bigger.side == 48
    cached, report = build_or_load(ds, "train", "image", "label", bigger, processor, tmp_path)
    assert not report.reused and _batch(cached)["pixels"].shape == (12, 48, 48, 3)
    assert len(list(tmp_path.iterdir())) == 3  # no partial folders left behind


def test_cached_split_pickles_by_reference(tmp_path):
    import pickle

    processor = _processor(32)
    cached, _ = build_or_load(_photos(40), "train", "image", "label", CacheSpec.for_split(processor, True), processor,
                              tmp_path)
    blob = pickle.dumps(cached)
    assert len(blob) < 40 * 37 * 37 * 3 / 4  # the file's name travels, not its pixels
    restored = pickle.loads(blob)
    assert torch.equal(_batch(restored, [3, 1, 39])["pixels"], _batch(cached, [3, 1, 39])["pixels"])


def test_a_file_touched_on_disk_rebuilds_its_cache(tmp_path, synth_folder):
    from facemask.data.sources import load_image_folder

    ds = load_image_folder(synth_folder, "train").cast_column("image", datasets.Image(decode=False))
    processor = _processor(32)
    spec = CacheSpec.for_split(processor, train=False)
    _, report = build_or_load(ds, "train", "image", "label", spec, processor, tmp_path / "c")
    assert not report.reused
    path = ds[0]["image"]["path"]
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    _, report = build_or_load(ds, "train", "image", "label", spec, processor, tmp_path / "c")
    assert not report.reused


def test_several_processes_build_the_same_cache_in_order(tmp_path):
    processor = _processor(32)
    ds = _photos(40)
    spec = CacheSpec.for_split(processor, train=True)
    one, _ = build_or_load(ds, "train", "image", "label", spec, processor, tmp_path / "one", num_proc=1)
    two, report = build_or_load(ds, "train", "image", "label", spec, processor, tmp_path / "two", num_proc=2)
    assert report.processes == 2 and len(json.loads((tmp_path / "two").glob("*/cache.json").__next__().read_text())
                                             ["files"]) == 2
    indices = [39, 0, 21, 20, 19, 5]
    assert torch.equal(_batch(one, indices)["pixels"], _batch(two, indices)["pixels"])
    assert _batch(two, indices)["labels"].tolist() == [i % 2 for i in indices]


def test_undecodable_image_names_itself(tmp_path):
    ds = _photos(4, replace={2: {"bytes": b"not an image", "path": "photos/broken.jpg"}})
    processor = _processor(32)
    with pytest.raises(ValueError, match=r"cannot decode photos/broken.jpg.*on_bad_image=skip"):
        build_or_load(ds, "train", "image", "label", CacheSpec.for_split(processor, True), processor, tmp_path)
    assert not any(tmp_path.iterdir())


def test_full_crop_with_flip_is_the_mirrored_image(tmp_path):
    processor = _processor(32)
    ds = _photos(6)
    cfg = DataConfig(crop_scale=[1.0, 1.0], crop_ratio=[1.0, 1.0], hflip_prob=1.0)
    spec = CacheSpec.for_split(processor, train=True, scale=1.0)
    cached, _ = build_or_load(ds, "train", "image", "label", spec, processor, tmp_path)
    batch = _batch(cached)
    # As if the sources were square: the crop is then the whole image, resampled 1:1.
    batch["width"] = batch["height"] = torch.full((6,), 50)
    transform = BatchTransform(processor, cfg, 32, AugmentationClock(0))
    flipped = transform(batch, train=True)["pixel_values"]
    plain = transform(batch, train=False)["pixel_values"]
    assert torch.allclose(flipped, plain.flip(-1), atol=1e-5)
    assert not torch.allclose(flipped, plain, atol=0.1)


def test_batched_augmentation_matches_the_per_image_path(tmp_path):
    """Same (seed, epoch, index) -> same crop and flip in both paths, up to resampling."""
    processor = _processor(48)
    ds = synthetic_dataset(24, 64, seed=5).cast_column("image", datasets.Image(decode=False))
    cfg = DataConfig(crop_scale=[0.3, 1.0])
    clock = AugmentationClock(seed=11)
    per_image, _ = make_transforms(processor, cfg, "image", "label", clock)
    indexed = ds.add_column(INDEX_COLUMN, list(range(len(ds))))
    indexed.set_transform(per_image)

    cached, _ = build_or_load(ds, "train", "image", "label", CacheSpec.for_split(processor, True), processor,
                              tmp_path)
    transform = BatchTransform(processor, cfg, 48, clock)

    def gaps(epoch_per_image, epoch_batched):
        clock.epoch = epoch_per_image
        reference = torch.stack([indexed[i]["pixel_values"] for i in range(len(ds))])
        clock.epoch = epoch_batched
        ours = transform(_batch(cached), train=True)["pixel_values"]
        assert ours.shape == reference.shape
        return (ours - reference).abs().mean(dim=(1, 2, 3))

    same = gaps(3, 3)
    other = gaps(3, 4)
    assert same.max() < 0.08, same
    assert other.mean() > 4 * same.mean()


def test_batched_resampling_of_gpus_matches_the_per_sample_resize(tmp_path):
    processor = _processor(48)
    ds = synthetic_dataset(16, 64, seed=2).cast_column("image", datasets.Image(decode=False))
    cached, _ = build_or_load(ds, "train", "image", "label", CacheSpec.for_split(processor, True), processor, tmp_path)
    clock = AugmentationClock(1)
    transform = BatchTransform(processor, DataConfig(crop_scale=[0.3, 1.0]), 48, clock)
    transform.resize_uint8 = True
    each = transform(_batch(cached), train=True)["pixel_values"]
    transform.resize_uint8 = False
    batched = transform(_batch(cached), train=True)["pixel_values"]
    assert each.shape == batched.shape == (16, 3, 48, 48)
    gap = (each - batched).abs().mean(dim=(1, 2, 3))
    clock.epoch = 1  # other crops and flips: what "different" looks like
    other = (transform(_batch(cached), train=True)["pixel_values"] - each).abs().mean(dim=(1, 2, 3))
    assert gap.max() < 0.06 and other.mean() > 4 * gap.mean(), (gap, other)


def test_second_run_reuses_the_cache_and_the_first_reports_its_build(tmp_path, caplog):
    cache = tmp_path / "cache"
    config = tiny_config(tmp_path, data={"synthetic": True, "synthetic_num_images": 60, "synthetic_image_size": 40,
                                         "test_split": 0.2, "preprocess_dir": str(cache)})
    caplog.set_level(logging.INFO, logger="facemask")
    train.main([str(config)])
    first = json.loads((tmp_path / "out" / "run_info.json").read_text())["preprocessing"]
    assert [r["split"] for r in first] == ["train", "validation", "test"]
    assert not any(r["reused"] for r in first) and all(r["seconds"] > 0 for r in first)
    assert "built the preprocessing cache" in caplog.text
    caplog.clear()
    train.main([str(config), "--overwrite"])
    second = json.loads((tmp_path / "out" / "run_info.json").read_text())["preprocessing"]
    assert all(r["reused"] for r in second) and [r["path"] for r in second] == [r["path"] for r in first]
    assert "reused the preprocessing cache" in caplog.text and "built the" not in caplog.text


def test_per_image_path_still_trains(tmp_path):
    results = train.main([str(tiny_config(tmp_path)), "data.preprocess=per_image"])
    assert results["train"]["train_loss"] > 0 and "test_accuracy" in results["test"]
    assert json.loads((tmp_path / "out" / "run_info.json").read_text())["preprocessing"] == []


def record_training_inputs(monkeypatch):
    """Patches the Trainer to note, per optimisation step, the epoch and each sample's pixel digest."""
    import hashlib

    from facemask.training.trainer import FaceMaskTrainer

    seen = []
    original = FaceMaskTrainer.training_step

    def training_step(self, model, inputs, *args, **kwargs):
        pixels = inputs["pixel_values"]
        digests = [hashlib.sha1(p.numpy().tobytes()).hexdigest() for p in pixels]
        seen.append((self.state.global_step + 1, int(self.state.epoch + 1e-6), digests))
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(FaceMaskTrainer, "training_step", training_step)
    return seen


@pytest.mark.slow
def test_per_image_path_with_persistent_workers_draws_new_crops_each_epoch_and_resumes_exactly(
        tmp_path, monkeypatch):
    # Item: the epoch callback ran in the main process only, so persistent workers repeated epoch
    # 0's crops every epoch (and a resumed run drew other crops than an uninterrupted one).
    training = {"max_steps": -1, "num_train_epochs": 3, "dataloader_num_workers": 2,
                "dataloader_persistent_workers": True, "save_strategy": "steps", "save_steps": 7}
    data = {"synthetic": True, "synthetic_num_images": 48, "synthetic_image_size": 40, "test_split": 0.2,
            "preprocess": "per_image"}
    seen = record_training_inputs(monkeypatch)
    train.main([str(tiny_config(tmp_path / "straight", data=data, training=training))])
    by_epoch = {}
    for _, epoch, digests in seen:
        by_epoch.setdefault(epoch, []).extend(digests)
    assert sorted(by_epoch) == [0, 1, 2]
    # The same images every epoch, each cut and mirrored anew: no crop repeats across epochs.
    assert len({len(d) for d in by_epoch.values()}) == 1
    assert not set(by_epoch[0]) & set(by_epoch[1]) and not set(by_epoch[1]) & set(by_epoch[2])

    straight_out = tmp_path / "straight" / "out"
    checkpoint = straight_out / "checkpoint-7"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert 1 < state["epoch"] < 2  # resumed mid-epoch 1: the skipped batches and the clock both matter
    straight_steps = {step: digests for step, _, digests in seen}
    seen.clear()
    resumed_config = tiny_config(tmp_path / "resumed", data=data, training=training)
    train.main([str(resumed_config), f"--resume={checkpoint}"])
    assert [step for step, _, _ in seen] == list(range(8, max(straight_steps) + 1))
    assert all(digests == straight_steps[step] for step, _, digests in seen)
    a = load_file(straight_out / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "out" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _drawn(sizes=((96, 48), (40, 88), (75, 60), (52, 52), (120, 70), (45, 100))):
    """Non-square drawings (smooth gradients, shapes off centre and in the corners) as stored files."""
    from PIL import ImageDraw

    items = []
    for i, (w, h) in enumerate(sizes):
        x, y = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
        base = np.stack([x * 200 + 20, y * 180 + 30, (1 - x) * 120 + y * 80], axis=-1).astype(np.uint8)
        image = Image.fromarray(base)
        draw = ImageDraw.Draw(image)
        draw.ellipse((w * 0.3, h * 0.25, w * 0.7, h * 0.75), fill=(230, 60 + 30 * i, 40))
        draw.rectangle((0, 0, w * 0.2, h * 0.2), fill=(20, 20, 200))
        draw.rectangle((w * 0.75, h * 0.8, w, h), fill=(250, 250, 30))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        items.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({"image": datasets.Image(decode=False),
                                  "label": datasets.ClassLabel(names=["a", "b"])})
    return datasets.Dataset.from_dict({"image": items, "label": [i % 2 for i in range(len(items))]}, features=features)


_CENTRE_CROP = {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}, "do_center_crop": True}


class _Recorder(torch.nn.Module):
    """A stand-in classifier that keeps the pixel values it is handed."""

    def __init__(self):
        super().__init__()
        from transformers import PretrainedConfig

        self.config = PretrainedConfig(id2label={0: "a", 1: "b"})
        self.seen = []
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def forward(self, pixel_values):
        from types import SimpleNamespace

        self.seen.append(pixel_values)
        return SimpleNamespace(logits=torch.zeros(len(pixel_values), 2))


def _train_inputs(processor, data_cfg, ds, preprocess, tmp_path):
    """The train split's model inputs as a run reads them (pipeline/inputs.py), in order."""
    from facemask.config.schema import ExperimentConfig
    from facemask.data.sources import PreparedData
    from facemask.pipeline.inputs import prepare_inputs

    data_cfg.preprocess, data_cfg.preprocess_dir = preprocess, str(tmp_path / "cache")
    prepared = PreparedData(datasets.DatasetDict({"train": ds}), ["a", "b"], "image", "label", "drawn")
    pipeline = prepare_inputs(prepared, processor, ExperimentConfig(data=data_cfg, training={"output_dir": "x"}))
    train_split = pipeline.splits["train"]
    if pipeline.batch_transform is None:
        return torch.stack([train_split[i]["pixel_values"] for i in range(len(ds))])
    return pipeline.batch_transform(_batch(train_split), train=True)["pixel_values"]


def _deit(side=32):
    from transformers import DeiTImageProcessorPil

    return DeiTImageProcessorPil(size={"height": side + 8, "width": side + 8},
                                 crop_size={"height": side, "width": side})


@pytest.mark.parametrize("make", [lambda: _processor(32, **_CENTRE_CROP), _deit], ids=["shorter_side", "deit"])
def test_a_centre_cropping_processor_gives_training_and_evaluation_one_geometry(tmp_path, make):
    """Centre-cropping preprocessing (a config's override: shorter side to 40, centre crop 32; and
    DeiT's own: squash to 40x40, bicubic, centre crop 32): evaluation (cache and per-image), predict,
    and training without augmentation all give the processor's own pixels; training with an
    augmentation that crops nothing (the whole region, never flipped) gives them up to resampling,
    in either input path."""
    from facemask.evaluation.predict import predict_files
    from facemask.pipeline.inputs import eval_batches, eval_view

    processor = make()
    assert processor.do_center_crop
    ds = _drawn()
    images = [Image.open(io.BytesIO(item["bytes"])).convert("RGB") for item in ds["image"]]
    reference = processor(images, return_tensors="pt")["pixel_values"]
    assert reference.shape == (6, 3, 32, 32)

    _, transform = eval_batches(processor, "cache")
    cached = eval_view(ds, "validation", "image", "label", processor, "cache", str(tmp_path / "cache"))
    assert torch.equal(transform(_batch(cached), train=False)["pixel_values"], reference)
    per_image = eval_view(ds, "validation", "image", "label", processor, "per_image")
    assert torch.equal(torch.stack([per_image[i]["pixel_values"] for i in range(6)]), reference)

    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    recorder = _Recorder()
    rows, skipped = predict_files(recorder, processor, paths, batch_size=4)
    assert len(rows) == 6 and not skipped
    assert torch.equal(torch.cat(recorder.seen), reference)

    for preprocess in ("cache", "per_image"):
        plain = _train_inputs(processor, DataConfig(augment=False), ds, preprocess, tmp_path)
        assert torch.equal(plain, reference), preprocess
        # The whole area at an aspect range that holds the region's own (square for the shorter
        # side's crop, the image's for DeiT's squash-then-crop).
        whole = DataConfig(crop_scale=[1.0, 1.0], crop_ratio=[0.1, 10.0], hflip_prob=0.0)
        gap = (_train_inputs(processor, whole, ds, preprocess, tmp_path) - reference).abs()
        # Measured: at most 0.012 per image from the cache (resampled twice: cached at 8/7 the
        # side, then to the side), 0.023 per image (the box in whole pixels); the squashed whole
        # image the cache held before differed by 0.10-0.34.
        assert gap.mean() < 0.02 and gap.mean(dim=(1, 2, 3)).max() < 0.04, (preprocess, gap.mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("overrides", [{}, _CENTRE_CROP])
def test_random_crops_agree_between_input_paths_on_non_square_images(tmp_path, overrides):
    """The same (seed, epoch, index) key draws the same crop of the same region in both paths,
    whether the processor squashes the image or centre-crops it."""
    processor = _processor(32, **overrides)
    ds = _drawn()
    cfg = DataConfig(crop_scale=[0.3, 1.0])
    clock = AugmentationClock(seed=3)
    per_image, _ = make_transforms(processor, cfg, "image", "label", clock)
    indexed = ds.add_column(INDEX_COLUMN, list(range(len(ds))))
    indexed.set_transform(per_image)
    spec = CacheSpec.for_split(processor, True)
    cached, _ = build_or_load(ds, "train", "image", "label", spec, processor, tmp_path)
    if not overrides:  # the squashing processor's training cache: its own resize, at the cache's side
        images = [Image.open(io.BytesIO(item["bytes"])).convert("RGB") for item in ds["image"]]
        own = processor(images, size={"height": spec.side, "width": spec.side}, do_rescale=False,
                        do_normalize=False, return_tensors="pt")["pixel_values"]
        assert torch.equal(_batch(cached)["pixels"].permute(0, 3, 1, 2), own.to(torch.uint8))
    transform = BatchTransform(processor, cfg, 32, clock)

    def gaps(epoch_per_image, epoch_batched):
        clock.epoch = epoch_per_image
        reference = torch.stack([indexed[i]["pixel_values"] for i in range(len(ds))])
        clock.epoch = epoch_batched
        return (transform(_batch(cached), train=True)["pixel_values"] - reference).abs().mean(dim=(1, 2, 3))

    same, other = gaps(2, 2), gaps(2, 5)
    assert same.max() < 0.06 and other.mean() > 4 * same.mean(), (same, other)
