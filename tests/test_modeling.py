import pytest
import torch
from conftest import TINY_MODELS
from PIL import Image

from facemask.config.schema import ConfigError, ModelConfig
from facemask.pipeline.processor import load_image_processor
from facemask.training.modeling import build_model

LABELS = ({0: "with_mask", 1: "without_mask"}, {"with_mask": 0, "without_mask": 1})


@pytest.mark.parametrize("model_type", ["vit", "beit"])
def test_from_config_builds_a_two_label_model_and_its_processor(model_type):
    cfg = ModelConfig(from_config=TINY_MODELS[model_type])
    model = build_model(cfg, *LABELS)
    assert type(model).__name__ == f"{model_type.capitalize() if model_type == 'beit' else 'ViT'}ForImageClassification"
    assert model.config.id2label == LABELS[0] and model.config.num_labels == 2
    processor = load_image_processor(cfg)
    pixels = processor(Image.new("RGB", (50, 70)), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32)
    assert model(pixel_values=pixels).logits.shape == (1, 2)


def test_unknown_from_config_fields_are_errors():
    with pytest.raises(ConfigError, match="unknown key 'model.from_config.hiden_size'.*'hidden_size'"):
        build_model(ModelConfig(from_config={"model_type": "vit", "hiden_size": 32}), *LABELS)
    with pytest.raises(ConfigError, match="model_type' is 'vitt'; did you mean 'vit'"):
        build_model(ModelConfig(from_config={"model_type": "vitt"}), *LABELS)


def test_processor_overrides_apply():
    cfg = ModelConfig(from_config=TINY_MODELS["vit"], image_processor={"image_mean": [0.0, 0.0, 0.0],
                                                                       "image_std": [1.0, 1.0, 1.0]})
    pixels = load_image_processor(cfg)(Image.new("RGB", (32, 32), (255, 255, 255)), return_tensors="pt")
    assert torch.allclose(pixels["pixel_values"], torch.ones(1, 3, 32, 32))


@pytest.mark.parametrize("model_type", ["vit", "beit"])
def test_checkpoint_folder_gets_a_fresh_two_label_head(tmp_path, model_type):
    # A "pretrained" checkpoint with a 5-class head, saved like a Hub repository.
    source = ModelConfig(from_config=TINY_MODELS[model_type])
    pretrained = build_model(source, {i: f"c{i}" for i in range(5)}, {f"c{i}": i for i in range(5)})
    pretrained.save_pretrained(tmp_path)
    load_image_processor(source).save_pretrained(tmp_path)

    cfg = ModelConfig(name_or_path=str(tmp_path))
    model = build_model(cfg, *LABELS)
    assert model.classifier.out_features == 2 and model.config.id2label == LABELS[0]
    body = {k: v for k, v in pretrained.state_dict().items() if not k.startswith("classifier")}
    loaded = model.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in body.items())
    assert load_image_processor(cfg).size["height"] == 32
