"""Test-time augmentation over flips and 90-degree rotations (pipeline.tta)."""

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.tta import average_logits, average_maps, forward_view, inverse_view, views


@pytest.mark.parametrize("mode, n", [("none", 1), ("flips", 4), ("dihedral", 8)])
def test_views_are_distinct_and_each_is_undone_by_its_inverse(mode, n):
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    seen = []
    for turns, flip in views(mode):
        view = forward_view(x, turns, flip)
        assert torch.equal(inverse_view(view, turns, flip), x)
        assert not any(torch.equal(view, other) for other in seen)
        seen.append(view)
    assert len(seen) == n


def test_flips_are_the_identity_both_flips_and_each_flip():
    x = torch.randn(1, 1, 5, 5)
    got = [forward_view(x, k, f) for k, f in views("flips")]
    expected = [x, x.flip(-1), x.flip(-1).flip(-2), x.flip(-2)]
    for a in expected:
        assert any(torch.equal(a, b) for b in got)


def test_an_equivariant_map_is_unchanged_and_a_biased_one_is_symmetrised():
    image = torch.randn(1, 3, 6, 8)  # not square: rotations change the shape of the view
    pointwise = torch.nn.Conv2d(3, 2, 1)  # per pixel: commutes with every view
    with torch.no_grad():
        assert torch.allclose(average_maps(pointwise, image, "dihedral"), pointwise(image), atol=1e-6)
        # a map that marks the left column only: averaged over views it marks every border column and row
        left = lambda x: torch.nn.functional.pad(torch.ones(x.shape[0], 1, x.shape[2], 1), (0, x.shape[3] - 1))  # noqa: E731
        averaged = average_maps(left, image, "dihedral")[0, 0]
    assert averaged[:, 0].min() > 0 and averaged[:, -1].min() > 0 and averaged[0].min() > 0 and averaged[-1].min() > 0
    assert averaged[2:4, 2:6].abs().max() == 0


def test_classification_logits_are_the_mean_over_views():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    images = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        expected = torch.stack([model(forward_view(images, k, f)) for k, f in views("dihedral")]).mean(0)
        assert torch.allclose(average_logits(model, images, "dihedral"), expected)
        assert torch.equal(average_logits(model, images, "none"), model(images))


def test_unknown_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="predict.tta"):
        views("rotate")
