"""CTF against an independent scalar textbook evaluation (RELION sign: CTF(0) = +w)."""

import math

import numpy as np
import pytest
import torch

from cryoscape.imaging.ctf import compute_ctf, ctf_image, electron_wavelength_angstrom, phase_flip
from cryoscape.metadata import CTF_COLUMNS, CTFParams


def wavelength_from_constants(kv):
    """Relativistic de Broglie wavelength from CODATA constants (independent of the 12.2643 formula)."""
    h, m, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    V = kv * 1e3
    return h / math.sqrt(2 * m * e * V * (1 + e * V / (2 * m * c * c))) * 1e10


def textbook_ctf(sx, sy, dfu, dfv, ast_deg, kv, cs_mm, w, phase_deg=0.0, bfac=0.0, scale=1.0):
    lam = wavelength_from_constants(kv)
    s2 = sx * sx + sy * sy
    theta = math.atan2(sy, sx)
    a = theta - math.radians(ast_deg)
    df = dfu * math.cos(a) ** 2 + dfv * math.sin(a) ** 2  # defocus ellipse
    gamma = 2 * math.pi * (0.5 * df * lam * s2 - 0.25 * cs_mm * 1e7 * lam**3 * s2 * s2) + math.radians(phase_deg)
    return scale * (math.sqrt(1 - w * w) * math.sin(gamma) + w * math.cos(gamma)) * math.exp(-bfac * s2 / 4)


PARAMS = [
    (15000.0, 14000.0, 30.0, 300.0, 2.7, 0.1, 0.0, 0.0, 1.0),
    (8000.0, 9500.0, -70.0, 200.0, 2.0, 0.07, 40.0, 50.0, 0.8),
    (25000.0, 25000.0, 0.0, 300.0, 0.01, 0.2, 90.0, 0.0, 1.0),
]


def test_wavelength():
    assert electron_wavelength_angstrom(300.0) == pytest.approx(0.01969, abs=5e-6)
    for kv in (100.0, 200.0, 300.0):
        assert electron_wavelength_angstrom(kv) == pytest.approx(wavelength_from_constants(kv), rel=2e-5)
    t = electron_wavelength_angstrom(torch.tensor([300.0], dtype=torch.float64))
    assert t.item() == pytest.approx(electron_wavelength_angstrom(300.0))


def test_ctf_matches_textbook_scalar():
    rng = np.random.default_rng(0)
    freqs = rng.uniform(-0.25, 0.25, size=(50, 2))
    ctf = torch.tensor(PARAMS, dtype=torch.float64)
    got = compute_ctf(torch.as_tensor(freqs), ctf).numpy()
    assert got.shape == (3, 50)
    for b, p in enumerate(PARAMS):
        want = [textbook_ctf(sx, sy, *p) for sx, sy in freqs]
        np.testing.assert_allclose(got[b], want, atol=2e-3)  # tolerance: wavelength formulas differ at 1e-5


def test_ctf_per_image_frequencies_and_columns_order():
    params = CTFParams.create(
        defocus_u_angstrom=[12000.0, 20000.0], defocus_v_angstrom=[11000.0, 19000.0],
        astigmatism_angle_deg=[10.0, 80.0], voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1,
    )
    assert CTF_COLUMNS[0] == "defocus_u_angstrom"
    arr = torch.as_tensor(params.to_array()).double()
    freqs = torch.as_tensor(np.random.default_rng(1).uniform(-0.2, 0.2, size=(2, 7, 2)))
    got = compute_ctf(freqs, arr).numpy()
    for b in range(2):
        p = [float(params.to_array()[b, i]) for i in range(9)]
        want = [textbook_ctf(sx, sy, *p) for sx, sy in freqs[b].numpy()]
        np.testing.assert_allclose(got[b], want, atol=2e-3)


def test_ctf_at_zero_is_amplitude_contrast():
    ctf = torch.tensor(PARAMS, dtype=torch.float64)
    ctf[:, 6] = 0.0  # no phase plate
    ctf[:, 8] = 1.0
    val = compute_ctf(torch.zeros(1, 2, dtype=torch.float64), ctf)[:, 0]
    np.testing.assert_allclose(val.numpy(), ctf[:, 5].numpy(), atol=1e-12)
    img = ctf_image(16, 2.0, ctf)
    np.testing.assert_allclose(img[:, 8, 8].numpy(), ctf[:, 5].numpy(), atol=1e-12)


def _first_zero(values):
    """Index just after the first sign change (from the positive start)."""
    return int(np.argmax(values < 0))


def test_astigmatism_angle_direction():
    # defocus U (larger: rings closer together) lies along the astigmatism angle, measured from +x towards +y
    D, px = 128, 1.0
    for angle, axis in ((0.0, "x"), (90.0, "y")):
        ctf = torch.tensor([[20000.0, 10000.0, angle, 300.0, 2.7, 0.1, 0.0, 0.0, 1.0]], dtype=torch.float64)
        img = ctf_image(D, px, ctf)[0].numpy()
        along_x, along_y = img[D // 2, D // 2 :], img[D // 2 :, D // 2]
        if axis == "x":
            assert _first_zero(along_x) < _first_zero(along_y)
        else:
            assert _first_zero(along_y) < _first_zero(along_x)
    # direct value checks on the grid: pixel (row = c + 3, col = c + 5) is (kx, ky) = (5, 3) / (D px)
    ctf = torch.tensor([[20000.0, 10000.0, 30.0, 300.0, 2.7, 0.1, 0.0, 0.0, 1.0]], dtype=torch.float64)
    img = ctf_image(D, px, ctf)[0].numpy()
    c = D // 2
    for dx, dy in ((5, 3), (-4, 7), (2, -9)):
        want = textbook_ctf(dx / (D * px), dy / (D * px), 20000.0, 10000.0, 30.0, 300.0, 2.7, 0.1)
        assert img[c + dy, c + dx] == pytest.approx(want, abs=2e-3)


def test_phase_flip():
    ctf = torch.tensor([[-0.5, 0.0, 0.3]])
    F = torch.tensor([[1 + 1j, 2 - 1j, -3j]])
    out = phase_flip(F, ctf)
    np.testing.assert_allclose(out.numpy(), np.array([[-1 - 1j, 2 - 1j, -3j]]))
