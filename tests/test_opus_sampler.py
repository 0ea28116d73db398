"""HEALPix projection classes and the one-class-per-batch epoch plan of OPUS-DSD."""

import healpy
import numpy as np
import pytest

from cryoscape.data.healpix_sampler import class_batches, view_classes
from cryoscape.imaging.rotations import euler_relion_to_matrix, random_rotations
from cryoscape.models.opus_dsd import OpusDSDFamily
from cryoscape.train.distributed import DistInfo


def test_view_classes_follow_rot_and_tilt_not_psi():
    rng = np.random.default_rng(0)
    n = 400
    rot = rng.uniform(-180, 180, n)
    tilt = np.degrees(np.arccos(rng.uniform(-1, 1, n)))
    psi = rng.uniform(-180, 180, n)
    A = euler_relion_to_matrix(np.stack([rot, tilt, psi], axis=1))
    classes = view_classes(A)
    # independent definition: HEALPix pixel of (theta, phi) = (tilt, rot)
    expected = healpy.ang2pix(2, np.radians(tilt), np.radians(rot) % (2 * np.pi), nest=True)
    np.testing.assert_array_equal(classes, expected)
    A2 = euler_relion_to_matrix(np.stack([rot, tilt, rng.uniform(-180, 180, n)], axis=1))
    np.testing.assert_array_equal(view_classes(A2), classes)  # in-plane angle does not matter
    assert classes.min() >= 0 and classes.max() < 48
    assert len(np.unique(view_classes(random_rotations(5000, 1)))) == 48


def _check_epoch(batches_per_rank, classes, positions, batch_size):
    flat = np.concatenate([b for rank in batches_per_rank for b in rank])
    np.testing.assert_array_equal(np.sort(flat), np.sort(positions))  # every particle exactly once
    for rank in batches_per_rank:
        for b in rank:
            assert 1 <= len(b) <= batch_size
            assert len(np.unique(classes[b])) == 1  # one projection class per batch
    assert len({len(rank) for rank in batches_per_rank}) == 1  # same number of steps on every process


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_class_batches_visit_every_particle_once_per_epoch(world_size):
    rng = np.random.default_rng(1)
    classes = view_classes(random_rotations(700, 2))
    positions = np.sort(rng.choice(700, 630, replace=False))
    for epoch in (1, 2):
        plan = [class_batches(classes, positions, 5, epoch, 16, r, world_size) for r in range(world_size)]
        _check_epoch(plan, classes, positions, 16)


def test_class_batches_are_deterministic_per_epoch():
    classes = view_classes(random_rotations(300, 3))
    pos = np.arange(300)
    a = class_batches(classes, pos, 0, 3, 8)
    b = class_batches(classes, pos, 0, 3, 8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=False)) and len(a) == len(b)
    c = class_batches(classes, pos, 0, 4, 8)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=False))
    d = class_batches(classes, pos, 1, 3, 8)
    assert not all(np.array_equal(x, y) for x, y in zip(a, d, strict=False))


def test_class_batches_small_data_and_uneven_processes():
    classes = np.array([0, 0, 0, 1, 1, 2, 0])
    # 3 single-class batches; 2 processes need 4 -> the largest batch is halved, nobody is repeated
    plan = [class_batches(classes, np.arange(7), 0, 1, 4, r, 2) for r in range(2)]
    _check_epoch(plan, classes, np.arange(7), 4)
    # fewer particles than processes: padded by repetition, every process still gets a batch
    plan = [class_batches(classes, np.array([3]), 0, 1, 4, r, 3) for r in range(3)]
    assert [len(p) for p in plan] == [1, 1, 1] and all(np.array_equal(p[0], [3]) for p in plan)
    assert class_batches(classes, np.array([], dtype=np.int64), 0, 1, 4) == []


def test_family_epoch_batches_use_the_data_classes():
    class _Data:
        view_classes = view_classes(random_rotations(200, 4))

    fam = OpusDSDFamily()
    pos = np.arange(0, 200, 2)
    plan = [fam.epoch_batches(_Data(), pos, 0, 1, 10, DistInfo(rank=r, world_size=2)) for r in range(2)]
    _check_epoch(plan, _Data.view_classes, pos, 10)
