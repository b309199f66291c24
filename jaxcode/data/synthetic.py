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


@dataclasses.dataclass(frozen=True)
class PlantedTranscoder:
  """Paired activations of L layers with a planted sparse transcoder as ground truth.

  Layer l has its own planted features (a PlantedDictionary of n_features rows, seed + l):
  codes c^l >= 0 and input directions E^l [F, d_in] (orthonormal rows when F <= d_in).  The
  input is  x^l = (c^l + offset 1[c^l > 0]) E^l  (+ a dense Gaussian part z^l of std
  `dense_std` per coordinate in the orthogonal complement of the feature directions, when
  F < d_in), and the target

      y^m = sum_{l in S(m)} c^l W^{l->m} [+ x^m A^m^T]

  with S(m) = {m} (a per-layer transcoder's world) or {0..m} when `cross_layer` (a CLT's:
  every feature writes to its own and all later layers), W^{l->m} [F, d_out] random rows
  normalised so each feature's concatenated decoder over its output layers has unit norm, and
  A^m [d_out, d_in] a random map of scale 1/sqrt(d_in) (the skip term).

  The offset makes each feature's output an affine, not linear, function of its input
  projection (c = ReLU(<x, e> - offset)), as a ReLU MLP's hidden units are: without it any
  linear map B could be traded between skip and decoders (decoder_i - B e_i with skip + B
  gives the same y); with it only one trade stays exact, a multiple of each feature's own
  decoder (skip + lam W_i e_i^T, the latent's code and decoder rescaled), which
  jaxcode.analysis.transcoder_eval discounts.  A transcoder recovers (E, W) with b_enc =
  -offset.  With `signed` each active
  feature enters the input with a random sign (x = s (c + offset) e, y = c W whatever s):
  the features' part of y is then uncorrelated with x, so a linear skip learns only A from
  the start instead of absorbing the features' linear trend (a transcoder then needs one
  latent per sign: 2F latents).  Batches are pure functions of (seed, step).
  """
  n_layers: int
  d_in: int
  d_out: int
  n_features: int
  l0: float = 3.0
  alpha: float = 0.3
  cross_layer: bool = False
  skip: bool = False
  offset: float = 0.25
  dense_std: float = 0.2
  signed: bool = False
  seed: int = 0

  def __post_init__(self):
    if self.n_layers <= 0 or self.d_out <= 0:
      raise ConfigError(f"synthetic n_layers={self.n_layers}, d_out={self.d_out}: expected "
                        "positive sizes")

  def layer(self, l: int) -> PlantedDictionary:
    return PlantedDictionary(d_in=self.d_in, n_features=self.n_features, l0=self.l0,
                             alpha=self.alpha, seed=self.seed + l)

  @property
  def encoders(self) -> np.ndarray:
    """[L, F, d_in] unit rows: the input direction of every planted feature; orthonormal
    when n_features <= d_in (then the ideal encoder row of a feature is its direction)."""
    e = np.stack([self.layer(l).dictionary for l in range(self.n_layers)])
    if self.n_features <= self.d_in:
      e = np.stack([np.linalg.qr(m.T.astype(np.float64))[0].T for m in e]).astype(np.float32)
    return e

  def complement(self) -> np.ndarray:
    """[L, d_in, d_in] projectors onto the orthogonal complement of each layer's features
    (zero when the features span the space)."""
    if self.n_features >= self.d_in:
      return np.zeros((self.n_layers, self.d_in, self.d_in))
    e = self.encoders.astype(np.float64)
    return np.stack([np.eye(self.d_in) - m.T @ m for m in e])

  @property
  def decoders(self) -> list[np.ndarray]:
    """L arrays [F, n_out(l), d_out]: feature (l, i)'s writes to layers l.. (1 slot when not
    cross_layer); each feature's concatenation has unit norm."""
    out = []
    for l in range(self.n_layers):
      n_out = self.n_layers - l if self.cross_layer else 1
      rng = np.random.default_rng([self.seed, 0xDEC0, l])
      w = rng.standard_normal((self.n_features, n_out, self.d_out))
      out.append((w / np.linalg.norm(w.reshape(self.n_features, -1), axis=1)[:, None, None]
                  ).astype(np.float32))
    return out

  @property
  def skip_maps(self) -> np.ndarray | None:
    """[L, d_out, d_in] (y^m += x^m A^m^T), or None."""
    if not self.skip:
      return None
    rng = np.random.default_rng([self.seed, 0x5C1B])
    return (rng.standard_normal((self.n_layers, self.d_out, self.d_in))
            / np.sqrt(self.d_in)).astype(np.float32)

  def batch(self, seed: int, step: int, batch_size: int) -> dict:
    """{'x': [B, L, d_in], 'y': [B, L, d_out]} of batch `step` of stream `seed`."""
    L = self.n_layers
    c = np.stack([self.layer(l).codes(seed, step, batch_size) for l in range(L)], 1)
    rng = np.random.default_rng([self.seed, int(seed), int(step), 0x7015E])
    sign = rng.choice([-1.0, 1.0], size=c.shape) if self.signed else 1.0
    x = np.einsum("blf,lfd->bld", sign * (c + self.offset * (c > 0)), self.encoders)
    z = rng.standard_normal(x.shape) * self.dense_std
    x = x + np.einsum("bli,lij->blj", z, self.complement())
    y = np.zeros((batch_size, L, self.d_out))
    for l, w in enumerate(self.decoders):
      for j in range(w.shape[1]):
        y[:, l + j] += c[:, l] @ w[:, j]
    if self.skip:
      y += np.einsum("bld,lod->blo", x, self.skip_maps)
    return {"x": x.astype(np.float32), "y": y.astype(np.float32)}
