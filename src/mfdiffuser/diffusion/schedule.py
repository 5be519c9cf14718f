"""Noise schedules and DDPM / DDIM update rules, with no trainable parameters.

The forward process ``x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps`` (Ho et al. 2020) with the cosine
schedule of Nichol & Dhariwal (2021) or a linear one; reverse updates by DDPM ancestral sampling or by
DDIM (Song et al. 2021, eq. 12), whose ``eta`` interpolates between deterministic (0) and DDPM (1).
Step indices run ``k = 0..K-1`` (0 is the least noisy); ``k = -1`` means "clean" (``abar = 1``).
The schedule holds no device: a step index tensor on a GPU is looked up in a copy of the table on
that GPU (made once per device), so one schedule serves a model wherever it is moved.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

SCHEDULES: tuple[str, ...] = ("cosine", "linear")
"""Names accepted by :class:`NoiseSchedule`."""


class StepOutput(NamedTuple):
    """One reverse update: the less noisy sample and the clean sample predicted on the way."""

    prev_sample: torch.Tensor
    """``x_{k'}`` at the next (lower) noise level."""
    pred_x0: torch.Tensor
    """``x_0`` predicted from ``x_k`` and the model's noise estimate (after clipping)."""


class NoiseSchedule:
    """A discrete variance schedule of K steps: ``betas[K]``, ``alphas_cumprod[K]`` (float64 on CPU).

    Coefficients for step indices on another device are read from a copy of the table on that device
    (float32 on Apple's MPS, which has no float64), so the schedule never has to be moved.

    Args:
        n_steps: K, number of diffusion steps.
        kind: ``"cosine"`` (default) or ``"linear"``.
        beta_start: first beta of the linear schedule.
        beta_end: last beta of the linear schedule.
        max_beta: cap of the cosine schedule's betas (avoids a singular last step).
    """

    def __init__(
        self,
        n_steps: int,
        kind: str = "cosine",
        beta_start: float = 1e-4,
        beta_end: float = 0.2,
        max_beta: float = 0.999,
    ) -> None:
        if int(n_steps) != n_steps or n_steps < 1:
            raise ValueError(f"noise schedule: n_steps must be a positive integer, got {n_steps!r}")
        if kind not in SCHEDULES:
            raise ValueError(f"noise schedule: unknown kind {kind!r}; choose from {', '.join(SCHEDULES)}")
        self.n_steps, self.kind = int(n_steps), kind
        K = self.n_steps
        if kind == "cosine":
            s = 0.008
            f = [math.cos((i / K + s) / (1 + s) * math.pi / 2) ** 2 for i in range(K + 1)]
            betas = torch.tensor([min(1 - f[i + 1] / f[i], max_beta) for i in range(K)], dtype=torch.float64)
        else:
            if not 0 < beta_start <= beta_end < 1:
                raise ValueError(
                    f"noise schedule: need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}"
                )
            betas = torch.linspace(beta_start, beta_end, K, dtype=torch.float64)
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        # [K+1] table (abar_{-1} = 1 first) per device it has been indexed on
        self._abar_tables: dict[torch.device, torch.Tensor] = {
            torch.device("cpu"): torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])
        }

    def _abar_table(self, device: torch.device) -> torch.Tensor:
        """The ``[K+1]`` table ``[1, abar_0, ..., abar_{K-1}]`` on ``device`` (copied there once)."""
        table = self._abar_tables.get(device)
        if table is None:
            cpu = self._abar_tables[torch.device("cpu")]
            table = cpu.to(device, torch.float32 if device.type == "mps" else torch.float64)
            self._abar_tables[device] = table
        return table

    def abar(self, k: int | torch.Tensor) -> torch.Tensor:
        """``abar_k`` for step(s) ``k`` in ``-1..K-1`` (``abar_{-1} = 1``), float64, on ``k``'s device."""
        k = torch.as_tensor(k, dtype=torch.long)
        return self._abar_table(k.device)[k + 1]

    def _coef(self, k: int | torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ab = self.abar(k).to(device=like.device, dtype=like.dtype)
        ab = ab.reshape(ab.shape + (1,) * (like.dim() - ab.dim()))
        return ab.sqrt(), (1 - ab).sqrt()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
        """Forward process ``q(x_k | x_0)``; ``k`` scalar or ``[B]`` (broadcast over trailing axes)."""
        a, s = self._coef(k, x0)
        return a * x0 + s * noise

    def predict_x0(self, x_k: torch.Tensor, eps: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
        """Invert the forward process with a noise estimate: ``(x_k - sqrt(1-abar) eps) / sqrt(abar)``."""
        a, s = self._coef(k, x_k)
        return (x_k - s * eps) / a

    def timesteps(self, n_sample_steps: int) -> list[int]:
        """``n_sample_steps`` descending step indices from K-1 to 0, evenly spaced (DDIM's subsequence)."""
        if int(n_sample_steps) != n_sample_steps or not 1 <= n_sample_steps <= self.n_steps:
            raise ValueError(
                f"noise schedule: sampling steps must lie in [1, {self.n_steps}], got {n_sample_steps!r}"
            )
        n = int(n_sample_steps)
        if n == 1:
            return [self.n_steps - 1]
        return [round((self.n_steps - 1) * (n - 1 - i) / (n - 1)) for i in range(n)]

    def ddim_step(
        self,
        eps: torch.Tensor,
        k: int,
        k_prev: int,
        x_k: torch.Tensor,
        *,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        clip: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> StepOutput:
        """One DDIM update from step ``k`` to ``k_prev < k`` (``-1`` = clean).

        Args:
            eps: model noise estimate, shaped like ``x_k``.
            k: current step index.
            k_prev: target step index (any lower index: DDIM can skip steps).
            x_k: current sample.
            eta: 0 deterministic DDIM; 1 with consecutive steps equals DDPM ancestral sampling.
            generator: source of the fresh noise when ``eta > 0``.
            clip: optional ``(low, high)`` tensors broadcastable to ``x_k`` bounding the predicted x_0.
        """
        if not -1 <= k_prev < k:
            raise ValueError(f"ddim step: need -1 <= k_prev < k, got k={k}, k_prev={k_prev}")
        ab, ab_prev = float(self.abar(k)), float(self.abar(k_prev))
        x0 = (x_k - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        if clip is not None:
            x0 = torch.maximum(torch.minimum(x0, clip[1]), clip[0])
            eps = (x_k - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        direction = math.sqrt(max(1 - ab_prev - sigma**2, 0.0))
        prev = math.sqrt(ab_prev) * x0 + direction * eps
        if sigma > 0:
            z = torch.randn(x_k.shape, generator=generator, dtype=x_k.dtype, device=x_k.device)
            prev = prev + sigma * z
        return StepOutput(prev, x0)

    def implicit_step(
        self,
        eps: torch.Tensor,
        k: torch.Tensor,
        k_prev: torch.Tensor,
        x_k: torch.Tensor,
        *,
        clip: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Deterministic DDIM (``eta = 0``) from ``k`` to ``k_prev`` with a step index per row.

        The arithmetic of :meth:`ddim_step` at ``eta = 0``, with ``k`` and ``k_prev`` ``[B]`` tensors
        broadcast over the trailing axes of ``x_k`` (a batch whose rows sit at different noise
        levels, as in distillation); ``k_prev = -1`` lands on the clean sample.
        """
        a, s = self._coef(k, x_k)
        a_prev, s_prev = self._coef(k_prev, x_k)
        x0 = (x_k - s * eps) / a
        if clip is not None:
            x0 = torch.maximum(torch.minimum(x0, clip[1]), clip[0])
            eps = (x_k - a * x0) / s
        return a_prev * x0 + s_prev * eps

    def implicit_gain(self, k: torch.Tensor, k_prev: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """How far :meth:`implicit_step`'s landing moves per unit of the noise estimate (unclipped).

        ``x_prev = (a'/a) x_k + (s' - a' s / a) eps`` with ``a, s = sqrt(abar), sqrt(1 - abar)`` at ``k``
        and ``a', s'`` at ``k_prev``, so the gain is ``|a' s / a - s'|``, broadcast like :meth:`add_noise`;
        it is large from a step whose ``abar`` is near 0 (the top of a cosine schedule).
        """
        a, s = self._coef(k, like)
        a_prev, s_prev = self._coef(k_prev, like)
        return (a_prev * s / a - s_prev).abs()

    def ddpm_step(
        self,
        eps: torch.Tensor,
        k: int,
        x_k: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """One DDPM ancestral step ``k -> k-1`` with the posterior variance ``beta~_k`` (Ho et al., eq. 7)."""
        if not 0 <= k < self.n_steps:
            raise ValueError(f"ddpm step: k must lie in [0, {self.n_steps - 1}], got {k}")
        ab, ab_prev = float(self.abar(k)), float(self.abar(k - 1))
        beta = float(self.betas[k])
        x0 = (x_k - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        c0 = math.sqrt(ab_prev) * beta / (1 - ab)
        ck = math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)
        mean = c0 * x0 + ck * x_k
        if k == 0:
            return StepOutput(mean, x0)
        var = (1 - ab_prev) / (1 - ab) * beta
        z = torch.randn(x_k.shape, generator=generator, dtype=x_k.dtype, device=x_k.device)
        return StepOutput(mean + math.sqrt(var) * z, x0)
