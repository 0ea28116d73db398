"""Atomic-model motion mode of `cryoscape simulate`: only the chosen atoms turn, by the stated angle."""

from __future__ import annotations

import numpy as np
import pytest

from cryoscape.errors import InputError
from cryoscape.simulate.atomic import (
    motion_coordinates,
    parse_selection,
    read_atom_table,
    select_atoms,
    states_from_motion,
)


def _write_model(path, fmt="pdb"):
    """Two chains of 12 residues (C and N atoms), chain A along x at y = -4, chain B along x at y = +4."""
    import gemmi

    st = gemmi.Structure()
    model = gemmi.Model("1")
    for name, y in (("A", -4.0), ("B", 4.0)):
        chain = gemmi.Chain(name)
        for i in range(12):
            res = gemmi.Residue()
            res.name = "GLY"
            res.seqid = gemmi.SeqId(i + 1, " ")
            for atom_name, el, dz in (("CA", "C", 0.0), ("N", "N", 1.2)):
                atom = gemmi.Atom()
                atom.name, atom.element = atom_name, gemmi.Element(el)
                atom.pos = gemmi.Position(1.5 * i - 8.0, y, dz)
                atom.occ = 1.0
                res.add_atom(atom)
            chain.add_residue(res)
        model.add_chain(chain)
    st.add_model(model)
    st.setup_entities()
    if fmt == "pdb":
        st.write_pdb(str(path))
    else:
        st.make_mmcif_document().write_file(str(path))
    return path


def _angle_about(p, q, a, u):
    """Signed angle (degrees) from p to q about the axis through a along u."""
    u = u / np.linalg.norm(u)
    pp, qq = p - a, q - a
    pp, qq = pp - (pp @ u) * u, qq - (qq @ u) * u
    return np.degrees(np.arctan2(np.cross(pp, qq) @ u, pp @ qq))


@pytest.mark.parametrize("fmt", ["pdb", "cif"])
def test_motion_moves_only_the_selected_atoms_by_the_stated_angle(tmp_path, fmt):
    path = _write_model(tmp_path / f"m.{fmt}", fmt)
    xyz, w, chains, residues = read_atom_table(path)
    assert xyz.shape == (48, 3) and set(chains.tolist()) == {"A", "B"}
    moving = select_atoms(chains, residues, "B:4-9")
    assert moving.sum() == 12 and set(residues[moving].tolist()) == set(range(4, 10))
    axis = np.array([[0.0, 4.0, 0.0], [0.0, 4.0, 5.0]])  # along z through (0, 4)
    confs = motion_coordinates(xyz, moving, axis, [-20.0, 0.0, 35.0])
    np.testing.assert_allclose(confs[1], xyz)
    for conf, angle in zip((confs[0], confs[2]), (-20.0, 35.0), strict=True):
        np.testing.assert_array_equal(conf[~moving], xyz[~moving])  # fixed atoms untouched
        assert not np.allclose(conf[moving], xyz[moving])
        # distances to the axis kept, each moved atom turned by the stated angle about the axis
        for p, q in zip(xyz[moving], conf[moving], strict=True):
            if np.linalg.norm((p - axis[0])[:2]) > 1e-6:
                assert _angle_about(p, q, axis[0], axis[1] - axis[0]) == pytest.approx(angle, abs=1e-6)
        np.testing.assert_allclose(conf[moving][:, 2], xyz[moving][:, 2])  # along the axis: unchanged
    # a whole chain
    assert select_atoms(chains, residues, "A").sum() == 24


def test_states_from_motion_maps_and_ground_truth(tmp_path):
    path = _write_model(tmp_path / "m.pdb")
    s = states_from_motion(path, "B", [[0, 4, 0], [0, 4, 1]], (-30, 30), n_states=5, D=24, pixel_size_angstrom=2.0)
    assert s.n_states == 5 and s.name == "motion"
    np.testing.assert_allclose(s.extra["angle_deg"], [-30, -15, 0, 15, 30])
    np.testing.assert_allclose(s.coordinates, [0, 0.25, 0.5, 0.75, 1])
    v0, v2, v4 = s.render(0), s.render(2), s.render(4)
    assert v0.shape == (24, 24, 24)
    assert v0.sum() == pytest.approx(v4.sum(), rel=1e-3)  # same atoms, moved
    assert np.abs(v0 - v2).max() > 0.05 * v2.max()


def test_motion_errors(tmp_path):
    path = _write_model(tmp_path / "m.pdb")
    with pytest.raises(InputError, match="matches no atom"):
        states_from_motion(path, "C", [[0, 0, 0], [0, 0, 1]], n_states=3, D=24)
    with pytest.raises(InputError, match="zero length"):
        states_from_motion(path, "B", [[0, 0, 0], [0, 0, 0]], n_states=3, D=24)
    with pytest.raises(InputError, match="box radius"):
        states_from_motion(path, "B", [[0, 0, 0], [0, 0, 1]], n_states=3, D=8)
    with pytest.raises(InputError):
        parse_selection("B:9-4")


def test_simulate_cli_motion_mode(tmp_path):
    from cryoscape.cli.main import main

    path = _write_model(tmp_path / "m.pdb")
    out = tmp_path / "sim"
    rc = main(["simulate", "--pdb", str(path), "--move", "B:1-12", "--hinge-axis", "0", "4", "0", "0", "4", "1",
               "--angles", "-20", "20", "--n-conformations", "4", "-N", "24", "-D", "24", "--apix", "2",
               "-o", str(out), "--device", "cpu"])
    assert rc == 0
    with np.load(out / "labels.npz") as lab:
        states, angle = lab["state"], lab["angle_deg"]
        np.testing.assert_allclose(angle, np.linspace(-20, 20, 4)[states])
        np.testing.assert_allclose(lab["coordinate"], (angle + 20) / 40, atol=1e-6)
    assert sorted(p.name for p in (out / "gt").iterdir()) == [f"state_{i:03d}.mrc" for i in range(4)]
    rc = main(["simulate", "--pdb", str(path), "--move", "B", "-N", "4", "-D", "24", "-o", str(tmp_path / "x")])
    assert rc != 0
