from pathlib import Path

import pytest

from pipeline.data.adapters import ADAPTERS, get_adapter
from pipeline.data.adapters import folder, ham10000
from pipeline.errors import ConfigError

BUILT_IN = ["isic2018", "ham10000", "folder", "csv", "voc_boxes", "box_crops", "circles", "masks"]


def test_available_adapters_lists_all_sorted() -> None:
    names = ADAPTERS.names()
    assert names == sorted(names)
    assert set(BUILT_IN) | {"synthetic_isic", "synthetic_acne"} == set(names)


def test_get_adapter_returns_the_build_function() -> None:
    assert get_adapter("folder") is folder.build
    assert get_adapter("ham10000") is ham10000.build


def test_unknown_adapter_lists_names() -> None:
    with pytest.raises(ConfigError, match="unknown dataset adapter 'isic2019'.*folder.*voc_boxes"):
        get_adapter("isic2019")


@pytest.mark.parametrize("name", BUILT_IN)
def test_unknown_param_is_a_config_error(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"adapter '{name}': unknown parameter.*'bogus'"):
        get_adapter(name)(tmp_path, ["A"], tmp_path / "masks", bogus=1)


def test_missing_required_param_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing required parameter\(s\) \['metadata_csv'\]"):
        get_adapter("ham10000")(tmp_path, ["A"], tmp_path)


def test_mistyped_param_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'require_images' = 'yes'"):
        get_adapter("ham10000")(tmp_path, ["A"], tmp_path, metadata_csv="m.csv", require_images="yes")


def test_empty_or_duplicate_classes_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(ConfigError, match="non-empty"):
        get_adapter("folder")(tmp_path, [], tmp_path)
    with pytest.raises(ConfigError, match="duplicate"):
        get_adapter("folder")(tmp_path, ["A", "a"], tmp_path)
