"""ImageStack: lazy == eager, order kept across files, subsets, and errors for bad references/pixels."""

import pickle

import numpy as np
import pytest

from cryoscape.errors import InputError
from cryoscape.io.imagestack import ImageStack, resolve_stack_paths
from cryoscape.io.mrc import write_mrc


@pytest.fixture
def two_stacks(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(6, 16, 16)).astype(np.float32)
    b = rng.normal(size=(4, 16, 16)).astype(np.float32)
    pa = write_mrc(tmp_path / "a.mrcs", a, 1.7)
    pb = write_mrc(tmp_path / "b.mrcs", b, 1.7)
    return pa, pb, a, b


def test_refs_over_two_files_keep_order(two_stacks):
    pa, pb, a, b = two_stacks
    refs = [(pb, 3), (pa, 0), (pa, 5), (pb, 0), (pa, 2)]
    expected = np.stack([b[3], a[0], a[5], b[0], a[2]])
    lazy = ImageStack.from_refs(refs, lazy=True)
    eager = ImageStack.from_refs(refs, lazy=False)
    assert len(lazy) == 5 and lazy.D == 16
    assert lazy.pixel_size_angstrom == pytest.approx(1.7)
    np.testing.assert_array_equal(lazy.to_array(), expected)
    np.testing.assert_array_equal(eager.to_array(), expected)
    np.testing.assert_array_equal(lazy[[4, 0, 0]], expected[[4, 0, 0]])
    np.testing.assert_array_equal(lazy[1:4], expected[1:4])
    np.testing.assert_array_equal(lazy[-1], expected[-1])
    assert lazy[[1, 2]].dtype == np.float32
    sub = lazy.subset([3, 1])
    np.testing.assert_array_equal(sub.to_array(), expected[[3, 1]])
    assert sub.image_refs == [(pb, 0), (pa, 0)]
    np.testing.assert_array_equal(eager.subset([2]).to_array(), expected[[2]])


def test_from_mrcs_and_pickling(two_stacks):
    pa, _, a, _ = two_stacks
    stack = ImageStack.from_mrcs(pa, pixel_size_angstrom=2.0)
    assert stack.pixel_size_angstrom == 2.0 and len(stack) == 6
    stack[[0]]  # opens the file
    clone = pickle.loads(pickle.dumps(stack))  # e.g. sent to a DataLoader worker
    np.testing.assert_array_equal(clone[[5, 1]], a[[5, 1]])


def test_from_txt(two_stacks, tmp_path):
    pa, pb, a, b = two_stacks
    listing = tmp_path / "stacks.txt"
    listing.write_text("a.mrcs\nb.mrcs\n")
    stack = ImageStack.from_txt(listing)
    np.testing.assert_array_equal(stack.to_array(), np.concatenate([a, b]))


def test_index_past_end_names_stack(two_stacks):
    pa, pb, _, _ = two_stacks
    with pytest.raises(InputError, match=r"b\.mrcs.*image 5 .*only 4 images"):
        ImageStack.from_refs([(pa, 0), (pb, 4)])


def test_missing_stack(tmp_path, two_stacks):
    with pytest.raises(InputError, match=r"nowhere\.mrcs.*not found"):
        ImageStack.from_refs([(tmp_path / "nowhere.mrcs", 0)])


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_nan_pixels_reported_when_read(tmp_path):
    data = np.zeros((3, 8, 8), np.float32)
    data[2, 4, 4] = np.nan
    path = write_mrc(tmp_path / "nan.mrcs", data, 1.0)
    stack = ImageStack.from_mrcs(path)
    np.testing.assert_array_equal(stack[[0, 1]], 0)  # good images still readable
    with pytest.raises(InputError, match=r"nan\.mrcs.*image 2 .*NaN or Inf"):
        stack[[1, 2]]
    with pytest.raises(InputError, match=r"nan\.mrcs.*image 2"):
        ImageStack.from_mrcs(path, lazy=False)


def test_odd_or_mixed_boxes(tmp_path):
    odd = write_mrc(tmp_path / "odd.mrcs", np.zeros((2, 15, 15)), 1.0)
    with pytest.raises(InputError, match=r"odd\.mrcs.*even"):
        ImageStack.from_mrcs(odd)
    small = write_mrc(tmp_path / "small.mrcs", np.zeros((2, 8, 8)), 1.0)
    big = write_mrc(tmp_path / "big.mrcs", np.zeros((2, 16, 16)), 1.0)
    with pytest.raises(InputError, match="same box size"):
        ImageStack.from_refs([(small, 0), (big, 0)])


def test_resolve_stack_paths_datadir(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "s.mrcs").write_bytes(b"")
    (tmp_path / "proj" / "Extract").mkdir(parents=True)
    (tmp_path / "proj" / "Extract" / "e.mrcs").write_bytes(b"")
    out = resolve_stack_paths(["Movies/s.mrcs", "s.mrcs"], tmp_path / "meta", datadir=tmp_path / "data")
    assert list(out) == [str(tmp_path / "data" / "s.mrcs")] * 2
    # RELION project-relative path from Refine3D/job010/run_data.star
    out = resolve_stack_paths(["Extract/e.mrcs"], tmp_path / "proj" / "Refine3D" / "job010")
    assert list(out) == [str(tmp_path / "proj" / "Extract" / "e.mrcs")]


def test_positioned_reads_match_memory_map(tmp_path):
    import mrcfile

    from cryoscape.io.stack_reader import StackReader

    rng = np.random.default_rng(5)
    images = rng.normal(size=(40, 8, 8)).astype(np.float32)
    path = write_mrc(tmp_path / "s.mrcs", images, 1.0)
    int_path = tmp_path / "int16.mrcs"
    with mrcfile.new(int_path) as m:  # mode 1: the reader keeps the file's dtype, ImageStack converts
        m.set_data((images * 100).astype(np.int16))
        m.set_image_stack()
    order = np.array([7, 3, 4, 5, 39, 0, 3, 6, 7, 8, 20])  # unsorted, repeats, runs of consecutive images
    for p, want in ((path, images), (int_path, (images * 100).astype(np.int16))):
        pread, mapped = StackReader(p), StackReader(p, use_pread=False)
        np.testing.assert_array_equal(pread.read(order), want[order])
        np.testing.assert_array_equal(mapped.read(order), want[order])
        assert pread.read(order).dtype == want.dtype
        np.testing.assert_array_equal(pread.read(np.arange(40)), want)
        assert pread.read(np.array([], dtype=np.int64)).shape == (0, 8, 8)
        with pytest.raises(IndexError):
            pread.read(np.array([40]))
        pread.close()
        with pytest.raises(ValueError, match="closed"):
            pread.read(np.array([0]))


def test_stack_truncated_after_opening_is_a_clear_error(tmp_path):
    from cryoscape.io.stack_reader import StackReader

    path = write_mrc(tmp_path / "s.mrcs", np.ones((10, 8, 8), np.float32), 1.0)
    reader = StackReader(path)
    with open(path, "r+b") as f:  # e.g. a copy still being written, or a file system that lost data
        f.truncate(path.stat().st_size - 8 * 8 * 4 * 3)
    np.testing.assert_array_equal(reader.read(np.array([0, 6])), np.ones((2, 8, 8)))
    with pytest.raises(InputError, match="truncated") as err:
        reader.read(np.array([8]))
    assert "s.mrcs" in str(err.value)


def test_least_recently_used_stack_files_are_closed(tmp_path, monkeypatch):
    import cryoscape.io.imagestack as imagestack_module

    monkeypatch.setattr(imagestack_module, "_MAX_OPEN_FILES", 2)
    paths = [write_mrc(tmp_path / f"{i}.mrcs", np.full((3, 8, 8), i, np.float32), 1.0) for i in range(3)]
    stack = ImageStack.from_stacks(paths)
    first = stack[[0]]
    reader0 = stack._cache[0]
    np.testing.assert_array_equal(stack[[3, 6]][:, 0, 0], [1, 2])  # opens files 1 and 2, closes file 0
    assert 0 not in stack._cache and reader0._fd is None and len(stack._cache) == 2
    np.testing.assert_array_equal(stack[[0, 8]], np.stack([first[0], np.full((8, 8), 2, np.float32)]))
