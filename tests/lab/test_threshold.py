"""The one-threshold model at a tiny size: each test checks a claim of docs/SCIENCE.md that can fail."""

import math

import numpy as np
import pytest
import torch

from pipeline.lab import threshold as toy

m, M, EPS = 5, 50, 100.0  # imbalance 10, transition width sqrt(eps) = 10 against a minority extent of 5


def test_balancing_weight_zeroes_the_continuum_gradient_at_the_boundary():
    w = toy.balancing_weight(m, M, EPS)
    h = 1e-5
    slope = (toy.continuum_loss(h, m, M, EPS, w) - toy.continuum_loss(-h, m, M, EPS, w)) / (2 * h)
    assert abs(slope) < 1e-6
    assert toy.balancing_weight(m, M, 1e-12) == pytest.approx(1.0)
    assert toy.balancing_weight(m, M, 1e12) == pytest.approx(M / m, rel=1e-6)


def test_closed_form_matches_the_discrete_points_when_eps_is_wide():
    x, y = toy.points(m, M)
    for theta in (-3.0, 0.0, 2.5):
        discrete = toy.empirical_loss(torch.tensor(theta, dtype=torch.float64), x, y, EPS, 2.0).item()
        assert discrete == pytest.approx(float(toy.continuum_loss(theta, m, M, EPS, 2.0)), rel=2e-3)


def test_balancing_weight_puts_the_optimum_on_the_boundary_and_inverse_frequency_overshoots():
    balancing = toy.balancing_weight(m, M, EPS)
    assert abs(toy.continuum_optimum(m, M, EPS, balancing)) < 1e-4
    # gradient flow of the project's loss on the discrete points agrees
    assert abs(toy.gradient_flow(m, M, EPS, balancing)) < 0.05
    inverse = toy.gradient_flow(m, M, EPS, M / m)
    unweighted = toy.gradient_flow(m, M, EPS, 1.0)
    assert inverse > 1.0  # into the majority: the minority is favoured
    assert unweighted < -1.0  # into the minority: the bias against it


def test_the_optimum_moves_into_the_minority_with_imbalance_and_back_as_eps_shrinks():
    by_ratio = [toy.continuum_optimum(m, m * ratio, EPS, 1.0) for ratio in (1, 2, 10)]
    assert by_ratio[0] == pytest.approx(0.0, abs=1e-6) and by_ratio[0] > by_ratio[1] > by_ratio[2]
    by_eps = [toy.continuum_optimum(m, M, eps, 1.0) for eps in (1e2, 3e1, 1e1, 1.0)]
    assert by_eps[0] == pytest.approx(-m)  # rare-event collapse: every point called majority
    assert by_eps[0] < by_eps[1] < by_eps[2] < by_eps[3] < 0
    assert abs(by_eps[3]) < 0.01


def test_stochastic_spread_grows_with_sharpness_unless_the_learning_rate_follows_eps():
    def relative_spread(eps, lr):
        thetas = toy.sgd_chains(m, 20, eps, toy.balancing_weight(m, 20, eps), lr=lr, batch=4, steps=1500,
                                chains=8, seed=0)
        return float(np.std(thetas)) / math.sqrt(eps)

    wide, sharp = relative_spread(100.0, 4.0), relative_spread(1.0, 4.0)
    coupled = relative_spread(1.0, 4.0 * 1.0 / 100.0)
    assert sharp > 3 * wide  # fixed lr: the spread in units of sqrt(eps) grows as eps shrinks
    assert coupled < 2 * wide  # lr proportional to eps keeps it
    # the linearised (Ornstein-Uhlenbeck) prediction holds while the spread is small against sqrt(eps)
    assert wide * 10 == pytest.approx(toy.ou_spread(4.0, 4, toy.balancing_weight(m, 20, 100.0)), rel=0.5)
