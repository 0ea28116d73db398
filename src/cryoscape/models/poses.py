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

__all__ = ["so3_exp", "so3_log", "compose", "hartley_translate", "hartley_translate_jacobian", "PoseTable",
           "rotation_angle_deg", "PoseRefiner", "LearnedPoseData", "save_learned_poses", "load_learned_poses",
           "gauss_newton_pose_step", "POSE_METHODS", "reference_tilts", "tilt_compose", "TiltPoseRefiner",
           "gauss_newton_tilt_step", "SlicePredictor"]

POSE_METHODS = ("local", "sgd")


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


def so3_log(R: torch.Tensor) -> torch.Tensor:
    """Axis-angle vectors ``(..., 3)`` (radians, angle in ``[0, pi]``) of rotation matrices ``R`` ``(..., 3, 3)``:
    the inverse of :func:`so3_exp` (through scipy's quaternion conversion, float64; not differentiable).
    """
    from scipy.spatial.transform import Rotation

    flat = R.detach().cpu().double().reshape(-1, 3, 3).numpy()
    out = Rotation.from_matrix(flat).as_rotvec() if len(flat) else np.zeros((0, 3))
    return torch.from_numpy(out).to(dtype=R.dtype, device=R.device).reshape(*R.shape[:-2], 3)


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


def hartley_translate_jacobian(h: torch.Tensor, half_freqs: torch.Tensor) -> torch.Tensor:
    """Derivatives ``(B, 2M + 1, 2)`` of :func:`hartley_translate` with respect to the shift ``(tx, ty)``, taken at
    the already translated images ``h`` ``(B, 2M + 1)`` (``[half, mates, DC]`` order; ``half_freqs`` ``(M, 2)``
    in cycles/pixel).

    With ``F(k) = a + i b`` the translated spectrum, ``dF/dt_j = -2 pi i k_j F``: ``d H(k) / dt_j = 2 pi k_j (a + b)``
    and ``d H(-k) / dt_j = 2 pi k_j (b - a)``; the DC term does not move.
    """
    m = half_freqs.shape[0]
    hk, hm = h[:, :m], h[:, m : 2 * m]
    a, b = (hk + hm) / 2, (hm - hk) / 2
    k = 2.0 * math.pi * half_freqs.to(h.dtype)  # (M, 2)
    d_half = (a + b)[:, :, None] * k[None]
    d_mate = (b - a)[:, :, None] * k[None]
    dc = torch.zeros(h.shape[0], h.shape[1] - 2 * m, 2, dtype=h.dtype, device=h.device)
    return torch.cat([d_half, d_mate, dc], dim=1)


def best_shift_on_grid(y: torch.Tensor, target: torch.Tensor, half_freqs: torch.Tensor, max_shift_px: float,
                       step_px: float) -> torch.Tensor:
    """The shift ``(B, 2)`` (pixels) on a square grid of spacing ``step_px`` within the disc ``|t| <= max_shift_px``
    that brings each image ``y`` ``(B, 2M + 1)`` closest to ``target`` (same layout, ``[half, mates, DC]``):
    translations preserve ``|y|``, so the best shift maximises ``<T_t y, target>``. One translation per grid point,
    evaluated for all images at once (no model evaluation).
    """
    n = int(math.floor(max_shift_px / step_px))
    g = torch.arange(-n, n + 1, dtype=y.dtype, device=y.device) * step_px
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), dim=-1).reshape(-1, 2)
    grid = grid[grid.norm(dim=1) <= max_shift_px + 1e-9]  # (K, 2), includes 0
    m = half_freqs.shape[0]
    hk, hm = y[:, :m], y[:, m : 2 * m]
    a, b = (hk + hm) / 2, (hm - hk) / 2  # (B, M)
    ta, tb = target[:, :m], target[:, m : 2 * m]
    ca, cb = (ta + tb) / 2, (tb - ta) / 2  # target's Re and Im (at k): H(k) = a - b, H(-k) = a + b
    phase = 2.0 * math.pi * (grid @ half_freqs.to(y.dtype).T)  # (K, M)
    c, s = torch.cos(phase), torch.sin(phase)
    # translated: a' = a c + b s, b' = b c - a s; <H', T> over both halves = 2 (a' ca + b' cb)
    score = (a * ca + b * cb) @ c.T + (b * ca - a * cb) @ s.T  # (B, K)
    return grid[score.argmax(dim=1)]


def _regularised_step(H: torch.Tensor, g: torch.Tensor, sigma2: torch.Tensor, damping: float,
                      prior_angle: float | None, prior_shift_px: float | None, total: torch.Tensor | None,
                      anchor_angle: float, anchor_shift_px: float) -> torch.Tensor:
    """The step ``-(H + damping diag(H) + sigma^2 P) ^-1 (g + sigma^2 P_a total)`` ``(B, K)`` of a Gauss-Newton
    system ``H`` ``(B, K, K)``, ``g`` ``(B, K)`` (3 rotation then ``K - 3`` shift parameters) with the step prior
    ``P = diag(1/prior^2)`` and the anchor prior ``P_a = diag(1/anchor^2)`` on the total correction ``total``
    (``None``: no anchor); ``sigma2`` ``(B,)`` is each row's residual variance per pixel.
    """
    K = H.shape[-1]
    diag = torch.diagonal(H, dim1=1, dim2=2)
    floor = 1e-12 * diag.mean(dim=1, keepdim=True).clamp_min(1e-30)
    Hd = H + torch.diag_embed(damping * diag + floor)
    inv = torch.zeros(K, dtype=torch.float64, device=H.device)
    if prior_angle is not None:
        inv[:3] = 1.0 / float(prior_angle) ** 2
    if prior_shift_px is not None:
        inv[3:] = 1.0 / float(prior_shift_px) ** 2
    if total is not None:
        inv_a = torch.tensor([1.0 / anchor_angle**2] * 3 + [1.0 / anchor_shift_px**2] * (K - 3),
                             dtype=torch.float64, device=H.device)
        inv = inv + inv_a
        g = g + sigma2[:, None] * inv_a[None] * total
    Hd = Hd + torch.diag_embed(sigma2[:, None] * inv[None])
    return -torch.linalg.solve(Hd, g[..., None])[..., 0]


@dataclasses.dataclass(frozen=True)
class SlicePredictor:
    """A model's prediction of a batch's images at the compared pixels, for :func:`gauss_newton_pose_step`.

    ``predict(rotations (B, 3, 3)) -> (B, 2 M' + 1)``: the CTF-modulated central slices at ``rotations`` at the
    positions ``[half, mates, DC]``. ``along_normal(rotations, delta) -> (B, 2 M' + 1)`` (optional): the same
    with every half-plane point moved by ``delta`` (cycles/pixel) along its slice's normal (the mates then sit at
    ``-delta``: a mate is the value at the negated point). Turning a slice about an in-plane axis moves each of its
    points along the normal, so one such evaluation gives two of the three rotation derivatives.
    """

    predict: object
    along_normal: object | None = None

    def __call__(self, rotations: torch.Tensor) -> torch.Tensor:
        """The prediction at ``rotations``."""
        return self.predict(rotations)  # type: ignore[operator]


def _rotation_jacobian(predict, rotations: torch.Tensor, p0: torch.Tensor, half_freqs: torch.Tensor,
                       eps: float) -> torch.Tensor:
    """``-d predict / d d_j`` ``(..., 2 M' + 1, 3)`` (float64) at ``d = 0`` for rotations ``exp([d]x) R``
    (``rotations`` ``(..., 3, 3)``, ``p0`` ``(..., 2 M' + 1)`` the prediction at them; ``d`` in each image's frame),
    by forward differences of step ``eps`` (radians).

    With ``predict.along_normal`` (:class:`SlicePredictor`) two evaluations: ``exp([d]x) R`` samples the map at the
    image-frame point ``k - d x k``; for ``d`` along the image's x or y axis that is ``k`` moved along the normal
    ``e_z`` by ``-d_x k_y`` or ``+d_y k_x``, so ``dP/dd_x = -k_y dP/dk_z`` and ``dP/dd_y = k_x dP/dk_z``, with
    ``dP/dk_z`` from one evaluation on the slice moved along its normal (of the largest displacement the rotation
    step gives, ``eps max|k|``); the in-plane column (``d`` along ``e_z``) is a rotation difference. Without it,
    three rotation differences.
    """
    J = torch.empty(*p0.shape, 3, dtype=torch.float64, device=p0.device)
    eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
    along_normal = getattr(predict, "along_normal", None)
    if along_normal is None:
        for j in range(3):
            turned = so3_exp(eps * eye[j]).expand(rotations.shape) @ rotations
            J[..., j] = -(predict(turned) - p0).double() / eps
        return J
    hf = half_freqs.to(device=p0.device, dtype=torch.float64)
    m = hf.shape[0]
    k = torch.cat([hf, -hf, hf.new_zeros(1, 2)])  # (2 M' + 1, 2) the image-plane point of each compared value
    sign = torch.cat([hf.new_ones(m), -hf.new_ones(m), hf.new_ones(1)])  # a mate's point moves by -delta
    delta = eps * float(hf.norm(dim=1).max()) if m else eps
    dz = sign * (along_normal(rotations, delta) - p0).double() / delta  # (..., 2 M' + 1): dP/dk_z
    J[..., 0] = k[:, 1] * dz  # -dP/dd_x
    J[..., 1] = -k[:, 0] * dz  # -dP/dd_y
    turned = so3_exp(eps * eye[2]).expand(rotations.shape) @ rotations
    J[..., 2] = -(predict(turned) - p0).double() / eps
    return J


def gauss_newton_pose_step(predict, rotations: torch.Tensor, y: torch.Tensor, half_freqs: torch.Tensor,
                           eps: float = 0.01, damping: float = 1e-3, max_angle: float = 0.1,
                           max_shift_px: float = 2.0, prior_angle: float | None = None,
                           prior_shift_px: float | None = None, verify: bool = False,
                           shift_grid: tuple[float, float] | None = None, anchor: torch.Tensor | None = None,
                           anchor_angle: float = math.radians(10.0), anchor_shift_px: float = 3.0,
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One damped Gauss-Newton (Levenberg-Marquardt) step of every image's pose, from its current pose.

    Each image ``y_i`` (Hartley values, already translated by its current shift) is compared with the model's
    prediction ``P(R)`` at its current rotation ``R_i``; the residual ``r = y - P(R)`` is linearised in a rotation
    correction ``d`` (image frame, ``R -> exp([d]x) R``) and a shift correction ``t`` (pixels, ``y -> T_t y``):
    ``r(d, t) ~ r + J [d; t]``. The rotation columns of ``J`` are forward differences of the prediction (three more
    evaluations of ``predict``, at ``exp([eps e_j]x) R``, or two for a :class:`SlicePredictor` with
    ``along_normal``: :func:`_rotation_jacobian`), the shift columns are exact
    (:func:`hartley_translate_jacobian`). The step solves ``(J^T J + damping diag(J^T J)) [d; t] = -J^T r`` per image
    (a 5 x 5 system) and is shortened to at most ``max_angle`` radians and ``max_shift_px`` pixels.

    With ``prior_angle`` / ``prior_shift_px`` the step is the posterior mode under a Gaussian prior of that standard
    deviation on the step itself and white noise of the image's own residual variance ``sigma^2 = |r|^2 / P``:
    ``(J^T J + sigma^2 diag(1/prior^2)) [d; t] = -J^T r``. Where one image says little about its pose (a noisy
    image, a blurred map) the step shrinks towards zero instead of following the noise; where it says much, the
    step is the full Gauss-Newton step. With ``verify`` the prediction is evaluated once more at the new pose and
    steps that do not lower the image's squared residual are dropped (``d = t = 0``). With ``shift_grid`` ``(max,
    step)`` (pixels) the shift is first searched on a grid (:func:`best_shift_on_grid`; shift errors of a pixel or
    more are far outside the range where the linearisation holds at mid frequencies) and the Gauss-Newton step
    starts from the best grid shift. With ``anchor`` ``(B, 5)`` (each image's total correction so far: rotation
    vector, radians, and shift, pixels) a second Gaussian prior, of standard deviations ``anchor_angle`` and
    ``anchor_shift_px``, holds the total correction near the consensus pose: ``sigma^2 (anchor + step) / std^2`` is
    added to the gradient and ``sigma^2 / std^2`` to the diagonal (the rotation vectors added to first order), so
    that a particle whose images say little drifts no further than the consensus error it is expected to have.

    Parameters
    ----------
    predict : callable ``rotations (B, 3, 3) -> (B, 2M + 1)`` predicted values of the compared pixels (the model's
        CTF-modulated slice for each image of the batch).
    rotations : ``(B, 3, 3)`` current rotations (RELION ``A``).
    y : ``(B, 2M + 1)`` images at the compared pixels (``[half, mates, DC]`` order), translated by the current shift.
    half_freqs : ``(M, 2)`` cycles/pixel of the compared half-plane pixels.

    Returns
    -------
    ``(d (B, 3) radians, t (B, 2) pixels, loss (B,))``: the corrections to compose with the current pose and each
    image's squared residual before the step.
    """
    B = rotations.shape[0]
    p0 = predict(rotations)
    y_start = y
    t0 = torch.zeros(B, 2, dtype=y.dtype, device=y.device)
    if shift_grid is not None:
        t0 = best_shift_on_grid(y, p0, half_freqs, *shift_grid)
        y = hartley_translate(y, half_freqs, t0)
    r = (y - p0).double()
    J = torch.empty(B, r.shape[1], 5, dtype=torch.float64, device=r.device)
    J[..., :3] = _rotation_jacobian(predict, rotations, p0, half_freqs, eps)
    J[..., 3:] = hartley_translate_jacobian(y, half_freqs).double()
    H = J.transpose(1, 2) @ J  # (B, 5, 5)
    g = (J.transpose(1, 2) @ r[..., None])[..., 0]  # (B, 5)
    loss0 = (r * r).sum(dim=1)
    sigma2 = loss0 / r.shape[1]  # (B,) the image's residual variance per pixel
    total = None
    if anchor is not None:
        total = anchor.to(device=r.device, dtype=torch.float64).clone()
        total[:, 3:] = total[:, 3:] + t0.double()  # the grid shift is already taken
    step = _regularised_step(H, g, sigma2, damping, prior_angle, prior_shift_px, total, anchor_angle,
                             anchor_shift_px)
    d, t = step[:, :3], step[:, 3:]
    d = d * (max_angle / d.norm(dim=1, keepdim=True).clamp_min(max_angle))
    t = t * (max_shift_px / t.norm(dim=1, keepdim=True).clamp_min(max_shift_px))
    d, t = d.to(rotations.dtype), t.to(y.dtype) + t0
    if verify:
        before = ((y_start - p0).double() ** 2).sum(dim=1)
        moved = hartley_translate(y_start, half_freqs, t) - predict(so3_exp(d) @ rotations)
        worse = (moved.double() ** 2).sum(dim=1) >= before
        d, t = d.masked_fill(worse[:, None], 0.0), t.masked_fill(worse[:, None], 0.0)
    return d, t, loss0


class PoseTable:
    """Rotation (``(N, 3)``, radians) and shift (``(N, 2)``, pixels) corrections of ``N`` particles with a
    per-row Adam optimiser; everything on the CPU, memory ``O(N)`` (64 bytes a particle).

    Parameters
    ----------
    n : number of particles (data positions ``0 .. n-1``).
    lr : Adam step size of the rotation corrections (radians).
    shift_lr : Adam step size of the shift corrections (pixels); default ``lr * 10``.
    betas, eps : Adam's.
    shift_dims : shift components per particle (2: an in-plane shift; 3: the 3-D shift of a tilt-series particle,
        :class:`TiltPoseRefiner`).
    """

    def __init__(self, n: int, lr: float = 3e-3, shift_lr: float | None = None, betas=(0.9, 0.999),
                 eps: float = 1e-8, shift_dims: int = 2):
        self.n = int(n)
        self.shift_dims = int(shift_dims)
        self.lr = float(lr)
        self.shift_lr = float(shift_lr) if shift_lr is not None else 10.0 * self.lr
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        width = 3 + self.shift_dims
        self.values = torch.zeros(self.n, width, dtype=torch.float32)  # [w (3), shift (2 or 3)]
        self.exp_avg = torch.zeros(self.n, width, dtype=torch.float32)
        self.exp_avg_sq = torch.zeros(self.n, width, dtype=torch.float32)
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
        g = torch.zeros(idx.numel(), 3 + self.shift_dims, dtype=torch.float32)
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
        lr = torch.tensor([self.lr] * 3 + [self.shift_lr] * self.shift_dims, dtype=torch.float32)
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
                 start_epoch: int = 1, method: str = "sgd", search_radius: float = 0.5,
                 max_step_deg: float = 5.0, max_shift_px: float = 1.5):
        if method not in POSE_METHODS:
            raise ValueError(f"pose method {method!r} (one of {', '.join(POSE_METHODS)})")
        self.table = PoseTable(n, lr=lr, shift_lr=shift_lr)
        self.half_freqs = torch.as_tensor(half_freqs, dtype=torch.float32).cpu()
        self.start_epoch = int(start_epoch)
        self.method = method
        self.search_radius = float(search_radius)
        self.max_step = math.radians(float(max_step_deg))
        self.max_shift_px = float(max_shift_px)
        self.prior_angle = math.radians(2.0)  # local: prior std of one visit's rotation step
        self.prior_shift_px = 0.5  # and of its Gauss-Newton shift step (after the grid search)
        self._radius_cycles = self.half_freqs.norm(dim=1)  # (M,) cycles/pixel
        nonzero = self.half_freqs.abs()[self.half_freqs.abs() > 0]
        D = int(round(1.0 / float(nonzero.min()))) if nonzero.numel() else 2  # the box (frequency step 1/D)
        shift_max = max(2.0, 0.05 * D)
        self.shift_grid = (shift_max, max(0.5, shift_max / 6.0))  # local: (range, spacing) of the shift search
        self._epoch = self.start_epoch
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._freqs_on: dict[torch.device, torch.Tensor] = {}
        self._local_on: dict[tuple[torch.device, float], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def radius(self, epoch: int) -> float:
        """Compared pixels of the local method in ``epoch`` (a fraction of Nyquist): from 0.25 in the first refining
        epoch up by 0.125 an epoch to ``search_radius`` (coarse to fine: a map learnt from poses a few degrees
        off is only right at low frequency, and the linearisation only holds there while the errors are large).
        """
        grown = 0.25 + 0.125 * max(0, int(epoch) - self.start_epoch)
        return min(self.search_radius, grown)

    def active(self, epoch: int) -> bool:
        """Whether the steps of ``epoch`` (1-based) refine the poses; the engine asks before every training step,
        which also tells the refiner the epoch in progress (the local method's radius follows it).
        """
        self._epoch = int(epoch)
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

    def prepare(self, batch, model=None, gather_rows=None):
        """The batch with its particles' current corrections applied.

        Method ``sgd``: differentiable in the corrections (after ``backward``, :meth:`step` takes one Adam step).
        Method ``local``: first one Gauss-Newton step of every particle of the batch against ``model``'s current
        prediction (:meth:`local_update`), then the batch with the new corrections (no gradient).
        """
        if self.method == "local":
            if model is None:
                raise ValueError("PoseRefiner(method='local').prepare needs the model")
            self.local_update(model, batch, gather_rows)
            self._pending = None
            return self.corrected(batch)
        index = _get(batch, "index")
        device = _get(batch, "y").device
        w, s = self.table.take(index, device)
        self._pending = (index.detach().to(device).long(), w, s)
        return self._apply(batch, w, s)

    def _local_pixels(self, device, radius: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(half (M',), positions (2 M' + 1,), half_freqs (M', 2))`` of the pixels within ``radius`` x Nyquist."""
        key = (torch.device(device), float(radius))
        if key not in self._local_on:
            m = self.half_freqs.shape[0]
            half = torch.nonzero(self._radius_cycles < 0.5 * radius).squeeze(1)
            positions = torch.cat([half, half + m, torch.tensor([2 * m])])
            self._local_on[key] = (half.to(key[0]), positions.to(key[0]), self.half_freqs[half].to(key[0]))
        return self._local_on[key]

    @torch.no_grad()
    def local_update(self, model, batch, gather_rows=None) -> None:
        """One Gauss-Newton step (:func:`gauss_newton_pose_step`) of the poses of the batch's particles against
        ``model.pose_predictor``, on the pixels within ``search_radius`` x Nyquist; the table rows are replaced by
        the composed corrections (gathered over the processes with ``gather_rows``, so every process's table stays
        the same).
        """
        index = _get(batch, "index")
        y_full = _get(batch, "y")
        device = y_full.device
        w0, s0 = self.table.take(index, device)
        w0, s0 = w0.detach(), s0.detach()
        corrected = self._apply(batch, w0, s0)
        rot = _get(corrected, "rot").float()
        half, positions, freqs = self._local_pixels(device, self.radius(self._epoch))
        predict = model.pose_predictor(corrected, half)
        d, t, _ = gauss_newton_pose_step(predict, rot, _get(corrected, "y")[:, positions].float(), freqs,
                                         max_angle=self.max_step, max_shift_px=self.max_shift_px,
                                         prior_angle=self.prior_angle, prior_shift_px=self.prior_shift_px,
                                         verify=False, shift_grid=self.shift_grid,
                                         anchor=torch.cat([w0, s0], dim=1).float())
        self._commit_local_step(index, w0, s0, d, t, gather_rows)

    def _commit_local_step(self, index, w0: torch.Tensor, s0: torch.Tensor, d: torch.Tensor, t: torch.Tensor,
                           gather_rows=None) -> None:
        """Compose a local step ``(d, t)`` with the rows' corrections ``(w0, s0)`` (``exp([d]x) exp([w0]x)``,
        ``s0 + t``) and write them into the table (gathered over the processes with ``gather_rows``).
        """
        w_new = so3_log(so3_exp(d.double()) @ so3_exp(w0.double())).float()
        rows = torch.cat([w_new, (s0 + t).float()], dim=1)
        idx = index.detach().to(w0.device).long()
        if gather_rows is not None:
            idx, rows = gather_rows(idx, rows)
        idx = idx.cpu()
        self.table.values[idx] = rows.cpu()
        self.table.steps[idx] += 1

    def observe(self, terms: dict) -> None:
        """The loss terms of the training step just taken (the engine reports them; a no-op here)."""

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
        return {"start_epoch": self.start_epoch, "method": self.method, "table": self.table.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.table.load_state_dict(state["table"])

    def save_epoch_poses(self, path, data, refined_positions) -> None:
        """Write the learned poses of the particles of ``data`` (the engine's data provider; its consensus poses
        ``data.particles.poses``) to ``path`` (``RUN/poses/epoch_NNN.npz``); :meth:`save`.
        """
        poses = data.particles.poses  # float64, as read
        self.save(path, poses.rotations, poses.shifts_px(data.pixel_size_angstrom), data.pixel_size_angstrom,
                  refined_positions)

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
        """From the arrays of a learned-pose file (:func:`cryoscape.models.poses.load_learned_poses`); a tilt-series
        provider (``data.tilts``) gets a :class:`TiltPoseRefiner`.
        """
        refiner: PoseRefiner
        if hasattr(data, "tilts"):
            refiner = TiltPoseRefiner.for_data(data)
        else:
            refiner = PoseRefiner(len(data), data.pixels.half_freqs(), lr=0.0)
        rotvec, shift = np.asarray(arrays["rotvec"]), np.asarray(arrays["shift_px"])
        if len(rotvec) != len(data) or shift.shape[1:] != (refiner.table.shift_dims,):
            raise ValueError(f"learned poses of {len(rotvec)} particles x {shift.shape[1:]} shifts for {len(data)}")
        refiner.table.values[:, :3] = torch.from_numpy(rotvec.astype(np.float32))
        refiner.table.values[:, 3:] = torch.from_numpy(shift.astype(np.float32))
        return cls(data, refiner)


# -- tilt series (the tomodrgn family) ----------------------------------------------------------------------
# One rigid correction per particle, shared by all its tilt images. With the per-image rotations ``A_t`` (RELION
# ``A``, volume -> image frame of tilt ``t``) and the particle's reference tilt ``ref`` (:func:`reference_tilts`:
# the tilt nearest zero, ties broken by the lowest exposure), the correction ``(w, d)`` lives in the reference
# tilt's image frame: ``A_ref' = exp([w]x) A_ref`` and, through the fixed tilt geometry ``R_t = A_t A_ref^T``,
# ``A_t' = R_t A_ref' = exp([R_t w]x) A_t``; the 3-D shift ``d`` (pixels, reference frame) moves the origin of tilt
# ``t`` by the first two components of ``R_t d``.


def reference_tilts(offsets, tilt_deg, exposure) -> np.ndarray:
    """The reference tilt of every particle ``(N,)`` (its image's position within the particle, ``0 ..
    count - 1``): the image with the smallest ``|stage tilt|``, ties broken by the lowest exposure, then the first.

    ``offsets`` ``(N + 1,)``: the images of particle ``p`` are ``offsets[p]:offsets[p + 1]``; ``tilt_deg``,
    ``exposure`` ``(M,)`` per image.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    counts = np.diff(offsets)
    particle = np.repeat(np.arange(len(counts)), counts)
    tilt = np.abs(np.asarray(tilt_deg, dtype=np.float64))
    exposure = np.asarray(exposure, dtype=np.float64)
    order = np.lexsort((np.arange(len(tilt)), exposure, tilt, particle))  # last key sorts first
    first = order[offsets[:-1][counts > 0]]  # the first image of each particle in that order
    ref = np.zeros(len(counts), dtype=np.int64)
    ref[counts > 0] = first - offsets[:-1][counts > 0]
    return ref


def tilt_compose(rotations: torch.Tensor, ref: torch.Tensor, w: torch.Tensor, d: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every tilt's corrected rotation and origin shift of per-particle corrections (differentiable in ``w``, ``d``).

    Parameters
    ----------
    rotations : ``(B, T, 3, 3)`` per-tilt rotations ``A_t`` (RELION ``A``).
    ref : ``(B,)`` the reference tilt of each particle (a position ``0 .. T-1``).
    w : ``(B, 3)`` rotation corrections (axis-angle, radians) in the reference tilt's image frame.
    d : ``(B, 3)`` shift corrections (pixels) in the reference tilt's image frame.

    Returns
    -------
    ``(A' (B, T, 3, 3), s (B, T, 2))``: ``A_t' = exp([R_t w]x) A_t`` and ``s_t = (R_t d)[:2]`` (pixels, added to
    the tilt's origin) with ``R_t = A_t A_ref^T``.
    """
    B = rotations.shape[0]
    ref = ref.to(rotations.device).long()
    A_ref = rotations[torch.arange(B, device=rotations.device), ref]  # (B, 3, 3)
    R = rotations @ A_ref.transpose(-1, -2)[:, None]  # (B, T, 3, 3)
    w_t = (R @ w.to(R.dtype)[:, None, :, None])[..., 0]  # (B, T, 3)
    d_t = (R @ d.to(R.dtype)[:, None, :, None])[..., 0]
    return so3_exp(w_t) @ rotations, d_t[..., :2]


def gauss_newton_tilt_step(predict, rotations: torch.Tensor, ref: torch.Tensor, y: torch.Tensor,
                           weights: torch.Tensor, half_freqs: torch.Tensor, eps: float = 0.01,
                           damping: float = 1e-3, max_angle: float = 0.1, max_shift_px: float = 2.0,
                           prior_angle: float | None = None, prior_shift_px: float | None = None,
                           verify: bool = False, anchor: torch.Tensor | None = None,
                           anchor_angle: float = math.radians(10.0), anchor_shift_px: float = 3.0,
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One damped Gauss-Newton step of every particle's rigid correction from the residuals of all its tilts.

    The tilt-series form of :func:`gauss_newton_pose_step`: the weighted residuals ``r_t = y_t - P(A_t)`` of the
    particle's tilts are linearised together in one rotation correction ``d`` and one 3-D shift correction ``t``
    (pixels) in the reference tilt's frame (:func:`tilt_compose`: tilt ``t`` turns by ``R_t d`` and moves by
    ``(R_t t)[:2]``, ``R_t = A_t A_ref^T``). The rotation columns of the Jacobian are forward differences of the
    prediction (three more evaluations of ``predict``, every tilt turned by ``exp([R_t eps e_j]x)``; two for a
    :class:`SlicePredictor` with ``along_normal``: the image-frame columns of :func:`_rotation_jacobian` times
    ``R_t``), the shift
    columns exact (:func:`hartley_translate_jacobian` times ``R_t[:2]``). One 6 x 6 system per particle
    ``(J^T W J + damping diag(J^T W J) + sigma^2 diag(1/prior^2)) [d; t] = -J^T W r`` with ``sigma^2`` the
    particle's weighted residual per scored pixel; the step is shortened to ``max_angle`` radians and
    ``max_shift_px`` pixels, and with ``verify`` dropped where it does not lower the weighted squared residual.
    With ``anchor`` ``(B, 6)`` (each particle's total correction so far, ``[w, d]``) the second Gaussian prior of
    :func:`gauss_newton_pose_step` (standard deviations ``anchor_angle``, ``anchor_shift_px``) holds the total
    correction near the consensus pose.

    Parameters
    ----------
    predict : callable ``rotations (B, T, 3, 3) -> (B, T, Q)`` the prediction of the compared pixels.
    rotations : ``(B, T, 3, 3)`` current per-tilt rotations; ``ref`` ``(B,)`` each particle's reference tilt.
    y : ``(B, T, Q)`` images at the compared pixels (``[half, mates, DC]`` order), translated by the current shift.
    weights : ``(B, T, Q)`` per-pixel weights of the squared residual (0: not compared, e.g. padding tilts).
    half_freqs : ``(M', 2)`` cycles/pixel of the compared half-plane pixels (``Q = 2 M' + 1``).

    Returns
    -------
    ``(d (B, 3) radians, t (B, 3) pixels, loss (B,))``: the corrections to compose with the current ones
    (``w <- log(exp([d]x) exp([w]x))``, ``shift <- shift + t``) and each particle's weighted squared residual before
    the step.
    """
    B, T, Q = y.shape
    p0 = predict(rotations)
    r = (y - p0).double()
    W = weights.double()
    idx = torch.arange(B, device=rotations.device)
    R = (rotations @ rotations[idx, ref.long()].transpose(-1, -2)[:, None]).double()  # (B, T, 3, 3)
    J = torch.empty(B, T, Q, 6, dtype=torch.float64, device=r.device)
    if getattr(predict, "along_normal", None) is not None:  # image-frame columns, turned into the reference frame
        J[..., :3] = _rotation_jacobian(predict, rotations, p0, half_freqs, eps) @ R
    else:
        for j in range(3):
            turned = so3_exp(eps * R[..., j]).to(rotations.dtype) @ rotations  # R_t (eps e_j) = eps R_t[:, j]
            J[..., j] = -(predict(turned) - p0).double() / eps
    Js = hartley_translate_jacobian(y.reshape(B * T, Q), half_freqs).double().reshape(B, T, Q, 2)
    J[..., 3:] = Js @ R[..., :2, :]
    JW = J * W[..., None]
    H = torch.einsum("btqi,btqj->bij", JW, J)
    g = torch.einsum("btqi,btq->bi", JW, r)
    loss0 = (W * r * r).sum(dim=(1, 2))
    sigma2 = loss0 / (W > 0).sum(dim=(1, 2)).clamp_min(1)  # (B,) residual variance per scored pixel
    total = None if anchor is None else anchor.to(device=r.device, dtype=torch.float64)
    step = _regularised_step(H, g, sigma2, damping, prior_angle, prior_shift_px, total, anchor_angle,
                             anchor_shift_px)
    d, t = step[:, :3], step[:, 3:]
    d = d * (max_angle / d.norm(dim=1, keepdim=True).clamp_min(max_angle))
    t = t * (max_shift_px / t.norm(dim=1, keepdim=True).clamp_min(max_shift_px))
    if verify:
        moved_rot, shifts = tilt_compose(rotations, ref, d, t)
        y_moved = hartley_translate(y.reshape(B * T, Q), half_freqs, shifts.reshape(B * T, 2).to(y.dtype))
        res = y_moved.reshape(B, T, Q).double() - predict(moved_rot.to(rotations.dtype)).double()
        worse = (W * res * res).sum(dim=(1, 2)) >= loss0
        d, t = d.masked_fill(worse[:, None], 0.0), t.masked_fill(worse[:, None], 0.0)
    return d.to(rotations.dtype), t.to(y.dtype), loss0


class TiltPoseRefiner(PoseRefiner):
    """Per-particle pose corrections of a tilt-series data provider (:class:`~cryoscape.data.tilt_data.
    TiltSeriesData`), learned during training: a rotation ``w`` (3, radians) and a 3-D shift ``d`` (3, pixels) per
    particle, in its reference tilt's image frame, applied to all its tilts through the tilt geometry
    (:func:`tilt_compose`). Method ``sgd`` (per-particle Adam on the loss gradient) and ``local`` (one damped
    Gauss-Newton step of the 6 parameters from the residuals of all the particle's tilts, :meth:`local_update`).

    Parameters
    ----------
    ref : ``(N,)`` every particle's reference tilt (:func:`reference_tilts`).
    Others as :class:`PoseRefiner`.
    """

    def __init__(self, n: int, half_freqs: torch.Tensor, ref, lr: float, shift_lr: float | None = None,
                 start_epoch: int = 1, method: str = "sgd", search_radius: float = 0.5,
                 max_step_deg: float = 5.0, max_shift_px: float = 1.5):
        super().__init__(n, half_freqs, lr, shift_lr=shift_lr, start_epoch=start_epoch, method=method,
                         search_radius=search_radius, max_step_deg=max_step_deg, max_shift_px=max_shift_px)
        self.table = PoseTable(n, lr=lr, shift_lr=shift_lr, shift_dims=3)
        self.ref = torch.as_tensor(np.asarray(ref), dtype=torch.long).cpu()
        if self.ref.shape != (self.table.n,):
            raise ValueError(f"reference tilts of {tuple(self.ref.shape)} for {self.table.n} particles")

    @classmethod
    def for_data(cls, data, lr: float = 0.0, **kwargs) -> TiltPoseRefiner:
        """The refiner of a :class:`~cryoscape.data.tilt_data.TiltSeriesData` (reference tilts from its metadata)."""
        tilts = data.tilts
        ref = reference_tilts(tilts.offsets, tilts.tilt_deg, tilts.exposure_e_per_angstrom2)
        return cls(len(data), data.pixels.half_freqs(), ref, lr=lr, **kwargs)

    def _apply(self, batch, w: torch.Tensor, s: torch.Tensor):
        rot, y = _get(batch, "rot"), _get(batch, "y")
        ref = self.ref[_get(batch, "index").detach().cpu().long()].to(rot.device)
        rot2, shifts = tilt_compose(rot, ref, w, s)
        B, T, P = y.shape
        moved = hartley_translate(y.reshape(B * T, P), self._freqs(y.device), shifts.reshape(B * T, 2))
        return _replace(batch, rot=rot2.to(rot.dtype), y=moved.reshape(B, T, P).to(y.dtype))

    @torch.no_grad()
    def local_update(self, model, batch, gather_rows=None) -> None:
        """One Gauss-Newton step (:func:`gauss_newton_tilt_step`) of the corrections of the batch's particles from
        all their tilts, against ``model.tilt_pose_predictor`` on the pixels within the current radius (as
        :meth:`PoseRefiner.local_update`, without the shift grid search); the table rows are replaced by the
        composed corrections (gathered over the processes with ``gather_rows``).
        """
        index = _get(batch, "index")
        device = _get(batch, "y").device
        w0, s0 = self.table.take(index, device)
        w0, s0 = w0.detach(), s0.detach()
        corrected = self._apply(batch, w0, s0)
        half, positions, freqs = self._local_pixels(device, self.radius(self._epoch))
        predict, weights = model.tilt_pose_predictor(corrected, half)
        ref = self.ref[index.detach().cpu().long()].to(device)
        d, t, _ = gauss_newton_tilt_step(predict, _get(corrected, "rot").float(), ref,
                                         _get(corrected, "y")[..., positions].float(), weights, freqs,
                                         max_angle=self.max_step, max_shift_px=self.max_shift_px,
                                         prior_angle=self.prior_angle, prior_shift_px=self.prior_shift_px,
                                         verify=True, anchor=torch.cat([w0, s0], dim=1))
        self._commit_local_step(index, w0, s0, d, t, gather_rows)

    def learned(self, rotations: np.ndarray, shifts_px: np.ndarray, offsets) -> tuple[np.ndarray, np.ndarray]:
        """The learned per-image ``(rotations (M, 3, 3), origins in pixels (M, 2))`` (float64) of the consensus
        per-image ``rotations`` and origins ``shifts_px`` of particles whose images are ``offsets[p]:offsets[p+1]``.
        """
        offsets = np.asarray(offsets, dtype=np.int64)
        counts = np.diff(offsets)
        rotations = np.asarray(rotations, np.float64)
        A = rotations.copy()
        origin = np.asarray(shifts_px, np.float64).copy()
        values = self.table.values.double()
        for T in np.unique(counts[counts > 0]):  # particles of equal tilt count together
            p = np.flatnonzero(counts == T)
            rows = offsets[p][:, None] + np.arange(T)[None]  # (b, T)
            rot2, s = tilt_compose(torch.from_numpy(rotations[rows]), self.ref[p], values[p, :3], values[p, 3:])
            A[rows] = rot2.numpy()
            origin[rows] += s.numpy()
        return A, origin

    def save_epoch_poses(self, path, data, refined_positions) -> None:
        """Write ``RUN/poses/epoch_NNN.npz`` of a tilt-series run: per image (rows of the particles' tilts, in data
        order) the learned ``rotations`` ``(M, 3, 3)`` and ``shifts_angstrom`` ``(M, 2)``; per particle ``rotvec``
        ``(N, 3)`` (radians), ``shift_px`` ``(N, 3)`` (pixels, the reference tilt's frame), ``refined`` and
        ``reference_tilt`` ``(N,)``.
        """
        from cryoscape.utils.atomic import atomic_path

        tilts = data.tilts
        apix = float(data.pixel_size_angstrom)
        A, origin_px = self.learned(tilts.rotations, np.asarray(tilts.shifts_angstrom) / apix, tilts.offsets)
        refined = np.zeros(self.table.n, dtype=bool)
        refined[np.asarray(refined_positions, dtype=np.int64)] = True
        with atomic_path(path) as tmp:
            np.savez(tmp, rotations=A, shifts_angstrom=origin_px * apix, rotvec=self.table.rotvec.numpy(),
                     shift_px=self.table.shift_px.numpy(), refined=refined, reference_tilt=self.ref.numpy())
