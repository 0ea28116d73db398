"""Index files: .npy/.txt/.pkl round trips and validation errors naming the file."""

import pickle

import numpy as np
import pytest

from cryoscape.errors import InputError
from cryoscape.io.indices import read_indices, write_indices


@pytest.mark.parametrize("suffix", [".npy", ".txt", ".pkl"])
def test_round_trip(tmp_path, suffix):
    idx = np.array([7, 0, 3, 12])
    path = write_indices(tmp_path / f"ind{suffix}", idx)
    assert path == tmp_path / f"ind{suffix}" and path.exists()
    back = read_indices(path, n=13)
    assert back.dtype == np.int64
    np.testing.assert_array_equal(back, idx)


def test_cryodrgn_pickle_and_text_comments(tmp_path):
    p = tmp_path / "ind.pkl"
    p.write_bytes(pickle.dumps(np.array([4, 1], dtype=np.int64)))
    np.testing.assert_array_equal(read_indices(p), [4, 1])
    t = tmp_path / "ind.txt"
    t.write_text("# selected\n5\n2  # second\n\n9\n")
    np.testing.assert_array_equal(read_indices(t), [5, 2, 9])


def test_errors(tmp_path):
    cases = {
        "dup.txt": ("1\n2\n1\n", "duplicated.*e.g. 1"),
        "neg.txt": ("1\n-2\n", "negative index -2"),
        "word.txt": ("1\nabc\n", "'abc' is not an integer"),
        "big.txt": ("0\n10\n", "index 10 is out of range for 10 particles"),
        "empty.txt": ("", "empty"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=rf"{name.replace('.', '[.]')}.*{message}"):
            read_indices(tmp_path / name, n=10)
    f = tmp_path / "float.npy"
    np.save(f, np.array([1.5, 2.0]))
    with pytest.raises(InputError, match=r"float\.npy.*whole numbers"):
        read_indices(f)
    with pytest.raises(InputError, match=r"none\.npy.*not found"):
        read_indices(tmp_path / "none.npy")
