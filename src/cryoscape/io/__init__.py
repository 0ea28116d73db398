"""Reading and writing cryo-EM files: MRC maps/stacks, RELION STAR, cryoSPARC .cs, cryoDRGN pickles, index lists.

Every reader converts into cryoscape's conventions (``cryoscape.metadata``) and reports bad input as a one-line
:class:`cryoscape.errors.InputError` naming the file; every writer writes atomically.
"""

from cryoscape.io.cs import CSParticles, read_cs, write_cs, write_cs_subset
from cryoscape.io.imagestack import ImageStack
from cryoscape.io.indices import read_indices, validate_indices, write_indices
from cryoscape.io.mrc import MRCInfo, open_stack, open_stack_for_writing, read_header, read_mrc, validate_box, write_mrc
from cryoscape.io.particles import ParticleSet, load_particles, write_particle_subset
from cryoscape.io.pkl import load_pickle, read_ctf_pkl, read_pose_pkl, write_ctf_pkl, write_pose_pkl
from cryoscape.io.star import StarParticles, format_image_names, read_star_particles, write_star, write_star_subset

__all__ = [
    "MRCInfo", "read_header", "read_mrc", "write_mrc", "open_stack", "open_stack_for_writing", "validate_box",
    "ImageStack",
    "StarParticles", "read_star_particles", "write_star", "write_star_subset", "format_image_names",
    "CSParticles", "read_cs", "write_cs", "write_cs_subset",
    "load_pickle", "read_pose_pkl", "write_pose_pkl", "read_ctf_pkl", "write_ctf_pkl",
    "read_indices", "write_indices", "validate_indices",
    "ParticleSet", "load_particles", "write_particle_subset",
]
