"""Per-particle pose corrections learned during training (``cryoscape train --refine-poses``).

Each particle ``i`` carries a rotation correction ``w_i`` (an axis-angle vector, radians, in the tangent space
of SO(3); no gimbal lock) and an in-plane shift correction ``s_i`` (pixels). With the consensus pose ``(A_i,
o_i)`` (RELION's matrix ``A``, volume -> image frame, and origin ``o_i``; ``docs/conventions.md``) the learned
pose is::

    A'_i = exp([w_i]x) @ A_i          (the correction acts in the image (camera) frame)
    o'_i = o_i + s_i                  (pixels; the particle centre sits at the box centre minus the origin)

so ``w_i = (0, 0, t)`` turns the image in plane by ``t`` (a change of ``psi``), ``w_x``, ``w_y`` tilt the
viewing direction, and ``|w_i|`` is the geodesic angle between the consensus and the learned rotation.

Memory is linear in the number of particles and stays on the CPU: a :class:`PoseTable` holds the corrections
and the optimiser state of a per-row Adam (first and second moments and a step count per particle; bias
correction per row, so a particle seen once per epoch gets Adam's intended first steps). A training step takes
the rows of its batch (:meth:`PoseTable.take`, leaf tensors moved to the training device), and after the
backward pass hands their gradients to :meth:`PoseTable.step`, which updates those rows only. Nothing of size
``N`` ever goes to the GPU.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

__all__ = ["so3_exp", "compose", "hartley_translate", "PoseTable", "rotation_angle_deg", "PoseRefiner",
           "LearnedPoseData", "save_learned_poses", "load_learned_poses"]


def so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``exp([w]x)`` ``(..., 3, 3)`` of axis-angle vectors ``w`` ``(..., 3)`` (radians).

    Rodrigues' formula with Taylor series below 1e-4 rad, so values and gradients are finite at ``w = 0``.
    ``exp([w]x) v = v cos t + (k x v) sin t + k (k . v)(1 - cos t)`` with ``t = |w|``, ``k = w / t``: an active
    right-handed rotation of column vectors.
    """
    theta2 = (w * w).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    theta = torch.sqrt(theta2.clamp_min(1e-30))
    small = theta2 < 1e-8
    safe_t = torch.where(small, torch.ones_like(theta), theta)
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(safe_t) / safe_t)  # sin t / t
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(safe_t)) / (safe_t * safe_t))  # (1 - cos t)/t^2
    zero = torch.zeros_like(w[..., 0])
    K = torch.stack([torch.stack([zero, -w[..., 2], w[..., 1]], -1),
                     torch.stack([w[..., 2], zero, -w[..., 0]], -1),
                     torch.stack([-w[..., 1], w[..., 0], zero], -1)], -2)
    eye = torch.eye(3, dtype=w.dtype, device=w.device).expand(K.shape)
    return eye + a * K + b * (K @ K)


def compose(rotations: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The learned rotations ``exp([w]x) @ A`` ``(B, 3, 3)`` of consensus matrices ``A`` and corrections ``w``."""
    return so3_exp(w.to(rotations.dtype)) @ rotations


def rotation_angle_deg(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Geodesic angle (degrees) between rotation matrices ``A`` and ``B`` ``(N, 3, 3)``."""
    R = np.einsum("nij,nkj->nik", np.asarray(A, np.float64), np.asarray(B, np.float64))
    cos = (np.trace(R, axis1=1, axis2=2) - 1.0) / 2.0
    return np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0)))


def hartley_translate(h: torch.Tensor, half_freqs: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Translate images given as Hartley values in ``[half (M), mates (M), DC]`` order (``FourierPixels``).

    Parameters
    ----------
    h : ``(B, 2M + 1)`` Hartley values ``H = Re F - Im F``.
    half_freqs : ``(M, 2)`` ``(kx, ky)`` in cycles/pixel of the half-plane pixels.
    shifts_px : ``(B, 2)`` translations ``(tx, ty)``: ``img'(x) = img(x - t)``, ``F' = F exp(-2 pi i k.t)``.

    Returns
    -------
    ``(B, 2M + 1)`` Hartley values of the translated images (DC unchanged). Differentiable in both inputs.
    """
    m = half_freqs.shape[0]
    hk, hm, dc = h[:, :m], h[:, m : 2 * m], h[:, 2 * m :]
    a, b = (hk + hm) / 2, (hm - hk) / 2  # F(k) = a + i b, F(-k) = a - i b
    phase = 2.0 * math.pi * (shifts_px.to(h.dtype) @ half_freqs.to(h.dtype).T)  # (B, M)
    c, s = torch.cos(phase), torch.sin(phase)
    a2, b2 = a * c + b * s, b * c - a * s  # (a + i b)(c - i s)
    return torch.cat([a2 - b2, a2 + b2, dc], dim=1)


class PoseTable:
    """Rotation (``(N, 3)``, radians) and shift (``(N, 2)``, pixels) corrections of ``N`` particles with a
    per-row Adam optimiser; everything on the CPU, memory ``O(N)`` (64 bytes a particle).

    Parameters
    ----------
    n : number of particles (data positions ``0 .. n-1``).
    lr : Adam step size of the rotation corrections (radians).
    shift_lr : Adam step size of the shift corrections (pixels); default ``lr * 10``.
    betas, eps : Adam's.
    """

    def __init__(self, n: int, lr: float = 3e-3, shift_lr: float | None = None, betas=(0.9, 0.999),
                 eps: float = 1e-8):
        self.n = int(n)
        self.lr = float(lr)
        self.shift_lr = float(shift_lr) if shift_lr is not None else 10.0 * self.lr
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.values = torch.zeros(self.n, 5, dtype=torch.float32)  # [w (3), shift (2)]
        self.exp_avg = torch.zeros(self.n, 5, dtype=torch.float32)
        self.exp_avg_sq = torch.zeros(self.n, 5, dtype=torch.float32)
        self.steps = torch.zeros(self.n, dtype=torch.int32)

    @property
    def rotvec(self) -> torch.Tensor:
        """``(N, 3)`` rotation corrections (a view)."""
        return self.values[:, :3]

    @property
    def shift_px(self) -> torch.Tensor:
        """``(N, 2)`` shift corrections in pixels (a view)."""
        return self.values[:, 3:]

    def nbytes(self) -> int:
        """Bytes held (corrections and optimiser state)."""
        return sum(t.numel() * t.element_size() for t in (self.values, self.exp_avg, self.exp_avg_sq, self.steps))

    def take(self, index, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Leaf tensors ``(w (B, 3), shift (B, 2))`` of the rows ``index`` on ``device``, requiring grad; after
        ``backward`` their ``.grad`` goes to :meth:`step`.
        """
        idx = torch.as_tensor(np.asarray(index.cpu() if torch.is_tensor(index) else index), dtype=torch.long)
        rows = self.values[idx].to(device if device is not None else "cpu")
        w = rows[:, :3].clone().requires_grad_(True)
        s = rows[:, 3:].clone().requires_grad_(True)
        return w, s

    @torch.no_grad()
    def step(self, index, grad_w: torch.Tensor | None, grad_s: torch.Tensor | None, scale: float = 1.0) -> None:
        """One Adam step on the rows ``index`` (unique) with their gradients (``None``: zero), times ``scale``."""
        idx = torch.as_tensor(np.asarray(index.cpu() if torch.is_tensor(index) else index), dtype=torch.long)
        if idx.numel() == 0:
            return
        if idx.unique().numel() != idx.numel():
            raise ValueError("PoseTable.step: an index appears twice in one step")
        g = torch.zeros(idx.numel(), 5, dtype=torch.float32)
        if grad_w is not None:
            g[:, :3] = grad_w.detach().float().cpu()
        if grad_s is not None:
            g[:, 3:] = grad_s.detach().float().cpu()
        g *= float(scale)
        b1, b2 = self.betas
        t = (self.steps[idx] + 1).to(torch.float64)
        self.steps[idx] += 1
        m = self.exp_avg[idx].mul_(b1).add_(g, alpha=1 - b1)
        v = self.exp_avg_sq[idx].mul_(b2).addcmul_(g, g, value=1 - b2)
        self.exp_avg[idx], self.exp_avg_sq[idx] = m, v
        c1 = (1 - b1 ** t).float()[:, None]
        c2 = (1 - b2 ** t).float()[:, None]
        update = (m / c1) / ((v / c2).sqrt() + self.eps)
        lr = torch.tensor([self.lr] * 3 + [self.shift_lr] * 2, dtype=torch.float32)
        self.values[idx] -= update * lr

    def state_dict(self) -> dict:
        """Tensors and numbers only (safe for ``torch.load(weights_only=True)``)."""
        return {"n": self.n, "lr": self.lr, "shift_lr": self.shift_lr, "betas": list(self.betas), "eps": self.eps,
                "values": self.values.clone(), "exp_avg": self.exp_avg.clone(),
                "exp_avg_sq": self.exp_avg_sq.clone(), "steps": self.steps.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved (the table must hold as many particles)."""
        if int(state["n"]) != self.n:
            raise ValueError(f"pose table of {state['n']} particles, this run has {self.n}")
        for key in ("values", "exp_avg", "exp_avg_sq", "steps"):
            getattr(self, key).copy_(state[key])

    def learned(self, rotations: np.ndarray, shifts_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The learned ``(rotations (N, 3, 3), origins in pixels (N, 2))`` of consensus ``rotations`` and
        ``shifts_px`` (float64).
        """
        w = self.rotvec.double()
        A = compose(torch.as_tensor(np.asarray(rotations), dtype=torch.float64), w).numpy()
        return A, np.asarray(shifts_px, np.float64) + self.shift_px.double().numpy()


# -- learned poses in the run folder (RUN/poses/epoch_NNN.npz) --------------------------------------------------
POSE_FILE_KEYS = ("rotations", "shifts_angstrom", "rotvec", "shift_px", "refined")


def save_learned_poses(path, rotations: np.ndarray, shifts_angstrom: np.ndarray, rotvec: np.ndarray,
                       shift_px: np.ndarray, refined: np.ndarray) -> None:
    """Write ``RUN/poses/epoch_NNN.npz`` atomically: per training particle (data positions, the rows of
    ``RUN/indices.npy``) the learned ``rotations`` ``(N, 3, 3)`` (RELION ``A``) and ``shifts_angstrom`` ``(N, 2)``
    (RELION origin), the corrections ``rotvec`` (radians) and ``shift_px`` and ``refined`` (bool: the particle's
    pose was optimised; validation particles keep their consensus pose).
    """
    from cryoscape.utils.atomic import atomic_path

    with atomic_path(path) as tmp:
        np.savez(tmp, rotations=np.asarray(rotations, np.float64), shifts_angstrom=np.asarray(shifts_angstrom,
                 np.float64), rotvec=np.asarray(rotvec, np.float32), shift_px=np.asarray(shift_px, np.float32),
                 refined=np.asarray(refined, bool))


def load_learned_poses(run_dir, epoch: int | None = None) -> tuple[int, dict]:
    """``(epoch, arrays)`` of the learned poses of a run (``epoch`` ``None``: the best epoch, else the last one with
    checkpoints); an :class:`~cryoscape.errors.InputError` names the run when it did not refine poses.
    """
    from cryoscape.errors import InputError
    from cryoscape.rundir import RunDir

    run = RunDir(run_dir)
    epoch = run.resolve_epoch(epoch)
    path = run.learned_poses_path(epoch)
    if not path.is_file():
        hint = "train with --refine-poses to learn poses" if not run.pose_dir.is_dir() else \
            "poses are written with every checkpointed epoch after --refine-start"
        raise InputError(f"no learned poses for epoch {epoch}", run.path, hint=hint)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in POSE_FILE_KEYS}
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot read the learned poses ({exc.__class__.__name__})", path) from None
    return epoch, arrays


# -- in the training loop --------------------------------------------------------------------------------
# Pose refinement in the training loop (``train --refine-poses``), driven by the engine (train/engine.py).
#
# For every training step from epoch ``refine_start`` on, :meth:`PoseRefiner.prepare` takes the batch's rows of the
# :class:`~cryoscape.models.poses.PoseTable` (leaf tensors on the training device) and gives the model a batch whose
# rotations are ``exp([w]x) @ A`` and whose images are translated by the shift corrections ``s`` (in the Hartley
# domain, exactly as if the image had been prepared with the origin ``o + s``; the encoder sees the corrected image,
# as cryoDRGN's pose SGD does); after the backward pass :meth:`PoseRefiner.step` gathers the rows' gradients over the
# processes (every process then applies every row, so the tables stay identical and two processes learn what one
# learns with their combined batch) and takes one Adam step on those rows.
#
# Validation particles are never in a training batch: they keep their consensus poses, and the validation loss is
# computed with them (it stays an honest held-out measure; nothing is fitted to those images).


def _get(batch, key: str):
    return batch[key] if isinstance(batch, dict) else getattr(batch, key)


def _replace(batch, **values):
    if isinstance(batch, dict):
        return {**batch, **values}
    return dataclasses.replace(batch, **values)


class PoseRefiner:
    """Per-particle pose corrections of a slice-based data provider, learned during training.

    Parameters
    ----------
    n : number of particles of the data provider (positions ``0 .. n-1``).
    half_freqs : ``(M, 2)`` half-plane frequencies (cycles/pixel) of the provider's Hartley pixels
        (``[half, mates, DC]`` order, :class:`~cryoscape.data.fourier_pixels.FourierPixels`).
    lr, shift_lr : Adam step sizes of the rotation (radians) and shift (pixels) corrections.
    start_epoch : first epoch (1-based) whose steps refine the poses; earlier epochs train with fixed poses.
    """

    def __init__(self, n: int, half_freqs: torch.Tensor, lr: float, shift_lr: float | None = None,
                 start_epoch: int = 1):
        self.table = PoseTable(n, lr=lr, shift_lr=shift_lr)
        self.half_freqs = torch.as_tensor(half_freqs, dtype=torch.float32).cpu()
        self.start_epoch = int(start_epoch)
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._freqs_on: dict[torch.device, torch.Tensor] = {}

    def active(self, epoch: int) -> bool:
        """Whether the steps of ``epoch`` (1-based) refine the poses."""
        return int(epoch) >= self.start_epoch

    def _freqs(self, device) -> torch.Tensor:
        device = torch.device(device)
        if device not in self._freqs_on:
            self._freqs_on[device] = self.half_freqs.to(device)
        return self._freqs_on[device]

    def _apply(self, batch, w: torch.Tensor, s: torch.Tensor):
        rot, y = _get(batch, "rot"), _get(batch, "y")
        return _replace(batch, rot=compose(rot, w).to(rot.dtype),
                        y=hartley_translate(y, self._freqs(y.device), s).to(y.dtype))

    def prepare(self, batch):
        """The batch with its particles' current corrections applied (differentiable in the corrections)."""
        index = _get(batch, "index")
        device = _get(batch, "y").device
        w, s = self.table.take(index, device)
        self._pending = (index.detach().to(device).long(), w, s)
        return self._apply(batch, w, s)

    @torch.no_grad()
    def corrected(self, batch):
        """The batch with the learned corrections applied (no gradient; latents, evaluation)."""
        w, s = self.table.take(_get(batch, "index"), _get(batch, "y").device)
        return self._apply(batch, w.detach(), s.detach())

    def step(self, gather_rows, world_size: int = 1, grad_scale: float = 1.0) -> None:
        """One Adam step on the rows of the last :meth:`prepare` (after ``backward``).

        ``gather_rows`` concatenates tensors over the processes (the engine's collective); ``grad_scale`` undoes an
        AMP loss scale. Each process's loss is the mean over its own batch and DDP averages the model's gradients
        over the processes; the pose gradients are divided by ``world_size`` likewise, so that two processes with
        batch ``b`` step as one process with batch ``2 b``.
        """
        if self._pending is None:
            return
        index, w, s = self._pending
        self._pending = None
        gw = w.grad if w.grad is not None else torch.zeros_like(w)
        gs = s.grad if s.grad is not None else torch.zeros_like(s)
        index, gw, gs = gather_rows(index, gw.detach(), gs.detach())
        self.table.step(index.cpu(), gw, gs, scale=grad_scale / max(1, int(world_size)))

    # -- state -----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a checkpoint keeps (the table and its optimiser state)."""
        return {"start_epoch": self.start_epoch, "table": self.table.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.table.load_state_dict(state["table"])

    def save(self, path, rotations, shifts_px, pixel_size_angstrom: float, refined_positions) -> None:
        """Write the learned poses (``RUN/poses/epoch_NNN.npz``) of consensus ``rotations`` ``(N, 3, 3)`` and
        origins ``shifts_px`` ``(N, 2)``; ``refined_positions`` are the particles whose poses were optimised.
        """
        A, origin_px = self.table.learned(np.asarray(rotations), np.asarray(shifts_px))
        refined = np.zeros(self.table.n, dtype=bool)
        refined[np.asarray(refined_positions, dtype=np.int64)] = True
        save_learned_poses(path, A, origin_px * float(pixel_size_angstrom), self.table.rotvec.numpy(),
                           self.table.shift_px.numpy(), refined)


class LearnedPoseData:
    """A slice-based data provider whose batches carry learned poses (the corrections of a :class:`PoseRefiner`
    or of a run's ``RUN/poses/epoch_NNN.npz``), for encoding and evaluation; everything else is the provider's.
    """

    def __init__(self, data, refiner: PoseRefiner):
        self.data = data
        self.refiner = refiner

    def __len__(self) -> int:
        return len(self.data)

    def __getattr__(self, name):
        return getattr(self.data, name)

    def batch(self, indices):
        """The provider's batch with the learned poses."""
        return self.refiner.corrected(self.data.batch(indices))

    @classmethod
    def from_file(cls, data, arrays: dict) -> LearnedPoseData:
        """From the arrays of a learned-pose file (:func:`cryoscape.models.poses.load_learned_poses`)."""
        refiner = PoseRefiner(len(data), data.pixels.half_freqs(), lr=0.0)
        rotvec, shift = np.asarray(arrays["rotvec"]), np.asarray(arrays["shift_px"])
        if len(rotvec) != len(data):
            raise ValueError(f"learned poses of {len(rotvec)} particles for {len(data)}")
        refiner.table.values[:, :3] = torch.from_numpy(rotvec.astype(np.float32))
        refiner.table.values[:, 3:] = torch.from_numpy(shift.astype(np.float32))
        return cls(data, refiner)
