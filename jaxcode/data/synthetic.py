"""Planted sparse dictionaries: activations with a known ground truth for SAE tests.

x = sum_i c_i d_i with d_i the rows of a random unit-norm dictionary [n_features, d_in];
feature i is active with probability p_i proportional to (i + 1)^(-alpha) (a power law),
scaled so the expected number of active features per sample is `l0`; active magnitudes are
drawn from Uniform(mag_low, mag_high).  Every batch is a pure function of (seed, step).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxcode.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class PlantedDictionary:
  d_in: int
  n_features: int
  l0: float = 4.0            # expected active features per sample
  alpha: float = 0.5         # power-law exponent of the feature frequencies
  mag_low: float = 0.5
  mag_high: float = 1.5
  seed: int = 0

  def __post_init__(self):
    if self.d_in <= 0 or self.n_features <= 0:
      raise ConfigError(f"synthetic d_in={self.d_in}, n_features={self.n_features}: "
                        "expected positive sizes")
    if not 0 < self.l0 <= self.n_features:
      raise ConfigError(f"synthetic l0={self.l0}: expected 0 < l0 <= n_features")

  @property
  def dictionary(self) -> np.ndarray:
    """[n_features, d_in] unit-norm rows (deterministic in seed)."""
    rng = np.random.default_rng([self.seed, 0xD1C7])
    d = rng.standard_normal((self.n_features, self.d_in))
    return (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)

  @property
  def probabilities(self) -> np.ndarray:
    w = (np.arange(self.n_features) + 1.0) ** (-self.alpha)
    p = w * self.l0 / w.sum()
    # Cap at 1 and redistribute once so the expected L0 stays close to the request.
    for _ in range(10):
      over = p > 1
      if not over.any():
        break
      p[over] = 1.0
      rest = ~over
      p[rest] *= (self.l0 - over.sum()) / p[rest].sum()
    return np.clip(p, 0, 1)

  def codes(self, seed: int, step: int, batch_size: int) -> np.ndarray:
    """Sparse codes [batch, n_features] of batch `step` of stream `seed`."""
    rng = np.random.default_rng([self.seed, int(seed), int(step)])
    active = rng.random((batch_size, self.n_features)) < self.probabilities
    mags = rng.uniform(self.mag_low, self.mag_high, (batch_size, self.n_features))
    return (active * mags).astype(np.float32)

  def batch(self, seed: int, step: int, batch_size: int) -> np.ndarray:
    return self.codes(seed, step, batch_size) @ self.dictionary


def mean_max_cosine(true_FD: np.ndarray, learned_MD: np.ndarray) -> float:
  """Mean over true features of the best cosine similarity with any learned row."""
  t = np.asarray(true_FD, np.float64)
  l = np.asarray(learned_MD, np.float64)
  t = t / np.linalg.norm(t, axis=1, keepdims=True)
  l = l / np.maximum(np.linalg.norm(l, axis=1, keepdims=True), 1e-12)
  return float(np.mean(np.max(t @ l.T, axis=1)))
