"""Exposure and tilt weights, the optimal-exposure mask, and how the tomoDRGN loss uses them."""

import math

import numpy as np
import pytest
import torch

from cryoscape.imaging.dose import (
    critical_exposure,
    dose_weights,
    optimal_exposure_mask,
    tilt_weights,
    voltage_scale,
)
from cryoscape.models.tomodrgn import TomoDRGN


def ne_reference(k, kv=300.0):
    """Grant & Grigorieff 2015 eq. 3, written out independently (0.8 at 200 kV)."""
    scale = {300.0: 1.0, 200.0: 0.8}[kv]
    return (0.245 * k**-1.665 + 2.81) * scale


@pytest.mark.parametrize("kv", [300.0, 200.0])
def test_critical_exposure_matches_grant_grigorieff(kv):
    k = torch.tensor([0.01, 0.05, 0.1, 0.25, 0.4], dtype=torch.float64)
    expected = [ne_reference(float(x), kv) for x in k]
    np.testing.assert_allclose(critical_exposure(k, kv).numpy(), expected, rtol=1e-12)
    # a worked value: Ne(0.1 / A) at 300 kV = 0.245 * 10^1.665 + 2.81 = 0.245 * 46.238 + 2.81 = 14.138
    assert critical_exposure(torch.tensor([0.1], dtype=torch.float64))[0].item() == pytest.approx(14.1383, abs=1e-3)


def test_voltage_scale_and_dc():
    np.testing.assert_allclose(voltage_scale(torch.tensor([100.0, 200.0, 250.0, 300.0, 400.0])).numpy(),
                               [0.8, 0.8, 0.9, 1.0, 1.0])
    assert math.isinf(critical_exposure(torch.tensor([0.0]))[0].item())
    assert dose_weights(torch.tensor([0.0]), torch.tensor([100.0]))[0].item() == 1.0
    assert bool(optimal_exposure_mask(torch.tensor([0.0]), torch.tensor([1e6]))[0])


def test_dose_weight_value_and_mask_boundary():
    k = torch.tensor([0.1], dtype=torch.float64)
    ne = ne_reference(0.1)
    for n in (0.0, 3.0, 30.0, 90.0):
        assert dose_weights(k, torch.tensor([n], dtype=torch.float64))[0].item() == pytest.approx(
            math.exp(-n / (2 * ne)), rel=1e-12)
    limit = 2.51284 * ne
    assert bool(optimal_exposure_mask(k, torch.tensor([limit * (1 - 1e-9)], dtype=torch.float64))[0])
    assert not bool(optimal_exposure_mask(k, torch.tensor([limit * (1 + 1e-6)], dtype=torch.float64))[0])
    # broadcasting: (images, 1) exposures against (P,) frequencies
    w = dose_weights(torch.tensor([0.05, 0.2]), torch.tensor([[0.0], [10.0]]))
    assert w.shape == (2, 2) and torch.all(w[0] == 1) and torch.all(w[1] < 1) and w[1, 1] < w[1, 0]


def test_tilt_weights():
    np.testing.assert_allclose(tilt_weights(torch.tensor([0.0, 60.0, -60.0, 45.0])).numpy(),
                               [1.0, 0.5, 0.5, math.sqrt(0.5)], atol=1e-6)


def test_model_weights_and_mask_on_its_pixels():
    """The model's per-pixel loss weights and decoded points follow the formulas at each pixel's |k|."""
    D, apix = 16, 5.0
    model = TomoDRGN(D, apix, ntilts=2, zdim=0)
    exposure = torch.tensor([[1.5, 40.0]])
    tilt = torch.tensor([[0.0, 60.0]])
    ctf = torch.zeros(1, 2, 9)
    ctf[..., 3] = 300.0
    w = model.loss_weights(exposure, tilt, ctf)
    k = model.freqs.norm(dim=-1).double() / apix
    ne = torch.tensor([ne_reference(float(x)) if x > 0 else math.inf for x in k], dtype=torch.float64)
    cos = torch.tensor([1.0, 0.5], dtype=torch.float64)[:, None]
    expected = torch.exp(-exposure[0, :, None].double() / (2 * ne)) * cos
    np.testing.assert_allclose(w[0].numpy(), expected.numpy(), rtol=1e-5)
    keep = model.decode_mask(exposure, ctf, torch.ones(1, 2, dtype=torch.bool))[0]
    kp = model.points.norm(dim=-1).double() / apix
    nep = torch.tensor([ne_reference(float(x)) if x > 0 else math.inf for x in kp], dtype=torch.float64)
    np.testing.assert_array_equal(keep.numpy(), (exposure[0, :, None].double() <= 2.51284 * nep).numpy())
    assert keep[0].all() and not keep[1].all() and keep[1, -1]  # low exposure keeps all; DC always kept
    off = TomoDRGN(D, apix, ntilts=2, zdim=0, recon_dose_weight=False, recon_tilt_weight=False, dose_mask=False)
    assert torch.all(off.loss_weights(exposure, tilt, ctf) == 1)
    assert off.decode_mask(exposure, ctf, torch.ones(1, 2, dtype=torch.bool)).all()
