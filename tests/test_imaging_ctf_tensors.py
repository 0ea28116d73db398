"""CTFTensors: named CTF parameters of any leading shape, and compute_ctf / ctf_image broadcasting over them."""

import math

import numpy as np
import pytest
import torch

from cryoscape.imaging.ctf import CTF_FIELDS, CTFTensors, compute_ctf, ctf_image
from cryoscape.metadata import CTF_COLUMNS, CTFParams
from test_imaging_ctf import PARAMS, textbook_ctf


def _params() -> CTFParams:
    rows = np.array(PARAMS, dtype=np.float64)
    return CTFParams(**{name: rows[:, i] for i, name in enumerate(CTF_COLUMNS)})


def test_named_fields_are_the_metadata_columns():
    params = _params()
    ctf = CTFTensors.from_params(params)
    assert ctf.shape == (3,) and len(ctf) == 3 and ctf.dtype == torch.float32
    for field, column in zip(CTF_FIELDS, CTF_COLUMNS, strict=True):
        np.testing.assert_allclose(getattr(ctf, field).numpy(), getattr(params, column), rtol=1e-6)
    assert ctf.voltage.tolist() == [300.0, 200.0, 300.0]
    made = CTFTensors.create(defocus_u=params.defocus_u_angstrom, defocus_v=params.defocus_v_angstrom,
                             angle=params.astigmatism_angle_deg, voltage=params.voltage_kv, cs=params.cs_mm,
                             w=params.amplitude_contrast, phase_shift=params.phase_shift_deg,
                             bfactor=params.bfactor_angstrom2, scale=params.scale)
    torch.testing.assert_close(made.values, ctf.values)
    with pytest.raises(ValueError, match="missing voltage"):
        CTFTensors.create(defocus_u=1.0, defocus_v=1.0, angle=0.0, cs=2.7, w=0.1)
    with pytest.raises(ValueError, match=r"\(\.\.\., 9\)"):
        CTFTensors(torch.zeros(3, 8))


def test_indexing_to_reshape_gather_act_on_leading_dimensions():
    ctf = CTFTensors.from_params(_params())
    grid = CTFTensors(ctf.values[torch.tensor([[0, 1, 2, 1], [2, 2, 0, 1]])])  # (2, 4) tilt images
    assert grid.shape == (2, 4) and grid.ndim == 2
    assert grid[1].shape == (4,) and grid[1, 0].voltage.item() == 300.0
    assert grid.reshape(-1).shape == (8,) and grid.reshape(4, 2).shape == (4, 2)
    order = torch.tensor([[3, 0], [1, 2]])
    picked = grid.gather(1, order)
    assert picked.shape == (2, 2)
    assert picked.defocus_u.tolist() == [[grid.defocus_u[0, 3].item(), grid.defocus_u[0, 0].item()],
                                          [grid.defocus_u[1, 1].item(), grid.defocus_u[1, 2].item()]]
    double = grid.to(torch.float64)
    assert double.dtype == torch.float64 and double.shape == grid.shape


def test_compute_ctf_broadcasts_over_leading_dimensions():
    """A (2, 4) grid of parameters gives (2, 4, P) values equal to the textbook value of each image."""
    ctf = CTFTensors.from_params(_params()).to(torch.float64)
    pick = torch.tensor([[0, 1, 2, 1], [2, 2, 0, 1]])
    grid = CTFTensors(ctf.values[pick])
    freqs = torch.tensor([[0.01, 0.02], [-0.03, 0.005], [0.0, 0.0], [0.04, -0.04]], dtype=torch.float64)
    values = compute_ctf(freqs, grid)
    assert values.shape == (2, 4, 4)
    for i in range(2):
        for j in range(4):
            row = PARAMS[int(pick[i, j])]
            expected = [textbook_ctf(float(sx), float(sy), *row) for sx, sy in freqs]
            np.testing.assert_allclose(values[i, j].numpy(), expected, atol=1e-4)
    # the same as the packed (B, 9) form row by row, and per-image frequencies (B, P, 2) broadcast too
    flat = compute_ctf(freqs, grid.values.reshape(-1, 9))
    torch.testing.assert_close(flat.reshape(2, 4, 4), values)
    per_image = compute_ctf(freqs.expand(2, 4, 4, 2), grid)
    torch.testing.assert_close(per_image, values)
    assert values[0, 0, 2].item() == pytest.approx(PARAMS[0][5] * PARAMS[0][8])  # CTF(0) = w x scale


def test_ctf_image_keeps_the_leading_shape():
    ctf = CTFTensors(CTFTensors.from_params(_params()).values[torch.tensor([[0, 1], [2, 0]])])
    images = ctf_image(16, 2.0, ctf)
    assert images.shape == (2, 2, 16, 16)
    torch.testing.assert_close(images[1, 0], ctf_image(16, 2.0, ctf.values[1, 0])[0])
    assert ctf_image(16, 2.0, ctf.values[0, 0]).shape == (1, 16, 16)  # a single (9,) row: one image, as before
    assert math.isclose(images[0, 0, 8, 8].item(), PARAMS[0][5], rel_tol=1e-6)
