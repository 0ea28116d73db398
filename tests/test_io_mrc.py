"""MRC reading/writing: header round trip, float32, lazy stacks, and one-line errors for bad files."""

import mrcfile
import numpy as np
import pytest

from cryoscape.errors import InputError
from cryoscape.io.mrc import open_stack, open_stack_for_writing, read_header, read_mrc, validate_box, write_mrc


def test_volume_round_trip_header(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(16, 16, 16)).astype(np.float64)
    path = write_mrc(tmp_path / "vol.mrc", vol, 2.25, origin_angstrom=(-18.0, 4.5, 9.0))
    data, info = read_mrc(path)
    assert data.dtype == np.float32 and data.shape == (16, 16, 16)
    np.testing.assert_array_equal(data, vol.astype(np.float32))
    assert info.voxel_size_angstrom == pytest.approx(2.25)
    assert info.origin_angstrom == (-18.0, 4.5, 9.0)
    assert not info.is_stack
    # independent check with mrcfile: cell = voxel * n, origin stored, volume space group, float32 mode
    with mrcfile.open(path) as m:
        assert m.header.mode == 2
        assert float(m.header.cella.x) == pytest.approx(2.25 * 16)
        assert int(m.header.ispg) == 1
        assert float(m.header.origin.x) == -18.0
    assert not list(tmp_path.glob(".vol*"))  # no temporary file left behind


def test_stack_written_as_image_stack_and_lazy_equals_eager(tmp_path):
    rng = np.random.default_rng(1)
    stack = rng.normal(size=(7, 16, 16)).astype(np.float32)
    path = write_mrc(tmp_path / "p.mrcs", stack, 1.3)
    with mrcfile.open(path) as m:
        assert m.is_image_stack()
    lazy, info = open_stack(path, lazy=True)
    eager, _ = open_stack(path, lazy=False)
    assert isinstance(lazy, np.memmap)
    assert info.n_images == 7 and info.is_stack
    np.testing.assert_array_equal(np.asarray(lazy[[4, 1]]), eager[[4, 1]])
    np.testing.assert_array_equal(eager, stack)


def test_int16_stack_read_as_float32(tmp_path):
    path = tmp_path / "i.mrcs"
    data = np.arange(2 * 4 * 4, dtype=np.int16).reshape(2, 4, 4) - 5
    with mrcfile.new(path) as m:
        m.set_data(data)
    arr, info = read_mrc(path)
    assert arr.dtype == np.float32 and info.mode == 1
    np.testing.assert_array_equal(arr, data.astype(np.float32))


def test_streaming_writer(tmp_path):
    path = tmp_path / "big.mrcs"
    with open_stack_for_writing(path, 5, 8, 3.0) as out:
        for i in range(5):
            out[i] = i
    arr, info = read_mrc(path)
    assert arr.shape == (5, 8, 8) and info.voxel_size_angstrom == pytest.approx(3.0)
    np.testing.assert_array_equal(arr[:, 0, 0], np.arange(5))


def test_not_an_mrc(tmp_path):
    path = tmp_path / "notes.mrc"
    path.write_bytes(b"this is text, not a map " * 100)
    with pytest.raises(InputError, match="notes.mrc.*not an MRC"):
        read_mrc(path)
    tiny = tmp_path / "tiny.mrcs"
    tiny.write_bytes(b"x" * 10)
    with pytest.raises(InputError, match="tiny.mrcs.*not an MRC"):
        open_stack(tiny)


def test_truncated(tmp_path):
    path = write_mrc(tmp_path / "t.mrcs", np.zeros((4, 8, 8)), 1.0)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match=r"t\.mrcs.*truncated"):
        open_stack(path)


def test_unsupported_mode(tmp_path):
    path = tmp_path / "c.mrc"
    with mrcfile.new(path) as m:
        m.set_data(np.zeros((4, 4, 4), dtype=np.complex64))
    with pytest.raises(InputError, match=r"c\.mrc.*unsupported MRC data mode 4"):
        read_header(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="gone.mrcs.*not found"):
        read_mrc(tmp_path / "gone.mrcs")


def test_validate_box(tmp_path):
    assert validate_box(32, 32, "x.mrcs") == 32
    with pytest.raises(InputError, match="x.mrcs.*square"):
        validate_box(32, 30, "x.mrcs")
    with pytest.raises(InputError, match="x.mrcs.*even"):
        validate_box(31, 31, "x.mrcs")
