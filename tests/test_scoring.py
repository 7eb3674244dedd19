"""Anomaly maps and image scores as method.md defines them."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from rlr.scoring import anomaly_map, gaussian_blur, image_scores, level_score


def test_gaussian_blur_matches_scipy_defaults():
    maps = torch.rand(3, 40, 50, dtype=torch.float64)
    expected = np.stack([ndimage.gaussian_filter(m, sigma=4) for m in maps.numpy()])
    assert np.abs(gaussian_blur(maps, 4.0).numpy() - expected).max() < 1e-12


def test_level_score_is_zero_for_perfect_reconstruction():
    features = torch.randn(2, 5, 4, 4)
    assert level_score(features, features).abs().max() < 1e-6


def test_level_score_is_mean_squared_error_plus_cosine_distance():
    features = torch.tensor([[[[1.0]], [[0.0]]]])  # one token (1, 0)
    reconstruction = torch.tensor([[[[0.0]], [[1.0]]]])  # orthogonal (0, 1)
    assert level_score(features, reconstruction).item() == pytest.approx(1.0 + 1.0)


def test_anomaly_map_averages_upsampled_levels():
    torch.manual_seed(0)
    coarse = torch.randn(1, 2, 2, 2)
    fine = torch.randn(1, 2, 4, 4)
    fine_rec = fine.clone()
    fine_rec[0, 0, 0, 0] += 2.0  # error only in the fine level's top-left token
    out = anomaly_map([coarse, fine], [coarse, fine_rec], image_size=8)
    assert out.shape == (1, 8, 8)
    assert out[0, 0, 0].item() == pytest.approx(level_score(fine, fine_rec)[0, 0, 0].item() / 2)
    assert out[0, -1, -1].item() == pytest.approx(0.0, abs=1e-6)


def test_image_score_is_max_of_smoothed_map():
    maps = torch.zeros(2, 64, 64)
    maps[1, 30, 30] = 1.0
    scores = image_scores(maps, sigma=4.0)
    assert scores[0] == 0 and 0 < scores[1] < 1.0
    assert scores[1].item() == pytest.approx(ndimage.gaussian_filter(maps[1].numpy(), 4).max(), rel=1e-5)
