"""Latent-neighbour reconstruction: equals plain back-projection on a homogeneous set, recovers each state with
exact latents, writes half maps and their FSC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoscape.analysis.backprojection import backproject
from cryoscape.analysis.evaluate import au_fsc
from cryoscape.analysis.neighbour_recon import NeighbourReconstructor, write_neighbour_map
from cryoscape.imaging.projection import project_fourier
from cryoscape.imaging.rotations import random_rotations

D, APIX = 16, 5.0


def _state(seed):
    rng = np.random.default_rng(seed)
    i = np.arange(D) - D // 2
    z, y, x = np.meshgrid(i, i, i, indexing="ij")
    vol = np.zeros((D, D, D))
    for _ in range(4):
        c, s = rng.uniform(-0.25 * D, 0.25 * D, 3), rng.uniform(1.0, 1.8)
        vol += np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s * s))
    return vol.astype(np.float32)


def _images(vol, n, seed):
    rot = random_rotations(n, seed=seed)
    proj = project_fourier(torch.as_tensor(vol), torch.as_tensor(rot, dtype=torch.float32), gridding_correction=True)
    return proj.numpy(), rot


def test_homogeneous_set_equals_plain_backprojection(tmp_path):
    vol = _state(0)
    images, rot = _images(vol, 120, 1)
    images = images + 0.05 * np.random.default_rng(2).standard_normal(images.shape).astype(np.float32)
    shifts = np.zeros((120, 2))
    plain = backproject(images, rot, shifts, None, APIX, progress=False, device="cpu")
    z = np.zeros((120, 2))  # one conformation: every particle at the same latent
    rec = NeighbourReconstructor(z, images, rot, shifts, None, APIX, ks=(500,), device="cpu")
    assert rec.ks == [120]
    m = rec.reconstruct([0.0, 0.0])
    for key in ("volume", "half_a", "half_b"):
        np.testing.assert_allclose(getattr(m, key), plain[key], atol=1e-5 * np.abs(plain[key]).max())
    # with a ladder of neighbourhoods the shell-wise choice still gives (nearly) the full reconstruction
    ladder = NeighbourReconstructor(z, images, rot, shifts, None, APIX, ks=(30, 60, 120), device="cpu")
    m2 = ladder.reconstruct([0.0, 0.0])
    assert au_fsc(m2.volume, plain["volume"]) > 0.49
    assert m2.fsc.shape == (D // 2,) and m2.resolution_angstrom < 4 * APIX
    paths = write_neighbour_map(tmp_path / "vol_001.mrc", m2, APIX)
    assert [p.name for p in paths] == ["vol_001.mrc", "vol_001_half_a.mrc", "vol_001_half_b.mrc", "vol_001_fsc.txt"]
    table = np.loadtxt(paths[3])
    assert table.shape == (D // 2, 4)
    np.testing.assert_allclose(table[:, 1], m2.fsc, atol=1e-5)
    assert set(table[:, 2].astype(int)) <= {30, 60, 120}
    # one conformation: no variable region, so one choice for the whole box
    assert ladder.variable_region() is None
    np.testing.assert_array_equal(table[:, 2], table[:, 3])


def test_one_particle_cluster_per_state_with_exact_latents_recovers_each_state():
    states = [_state(10), _state(11), _state(12)]
    n = 80
    imgs, rots, zs = [], [], []
    for s, vol in enumerate(states):
        im, r = _images(vol, n, 20 + s)
        imgs.append(im)
        rots.append(r)
        zs.append(np.tile(np.eye(3)[s] * 5.0, (n, 1)))
    images, rot, z = np.concatenate(imgs), np.concatenate(rots), np.concatenate(zs)
    order = np.random.default_rng(0).permutation(len(z))  # particles of all states interleaved
    images, rot, z = images[order], rot[order], z[order]
    own_scores = {}
    for local in (False, True):
        rec = NeighbourReconstructor(z, images, rot, np.zeros((len(z), 2)), None, APIX, ks=(20, 40, 80),
                                     max_neighbours=n, device="cpu", local=local)
        vols = rec.generate_volumes(np.eye(3) * 5.0)
        for s, v in enumerate(vols):
            scores = [au_fsc(v, gt) for gt in states]
            assert int(np.argmax(scores)) == s
            assert scores[s] > 0.45
            own_scores[local, s] = scores[s]
            if not local:  # the state's own particles only (exact latents: kernel weights all 1)
                plain = backproject(images, rot, np.zeros((len(z), 2)), None, APIX, progress=False, device="cpu",
                                    indices=np.flatnonzero(np.all(z == np.eye(3)[s] * 5.0, axis=1)))["volume"]
                assert au_fsc(v, plain) > 0.49
        # the states differ almost everywhere in the molecule: the variable region is found
        assert (rec.variable_region() is None) == (not local)
    for s in range(3):  # the local choice loses little on this sparse toy (its lowest shells' choice in the
        # region outside rests on a handful of voxels: one state scores 0.014 lower, the others the same)
        assert own_scores[True, s] > own_scores[False, s] - 0.02


def test_kernel_weights_enter_backprojection():
    vol = _state(3)
    images, rot = _images(vol, 40, 4)
    shifts = np.zeros((40, 2))
    w = np.ones(40)
    w[::2] = 0.0  # zero weight: as if those particles were left out (the odd rows only)
    weighted = backproject(images, rot, shifts, None, APIX, progress=False, device="cpu", particle_weights=w,
                           wiener_epsilon=1e-3)
    subset = backproject(images, rot, shifts, None, APIX, progress=False, device="cpu",
                         indices=np.arange(1, 40, 2), wiener_epsilon=1e-3)
    np.testing.assert_allclose(weighted["volume"], subset["volume"], atol=1e-5 * np.abs(subset["volume"]).max())
    with pytest.raises(Exception, match="weights"):
        backproject(images, rot, shifts, None, APIX, progress=False, particle_weights=-w)


def test_whole_set_candidate_is_taken_where_latents_carry_no_signal():
    # one conformation, latents pure noise: every neighbourhood is a random subset, so the whole set (more
    # particles, same map) must win the shell-wise choice almost everywhere and give the best map
    vol = _state(5)
    n = 200
    images, rot = _images(vol, n, 6)
    images = images + 0.5 * np.random.default_rng(7).standard_normal(images.shape).astype(np.float32)
    shifts = np.zeros((n, 2))
    z = np.random.default_rng(8).standard_normal((n, 2))
    kw = dict(ks=(10, 20, 40), device="cpu")
    with_all = NeighbourReconstructor(z, images, rot, shifts, None, APIX, **kw)
    ladder_only = NeighbourReconstructor(z, images, rot, shifts, None, APIX, whole_set=False, **kw)
    assert with_all.whole_set and not ladder_only.whole_set
    m = with_all.reconstruct(z[0])
    m0 = ladder_only.reconstruct(z[0])
    assert m.ks == [10, 20, 40, n] and m.bandwidths[-1] == np.inf and m0.ks == [10, 20, 40]
    assert np.mean(np.asarray(m.k_per_shell) == n) >= 0.75
    assert au_fsc(m.volume, vol) > au_fsc(m0.volume, vol) + 0.01
    # the whole set is back-projected once and reused for every point
    assert with_all.whole_set_maps() is with_all.whole_set_maps()
    plain = backproject(images, rot, shifts, None, APIX, progress=False, device="cpu")
    np.testing.assert_allclose(with_all.whole_set_maps()["volume"], plain["volume"],
                               atol=1e-5 * np.abs(plain["volume"]).max())
    # a ladder that already reaches every particle gets no duplicate candidate
    assert not NeighbourReconstructor(z, images, rot, shifts, None, APIX, ks=(50, n), device="cpu").whole_set


def _hinge_set(n, seed, noise):
    """A static blob and a blob that slides along x with the coordinate ``t`` in [-1, 1] (the latent)."""
    i = np.arange(D) - D // 2
    zz, yy, xx = np.meshgrid(i, i, i, indexing="ij")

    def blob(cx, cy, cz, s):
        return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2 + (zz - cz) ** 2) / (2 * s * s))

    rng = np.random.default_rng(seed)
    t = rng.uniform(-1, 1, n)
    static = 2.0 * blob(-4, -4, 0, 1.8)
    rots = random_rotations(n, seed=seed + 1)
    images = np.empty((n, D, D), dtype=np.float32)
    for j in range(n):  # one map per particle: the moving blob at its own position
        vol = (static + blob(2 + 2.5 * t[j], 3, 0, 1.2)).astype(np.float32)
        images[j] = project_fourier(torch.as_tensor(vol), torch.as_tensor(rots[j:j + 1], dtype=torch.float32),
                                    gridding_correction=True)[0].numpy()
    images += noise * rng.standard_normal(images.shape).astype(np.float32)
    return images, rots, t, static, blob


def test_variable_region_covers_what_moves_and_the_local_choice_helps_the_rest(tmp_path):
    n = 800
    images, rot, t, static, blob = _hinge_set(n, 30, noise=0.6)
    shifts = np.zeros((n, 2))
    kw = dict(ks=(25, 50, 100, 200), device="cpu")
    local = NeighbourReconstructor(t[:, None], images, rot, shifts, None, APIX, **kw)
    plain = NeighbourReconstructor(t[:, None], images, rot, shifts, None, APIX, local=False, **kw)
    region = local.variable_region()
    assert region is not None and plain.variable_region() is None
    path = np.zeros((D, D, D), dtype=bool)  # the moving blob's track, x from -0.5 to 4.5 at y = 3, z = 0
    path[D // 2, D // 2 + 3, D // 2: D // 2 + 5] = True
    assert region[path].mean() > 0.5
    assert region[D // 2, D // 2 - 4, D // 2 - 4] < 0.1  # the static blob's centre
    assert region.mean() < 0.2
    from cryoscape.analysis.neighbour_recon import write_variable_region
    from cryoscape.io.mrc import read_mrc

    logged: list[str] = []
    written, info = read_mrc(write_variable_region(tmp_path / "variable_region.mrc", local, logged.append))
    np.testing.assert_allclose(written, region)
    assert abs(info.voxel_size_angstrom - APIX) < 1e-3 and "% of the box" in logged[0]
    assert write_variable_region(tmp_path / "none.mrc", plain, logged.append) is None
    # a given region replaces the estimate (not with local off); a wrong box is refused
    given = NeighbourReconstructor(t[:, None], images, rot, shifts, None, APIX, region=region > 0.5, **kw)
    np.testing.assert_array_equal(given.variable_region(), (region > 0.5).astype(np.float32))
    assert NeighbourReconstructor(t[:, None], images, rot, shifts, None, APIX, region=region, local=False,
                                  **kw).variable_region() is None
    with pytest.raises(Exception, match="box"):
        given.set_region(np.ones((8, 8, 8)))
    assert not (tmp_path / "none.mrc").exists() and "none" in logged[1]
    # the static region takes more particles than the variable one, and the map at a point gains there
    t0 = 0.6
    m, m0 = local.reconstruct([t0]), plain.reconstruct([t0])
    assert np.mean(m.k_per_shell_rest) > np.mean(m.k_per_shell)
    truth = (static + blob(2 + 2.5 * t0, 3, 0, 1.2)).astype(np.float32)
    assert au_fsc(m.volume, truth) > au_fsc(m0.volume, truth)
    # the two regions' maps add up: with the same choice in both, the sum equals the whole-box choice
    from cryoscape.analysis.neighbour_recon import _choose_per_shell

    cands = [{k: np.asarray(v) for k, v in c.items()} for c in (local._backproject(np.arange(100), np.ones(100)),
                                                                 local.whole_set_maps())]
    whole = _choose_per_shell(cands)
    parts = [_choose_per_shell(cands, w) for w in (region, 1.0 - region)]
    if np.array_equal(parts[0][3], whole[3]) and np.array_equal(parts[1][3], whole[3]):
        np.testing.assert_allclose(parts[0][0] + parts[1][0], whole[0], atol=1e-5 * np.abs(whole[0]).max())


def test_one_standard_error_choice_prefers_more_particles_only_within_the_noise():
    from cryoscape.analysis.neighbour_recon import _one_standard_error

    rng = np.random.default_rng(0)
    shell = np.repeat(np.arange(2), 400)  # two shells of 400 voxels
    small = rng.exponential(1.0, 800)  # candidate 0 (fewest particles): the smallest error in both shells
    wiggle = np.tile([1.0, -1.0], 400)  # voxel-to-voxel spread 1, sum 0 per shell
    close = small + 0.01 + wiggle  # candidate 1: worse by 4 per shell, a fifth of a standard error (20)
    far = small + 0.5 + wiggle  # candidate 2 (most particles): worse by 200, ten standard errors
    voxel_err = np.stack([small, close, far])
    err = np.stack([np.bincount(shell, weights=e) for e in voxel_err])
    chosen = _one_standard_error(voxel_err, err, np.zeros(2, dtype=np.int64), shell, 1.0)
    assert list(chosen) == [1, 1]  # not 2: its excess is many standard errors
    # a region covering a hundredth of the box has ten times the standard error: now candidate 2 passes too
    assert list(_one_standard_error(voxel_err, err, np.zeros(2, dtype=np.int64), shell, 0.0001)) == [2, 2]


def test_padded_candidates_are_judged_against_the_unpadded_smallest_neighbourhood(monkeypatch):
    """Step 3 with ``oversample`` 2: the reference halves are the smallest neighbourhood back-projected without
    padding (same particles, same kernel weights); with ``oversample`` 1 the first candidate is the reference."""
    import cryoscape.analysis.neighbour_recon as nr

    vol = _state(3)
    images, rot = _images(vol, 60, 4)
    z = np.linspace(0.0, 1.0, 60)[:, None]
    calls, seen = [], []
    real_bp, real_choose = nr.backproject, nr._choose_per_shell

    def spy_bp(*args, **kwargs):
        calls.append((kwargs["oversample"], np.flatnonzero(kwargs["particle_weights"]).tolist(),
                      kwargs["particle_weights"].copy()))
        return real_bp(*args, **kwargs)

    def spy_choose(cands, weight=None, reference=None):
        seen.append((cands, reference))
        return real_choose(cands, weight, reference)

    monkeypatch.setattr(nr, "backproject", spy_bp)
    monkeypatch.setattr(nr, "_choose_per_shell", spy_choose)
    for oversample in (2, 1):
        calls.clear()
        seen.clear()
        rec = NeighbourReconstructor(z, images, rot, np.zeros((60, 2)), None, APIX, ks=(10, 20), device="cpu",
                                     oversample=oversample, local=False)
        rec.reconstruct([0.3])
        cands, reference = seen[-1]
        if oversample == 2:
            # the ladder (10, 20) and the whole set padded, then the 10 nearest again unpadded as the reference
            assert [c[0] for c in calls] == [2, 2, 2, 1]
            assert calls[3][1] == calls[0][1] and np.allclose(calls[3][2], calls[0][2])
            assert reference is not None and reference["half_a"].shape == (D, D, D)
            assert not np.allclose(reference["half_a"], cands[0]["half_a"])
        else:
            assert [c[0] for c in calls] == [1, 1, 1] and reference is None
