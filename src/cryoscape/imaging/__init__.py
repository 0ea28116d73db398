"""Image formation: centred FFT/Hartley transforms, CTF, rotations, Fourier lattices, shifts, projection, masks.

Pure, batched, differentiable torch functions (rotation conversions are numpy float64). Conventions are in
``docs/conventions.md``.
"""

from cryoscape.imaging.ctf import compute_ctf, ctf_image, electron_wavelength_angstrom, phase_flip
from cryoscape.imaging.fft import (
    fft2_centered,
    fft3_centered,
    fftfreq_centered,
    fourier_crop,
    fourier_pad,
    freq_grid_2d,
    hartley2,
    hartley3,
    ifft2_centered,
    ifft3_centered,
    ihartley2,
    ihartley3,
    resample_volume,
)
from cryoscape.imaging.lattice import central_slice_coords, circle_mask, hermitian_half, radius_grid_px
from cryoscape.imaging.masks import soft_circular_window, soft_edge_mask, sphere_mask
from cryoscape.imaging.projection import (
    extract_central_slices,
    project_fourier,
    project_real,
    rotation_grid,
    sample_volume,
)
from cryoscape.imaging.rotations import (
    cryosparc_pose_to_matrix,
    euler_relion_to_matrix,
    matrix_to_cryosparc_pose,
    matrix_to_euler_relion,
    matrix_to_quaternion,
    quaternion_to_matrix,
    random_rotations,
)
from cryoscape.imaging.shift import phase_shift, translate_images

__all__ = [
    "fft2_centered",
    "ifft2_centered",
    "fft3_centered",
    "ifft3_centered",
    "hartley2",
    "ihartley2",
    "hartley3",
    "ihartley3",
    "fftfreq_centered",
    "freq_grid_2d",
    "fourier_crop",
    "fourier_pad",
    "resample_volume",
    "electron_wavelength_angstrom",
    "compute_ctf",
    "ctf_image",
    "phase_flip",
    "euler_relion_to_matrix",
    "matrix_to_euler_relion",
    "cryosparc_pose_to_matrix",
    "matrix_to_cryosparc_pose",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "random_rotations",
    "central_slice_coords",
    "circle_mask",
    "radius_grid_px",
    "hermitian_half",
    "phase_shift",
    "translate_images",
    "sample_volume",
    "extract_central_slices",
    "project_fourier",
    "project_real",
    "rotation_grid",
    "soft_circular_window",
    "sphere_mask",
    "soft_edge_mask",
]
