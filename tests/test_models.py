import pytest
import timm
import torch

from pipeline.errors import ConfigError
from pipeline.models import available_segmenters, build_classifier, build_segmenter

TINY_UNET = {"name": "Unet", "encoder": "tu-test_resnet", "params": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}}


def test_classifier_by_name_with_local_pretrained_weights(tmp_path):
    source = timm.create_model("test_resnet", num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    model = build_classifier({"name": "test_resnet", "pretrained_path": str(tmp_path / "weights.pt")}, num_classes=7)
    assert torch.equal(model.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)  # head re-made for 7 classes


def test_segmenter_by_name_with_local_encoder_weights(tmp_path):
    model = build_segmenter(TINY_UNET, num_classes=4)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4, 32, 32)
    torch.save(model.encoder.state_dict(), tmp_path / "encoder.pt")
    again = build_segmenter({**TINY_UNET, "pretrained_path": str(tmp_path / "encoder.pt")}, num_classes=4)
    for a, b in zip(model.encoder.state_dict().values(), again.encoder.state_dict().values()):
        assert torch.equal(a, b)


def test_unknown_names_and_missing_weights_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown timm model"):
        build_classifier({"name": "not_a_model"}, 3)
    with pytest.raises(ConfigError, match="unknown segmentation architecture"):
        build_segmenter({"name": "NotANet"}, 3)
    with pytest.raises(ConfigError, match="does not exist"):
        build_classifier({"name": "test_resnet", "pretrained_path": str(tmp_path / "missing.pt")}, 3)
    assert "unet" in available_segmenters()
