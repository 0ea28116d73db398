"""Property-based tests (hypothesis) of the conventions and the parsers, against independent definitions.

Rotations: quaternion <-> matrix <-> RELION Euler <-> cryoSPARC pose round trips for arbitrary rotations
(gimbal lock included), the Hamilton product as the reference for composition. Fourier crop/pad: sums of
cosines below the new Nyquist frequency are resampled exactly onto the other grid. STAR: write then read gives
back poses, CTF, pixel size and image references. Subsets: indices survive subset, subset of subset, writing
and reading back.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryoscape.cli.main import main
from cryoscape.imaging.fft import fourier_crop, fourier_pad, resample_volume
from cryoscape.imaging.rotations import (
    cryosparc_pose_to_matrix,
    euler_relion_to_matrix,
    matrix_to_cryosparc_pose,
    matrix_to_euler_relion,
    matrix_to_quaternion,
    quaternion_to_matrix,
)
from cryoscape.io.indices import read_indices, write_indices
from cryoscape.io.particles import load_particles, write_particle_subset
from cryoscape.io.star import format_image_names, read_star_particles, write_star
from cryoscape.metadata import CTFParams, Poses

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
finite = dict(allow_nan=False, allow_infinity=False)


# ------------------------------------------------------------------------------------------------ rotations
def hamilton_matrix(q):
    """The rotation matrix of a unit quaternion (w, x, y, z), written out (active, column vectors)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def hamilton_product(a, b):
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


quaternions = st.lists(st.floats(-1, 1, **finite), min_size=4, max_size=4).map(np.array).filter(
    lambda q: np.linalg.norm(q) > 1e-3)
# tilts at and next to gimbal lock (0 and 180 degrees) as well as anywhere
tilts = st.one_of(st.floats(0, 180, **finite), st.sampled_from([0.0, 180.0, 1e-9, 180 - 1e-9, 1e-4, 179.9999]))
eulers = st.tuples(st.floats(-180, 180, **finite), tilts, st.floats(-180, 180, **finite))


@FAST
@given(quaternions)
def test_quaternion_matrix_round_trip(q):
    A = quaternion_to_matrix(q)[0]
    np.testing.assert_allclose(A, hamilton_matrix(q), atol=1e-12)
    np.testing.assert_allclose(A @ A.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(A) == pytest.approx(1.0, abs=1e-12)
    q2 = matrix_to_quaternion(A)[0]
    qn = q / np.linalg.norm(q)
    assert q2[0] >= 0
    assert min(np.abs(q2 - qn).max(), np.abs(q2 + qn).max()) < 1e-9  # q and -q are the same rotation


@FAST
@given(quaternions, quaternions)
def test_quaternion_composition_is_matrix_product(q1, q2):
    q1, q2 = q1 / np.linalg.norm(q1), q2 / np.linalg.norm(q2)
    np.testing.assert_allclose(quaternion_to_matrix(hamilton_product(q1, q2))[0],
                               quaternion_to_matrix(q1)[0] @ quaternion_to_matrix(q2)[0], atol=1e-12)


@FAST
@given(quaternions)
def test_any_rotation_survives_euler_and_cryosparc_round_trips(q):
    A = hamilton_matrix(q)[None]
    angles = matrix_to_euler_relion(A)
    rot, tilt, psi = angles[0]
    assert 0.0 <= tilt <= 180.0 and -180.0 <= rot <= 180.0 and -180.0 <= psi <= 180.0
    lock = np.hypot(A[0, 0, 2], A[0, 1, 2]) < 1e-6  # snapped to tilt 0 or 180: an error of at most 1e-6
    np.testing.assert_allclose(euler_relion_to_matrix(angles), A, atol=2e-6 if lock else 1e-9)
    np.testing.assert_allclose(cryosparc_pose_to_matrix(matrix_to_cryosparc_pose(A)), A, atol=1e-9)


@FAST
@given(eulers)
def test_euler_matrix_quaternion_cycle(angles):
    A = euler_relion_to_matrix([angles])
    q = matrix_to_quaternion(A)
    B = quaternion_to_matrix(q)
    np.testing.assert_allclose(B, A, atol=1e-12)
    back = matrix_to_euler_relion(B)
    # near gimbal lock the angles move; |sin(tilt)| < 1e-6 is snapped to the lock (an error of at most 1e-6)
    np.testing.assert_allclose(euler_relion_to_matrix(back), A, atol=2e-6)
    if 1e-3 < angles[1] < 180 - 1e-3:  # away from gimbal lock the angles themselves come back
        diff = (back[0] - np.asarray(angles) + 180.0) % 360.0 - 180.0
        np.testing.assert_allclose(diff, 0.0, atol=1e-6)


# ------------------------------------------------------------------------------------------------ Fourier
def cosines(D, terms):
    """Sum of ``a cos(2 pi (kx x + ky y) / D + phase)`` on a D x D grid with coordinates relative to D // 2."""
    i = np.arange(D) - D // 2
    y, x = np.meshgrid(i, i, indexing="ij")
    out = np.zeros((D, D))
    for kx, ky, a, phase in terms:
        out += a * np.cos(2 * np.pi * (kx * x + ky * y) / D + phase)
    return out


@st.composite
def band_limited(draw):
    d = draw(st.sampled_from([6, 8, 10, 12, 16]))
    D = d + draw(st.sampled_from([2, 4, 6, 8, 16]))
    k = st.integers(-(d // 2 - 1), d // 2 - 1)  # strictly below the small grid's Nyquist frequency
    terms = draw(st.lists(st.tuples(k, k, st.floats(0.1, 2.0), st.floats(0, 2 * np.pi)), min_size=1, max_size=4))
    return d, D, terms


@FAST
@given(band_limited())
def test_fourier_crop_then_pad_resamples_band_limited_images_exactly(case):
    d, D, terms = case
    fine, coarse = cosines(D, terms), cosines(d, terms)
    cropped = fourier_crop(torch.as_tensor(fine[None]), d)[0].numpy()
    np.testing.assert_allclose(cropped, coarse, atol=1e-9)  # the same function sampled on the coarse grid
    np.testing.assert_allclose(fourier_pad(torch.as_tensor(cropped[None]), D)[0].numpy(), fine, atol=1e-9)
    np.testing.assert_allclose(fourier_crop(fourier_pad(torch.as_tensor(coarse), D), d).numpy(), coarse,
                               atol=1e-9)
    assert cropped.mean() == pytest.approx(fine.mean(), abs=1e-9)


@settings(max_examples=15, deadline=None)
@given(st.sampled_from([6, 8]), st.sampled_from([2, 4]), st.integers(0, 2**31 - 1))
def test_volume_crop_then_pad_keeps_low_frequencies(d, extra, seed):
    """resample_volume down then up is the projection onto frequencies below the small grid's Nyquist."""
    D = d + extra
    rng = np.random.default_rng(seed)
    vol = rng.normal(size=(D, D, D))
    F = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(vol)))
    k = np.arange(D) - D // 2
    keep = (np.abs(k) < d // 2)
    low = np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(F * (keep[:, None, None] & keep[None, :, None] &
                                                             keep[None, None, :])))).real
    small = resample_volume(torch.as_tensor(low), d)
    np.testing.assert_allclose(resample_volume(small, D).numpy(), low, atol=1e-9)
    assert float(small.mean()) == pytest.approx(vol.mean(), abs=1e-9)


# ------------------------------------------------------------------------------------------------ STAR
@st.composite
def particle_tables(draw):
    n = draw(st.integers(1, 8))
    fl = lambda lo, hi: st.lists(st.floats(lo, hi, **finite), min_size=n, max_size=n).map(np.array)  # noqa: E731
    angles = np.stack([draw(fl(-180, 180)), draw(fl(0, 180)), draw(fl(-180, 180))], axis=1)
    shifts = np.stack([draw(fl(-40, 40)), draw(fl(-40, 40))], axis=1)
    du = draw(fl(2000, 40000))
    dv = du - draw(fl(0, 1500))
    voltage = np.full(n, draw(st.sampled_from([100.0, 200.0, 300.0])))
    ctf = CTFParams.create(du, dv, draw(fl(-180, 180)), voltage, np.full(n, draw(st.sampled_from([0.01, 2.7]))),
                           np.full(n, draw(st.floats(0.0, 0.3))), draw(fl(0, 180)), draw(fl(0, 200)),
                           draw(fl(0.5, 1.5)))
    stacks = draw(st.lists(st.sampled_from(["a.mrcs", "sub/b.mrcs", "Extract/job005/c.mrcs"]), min_size=n,
                           max_size=n))
    idx = draw(st.lists(st.integers(0, 999_999), min_size=n, max_size=n))
    pixel = draw(st.floats(0.3, 8.0))
    return Poses(euler_relion_to_matrix(angles), shifts), ctf, stacks, np.array(idx), pixel


@FAST
@given(particle_tables(), st.booleans())
def test_star_write_then_read(table, relion30):
    poses, ctf, stacks, idx, pixel = table
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.star"
        write_star(path, format_image_names(stacks, idx), pixel, 64, poses, ctf, relion30=relion30)
        sp = read_star_particles(path, check_images=False)
        assert sp.version == ("3.0" if relion30 else "3.1+") and len(sp) == len(idx)
        np.testing.assert_array_equal(sp.stack_indices, idx)
        assert [Path(p) for p in sp.stack_paths] == [Path(tmp) / s for s in stacks]
        np.testing.assert_allclose(sp.pixel_size_angstrom, pixel, rtol=0, atol=1e-6)  # written as %.6f
        back = sp.poses()
        # matrix_to_euler_relion treats |sin(tilt)| < 1e-6 as gimbal lock (tilt 0 or 180): up to 1e-6 per element
        np.testing.assert_allclose(back.rotations, poses.rotations, atol=2e-6)
        # %.6f for origins (in pixels in RELION 3.0) and for the pixel size itself
        np.testing.assert_allclose(back.shifts_angstrom, poses.shifts_angstrom, rtol=1e-5,
                                   atol=1e-5 * max(1.0, pixel))
        np.testing.assert_allclose(sp.ctf().to_array(), ctf.to_array(), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------ subsets
@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    assert main(["simulate", "--preset", "discrete3", "-N", "30", "-D", "16", "--apix", "6", "--snr", "2",
                 "--cs", "-o", str(out)]) == 0
    return out


subsets = st.lists(st.integers(0, 29), min_size=1, max_size=30, unique=True).map(np.array)


@FAST
@given(a=subsets, data=st.data(), fmt=st.sampled_from(["star", "cs"]))
def test_subset_indices_survive_subsetting_and_writing(sim, a, data, fmt):
    full = load_particles(sim / f"particles.{fmt}")
    b = np.array(data.draw(st.lists(st.integers(0, len(a) - 1), min_size=1, max_size=len(a), unique=True)))
    first = full.subset(a)
    np.testing.assert_array_equal(first.source_indices, a)
    second = first.subset(b)
    np.testing.assert_array_equal(second.source_indices, a[b])
    np.testing.assert_array_equal(second.images[np.arange(len(b))], full.images[a[b]])
    np.testing.assert_array_equal(second.poses.rotations, full.poses.rotations[a[b]])
    np.testing.assert_array_equal(second.ctf.to_array(), full.ctf.to_array()[a[b]])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"subset.{fmt}"
        write_particle_subset(first, b, out)
        back = load_particles(out, datadir=sim)
        assert len(back) == len(b)
        np.testing.assert_array_equal(back.images[np.arange(len(b))], full.images[a[b]])
        np.testing.assert_allclose(back.poses.rotations, full.poses.rotations[a[b]], atol=1e-6)
        np.testing.assert_allclose(back.ctf.to_array(), full.ctf.to_array()[a[b]], rtol=1e-6)
        via_ind = load_particles(sim / f"particles.{fmt}", indices=a[b])
        np.testing.assert_array_equal(via_ind.source_indices, a[b])


@FAST
@given(st.lists(st.integers(0, 2**40), min_size=1, max_size=50, unique=True), st.sampled_from([".npy", ".txt",
                                                                                               ".pkl"]))
def test_index_files_round_trip(values, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"ind{suffix}"
        write_indices(path, values)
        back = read_indices(path, n=2**40 + 1)
        assert back.dtype == np.int64
        np.testing.assert_array_equal(back, values)  # order kept, nothing sorted or deduplicated away
