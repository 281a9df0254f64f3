"""Gaussian noise from a cryptographically secure generator, drawn on the tensors' device.

Opacus's ``secure_mode`` draws DP noise from torchcsprng (AES in counter mode), which
does not exist for current torch. This is the equivalent: the random bits come from
the operating system's CSPRNG (``os.urandom``, what ``secrets`` uses; ChaCha20 in
Linux's kernel), one fresh read per draw, and are turned into Gaussians on the
device of the tensors they perturb (only the raw bits cross to it). Unlike Mersenne
Twister (torch's and numpy's generators), whose state an observer recovers from 624
outputs, these bits reveal nothing about the next ones, so the noise of a released
update cannot be predicted or subtracted.

Gaussians come in pairs by Box-Muller on the device: the radius from a 53-bit
uniform in float64, the angle from 32 bits in float32. Each noise value is, as in Opacus's secure mode,
the sum of 4 Gaussians of the requested deviation halved (same deviation), which
defeats the floating-point attacks on a single sample (Holohan et al. 2021,
arXiv:2107.10138, section 5.1; Haney et al. 2022).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

#: Gaussians summed per noise value (Opacus secure_mode's 2n with n = 2).
SUMMED = 4


class SecureGaussian:
    """Gaussian noise from the OS's CSPRNG on any device; holds no state (every draw
    reads fresh bits), so it pickles and copies without sharing a stream."""

    def uniforms(self, count: int, device: torch.device | str) -> torch.Tensor:
        """``count`` fresh uniforms in (0, 1), float64 on ``device``: 53 random bits each
        (the top bits of 8 bytes of ``os.urandom``) plus half a unit, so none is 0."""
        raw = np.frombuffer(os.urandom(8 * count), dtype="<u8")
        units = (raw >> np.uint64(11)).astype(np.float64)
        return (torch.from_numpy(units).to(device) + 0.5) * 2.0**-53

    def angles(self, count: int, device: torch.device | str) -> torch.Tensor:
        """``count`` fresh uniform angles in [0, 2 pi), float32 on ``device`` (32 bits each)."""
        raw = np.frombuffer(os.urandom(4 * count), dtype="<u4").astype(np.int64)
        return (torch.from_numpy(raw).to(device).to(torch.float32) * (2.0 * math.pi * 2.0**-32))

    def standard_normal(self, count: int, device: torch.device | str) -> torch.Tensor:
        """``count`` independent N(0, 1) samples, float32, on ``device`` (Box-Muller: the
        radius from a 53-bit uniform in float64, so the tails are exact to 8.6 sigma)."""
        pairs = -(-count // 2)
        radius = torch.sqrt(-2.0 * torch.log(self.uniforms(pairs, device))).to(torch.float32)
        angle = self.angles(pairs, device)
        return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])[:count]

    def noise(self, std: float, shape: torch.Size | tuple[int, ...], device: torch.device | str,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """N(0, std**2) noise of ``shape``: the sum of 4 Gaussians of deviation ``std``, halved."""
        count = math.prod(shape)
        if std == 0 or count == 0:
            return torch.zeros(shape, device=device, dtype=dtype)
        draws = self.standard_normal(SUMMED * count, device).view(SUMMED, count)
        return (draws.sum(0) * (std / math.sqrt(SUMMED))).to(dtype).view(shape)

    def noise_like(self, std: float, reference: torch.Tensor) -> torch.Tensor:
        return self.noise(std, reference.shape, reference.device, reference.dtype)

    def numpy_noise(self, std: float, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The same noise as a numpy array (the server's aggregates are numpy, on the CPU)."""
        return self.noise(std, shape, "cpu", torch.float32).numpy().astype(dtype)
