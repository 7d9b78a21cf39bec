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


def _place_in_hub_cache(cache, repo_id: str, state: dict, revision: str = "0123abcd") -> None:
    """The layout huggingface_hub leaves after a download: refs/main -> snapshots/<commit>/file."""
    from safetensors.torch import save_file

    folder = cache / ("models--" + repo_id.replace("/", "--"))
    (folder / "snapshots" / revision).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "snapshots" / revision / "model.safetensors"))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))
    return cache


def test_pretrained_true_loads_timms_file_from_the_local_cache_or_says_where_to_put_it(hub_cache):
    with pytest.raises(ConfigError, match=r"no local copy.*https://huggingface.co/timm/test_resnet.r160_in1k.*"
                                          r"models--timm--test_resnet.r160_in1k.*pretrained_path"):
        build_classifier({"name": "test_resnet", "pretrained": True}, num_classes=3)
    source = timm.create_model("test_resnet", num_classes=1000)
    _place_in_hub_cache(hub_cache, "timm/test_resnet.r160_in1k", source.state_dict())
    model = build_classifier({"name": "test_resnet", "pretrained": True}, num_classes=3)
    assert torch.equal(model.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_pretrained_encoder_from_the_cache_at_smps_pinned_revision(hub_cache):
    from segmentation_models_pytorch.encoders import encoders

    spec = {"name": "Unet", "encoder": "resnet18", "pretrained": True,
            "params": {"encoder_depth": 3, "decoder_channels": [16, 8, 8]}}
    settings = encoders["resnet18"]["pretrained_settings"]["imagenet"]
    with pytest.raises(ConfigError, match=rf"smp-hub/resnet18.imagenet.*{settings['revision']}/model.safetensors"):
        build_segmenter(spec, num_classes=3)
    reference = build_segmenter({**spec, "pretrained": False}, num_classes=3)
    _place_in_hub_cache(hub_cache, settings["repo_id"], reference.encoder.state_dict(), revision=settings["revision"])
    model = build_segmenter(spec, num_classes=3)
    assert torch.equal(model.encoder.state_dict()["conv1.weight"], reference.encoder.state_dict()["conv1.weight"])
    # a timm ("tu-") encoder takes the timm model's own file
    timm_source = timm.create_model("test_resnet", num_classes=1000)
    _place_in_hub_cache(hub_cache, "timm/test_resnet.r160_in1k", timm_source.state_dict())
    tu = build_segmenter({**TINY_UNET, "pretrained": True}, num_classes=3)
    assert torch.equal(tu.encoder.state_dict()["model.conv1.0.weight"], timm_source.state_dict()["conv1.0.weight"])
