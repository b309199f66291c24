"""A SynthSAEBench-style generator: many ground-truth features with a hierarchy, correlated
firing, power-law firing probabilities and magnitudes (notes/evals.md section 3.1).

The static shape of the generator is a `SynthSpec` (hashable); its random parts are a params
pytree made once from the spec's seed (`make_params`): the dictionary d [N, D] (unit rows,
optionally pushed apart by Adam on the off-diagonal Gram mass), the per-feature firing
probability of the copula, the low-rank correlation factor F [N, R], mean and std of the
magnitudes, and a bias b [D].  A batch is `sample(spec, params, key, B)`; `batch_key(seed,
step)` = fold_in(key(seed), step), so a resumed run draws the same batches bit for bit.

One sample:
1. z = F g + sqrt(1 - |F_i|^2) e_i with g ~ N(0, I_R), e ~ N(0, I_N) (a Gaussian copula with
   unit marginals); feature i fires when z_i > Phi^-1(1 - p_i).
2. a_i = ReLU(mu_i + sigma_i n_i) where it fires, else 0.
3. The hierarchy, level by level from the roots: a child whose parent is 0 is 0; among the
   active children of one parent (mutually exclusive) one uniform-random winner stays; with
   `scale_children` a child is multiplied by parent value / parent mean magnitude, ReLU again.
4. h = sum_i a_i d_i + b.

Features are numbered by rank of the configured probability q_r (r^-exponent, rescaled
linearly so q_1 = p_max and q_N = p_min); the hierarchy takes the first indices breadth-first:
roots 0..R-1, then their children (parent j's children contiguous), then grandchildren, ...;
the rest are free.  With `compensate`, a child's copula probability is
min(1, q_i / q_parent * (1 + sum_{siblings j != i} q_j / q_parent)): divided by the parent's
probability (it only counts while the parent fires) and raised by the expected number of
other active siblings it competes with (the newer of SAELens' two compensations).

Uniforms come from the counter-based hash of jaxcode.data.sparse_features, cheap enough for
[B, N] per step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import ndtri

from jaxcode.data.sparse_features import hash_uniform
from jaxcode.errors import ConfigError

SPEC_FIELDS = ("n_features", "d_hidden", "p_exponent", "p_max", "p_min", "n_roots", "branching",
               "depth", "mutually_exclusive", "compensate", "scale_children", "corr_rank",
               "corr_scale", "ortho_steps", "ortho_lr", "mag_max", "mag_min", "mag_std_mean",
               "mag_std_std", "bias_norm", "seed")


@dataclasses.dataclass(frozen=True)
class SynthSpec:
  n_features: int            # N ground-truth features
  d_hidden: int              # D hidden width
  p_exponent: float = 0.5    # q_r proportional to r^-exponent before rescaling
  p_max: float = 0.4         # firing probability of the most frequent feature
  p_min: float = 5e-4        # ... of the least frequent
  n_roots: int = 0           # hierarchy roots (0: no hierarchy)
  branching: int = 4         # children per parent
  depth: int = 3             # levels below the roots
  mutually_exclusive: bool = True   # at most one active child per parent
  compensate: bool = True    # raise child probabilities for the gating (module docstring)
  scale_children: bool = True       # child *= parent value / parent mean magnitude
  corr_rank: int = 0         # rank R of the correlation factor (0: independent firing)
  corr_scale: float = 0.1    # std of F's entries
  ortho_steps: int = 0       # Adam steps pushing the dictionary rows apart
  ortho_lr: float = 3e-4
  mag_max: float = 5.0       # mean magnitude of the most frequent feature (linear to mag_min)
  mag_min: float = 4.0
  mag_std_mean: float = 0.5  # per-feature std = |N(mag_std_mean, mag_std_std^2)|
  mag_std_std: float = 0.5
  bias_norm: float = 0.5     # norm of the bias b
  seed: int = 42             # seed of the dictionary and every fixed random part

  def __post_init__(self):
    for name in ("n_features", "d_hidden"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ConfigError(f"synth.{name}={v!r}: expected an integer >= 1")
    for name in ("n_roots", "corr_rank", "ortho_steps"):
      if int(getattr(self, name)) < 0:
        raise ConfigError(f"synth.{name}={getattr(self, name)!r}: expected an integer >= 0")
    if self.n_roots and (int(self.branching) < 1 or int(self.depth) < 0):
      raise ConfigError(f"synth.branching={self.branching}, depth={self.depth}: expected "
                        "branching >= 1 and depth >= 0")
    if not 0.0 < self.p_min <= self.p_max <= 1.0:
      raise ConfigError(f"synth.p_min={self.p_min}, p_max={self.p_max}: expected "
                        "0 < p_min <= p_max <= 1")
    if self.n_tree > self.n_features:
      raise ConfigError(f"synth: the hierarchy needs {self.n_tree} features (n_roots="
                        f"{self.n_roots}, branching={self.branching}, depth={self.depth}) but "
                        f"n_features={self.n_features}")
    if self.mag_min <= 0 or self.mag_max <= 0 or self.mag_std_std < 0 or self.corr_scale < 0:
      raise ConfigError(f"synth: mag_max={self.mag_max}, mag_min={self.mag_min} must be > 0 "
                        f"and mag_std_std={self.mag_std_std}, corr_scale={self.corr_scale} >= 0")

  @property
  def levels(self) -> tuple[tuple[int, int], ...]:
    """(first index, count) of each hierarchy level, roots first."""
    out, start = [], 0
    for l in range(self.depth + 1 if self.n_roots else 0):
      n = self.n_roots * self.branching ** l
      out.append((start, n))
      start += n
    return tuple(out)

  @property
  def n_tree(self) -> int:
    return sum(n for _, n in self.levels)

  @property
  def parent(self) -> np.ndarray:
    """[N] index of each feature's parent, -1 for roots and free features."""
    p = np.full(self.n_features, -1, np.int64)
    lv = self.levels
    for (s0, _), (s1, n1) in zip(lv[:-1], lv[1:]):
      p[s1:s1 + n1] = s0 + np.arange(n1) // self.branching
    return p


def spec_from_config(block) -> SynthSpec:
  """The SynthSpec of a config block holding SPEC_FIELDS (configs/synth_bench.py's synth)."""
  missing = [f for f in SPEC_FIELDS if f not in block]
  if missing:
    raise ConfigError(f"synth: the block has no field {missing[0]!r}")
  return SynthSpec(**{f: block[f] for f in SPEC_FIELDS})


def base_probabilities(spec: SynthSpec) -> np.ndarray:
  """q [N]: r^-exponent rescaled linearly to [p_min, p_max] (q_1 = p_max)."""
  w = np.arange(1, spec.n_features + 1, dtype=np.float64) ** -spec.p_exponent
  if spec.n_features == 1:
    return np.array([spec.p_max])
  t = (w - w[-1]) / (w[0] - w[-1])
  return spec.p_min + t * (spec.p_max - spec.p_min)


def copula_probabilities(spec: SynthSpec) -> np.ndarray:
  """p [N]: the probability each feature's copula draw fires with (compensated children)."""
  q = base_probabilities(spec)
  p = q.copy()
  if not spec.compensate:
    return p
  for (s0, n0), (s1, n1) in zip(spec.levels[:-1], spec.levels[1:]):
    c = q[s1:s1 + n1].reshape(n0, spec.branching) / q[s0:s0 + n0, None]
    others = c.sum(1, keepdims=True) - c if spec.mutually_exclusive else 0.0
    p[s1:s1 + n1] = np.minimum(1.0, c * (1.0 + others)).reshape(-1)
  return p


def _orthogonalise(d_ND, steps: int, lr: float):
  """Adam on sum_{i != j} (d_i . d_j)^2 + N sum_i (|d_i|^2 - 1)^2, then unit rows."""
  n = d_ND.shape[0]

  def loss(d):
    g = d @ d.T
    sq = jnp.sum(d * d, -1)
    return jnp.sum(g * g) - jnp.sum(sq * sq) + n * jnp.sum((sq - 1.0) ** 2)

  tx = optax.adam(lr)

  def body(_, carry):
    d, opt = carry
    u, opt = tx.update(jax.grad(loss)(d), opt, d)
    return optax.apply_updates(d, u), opt

  d, _ = jax.lax.fori_loop(0, steps, body, (d_ND, tx.init(d_ND)))
  return d / jnp.linalg.norm(d, axis=-1, keepdims=True)


def make_params(spec: SynthSpec) -> dict:
  """The fixed random parts of the generator (a pytree of arrays), pure in spec.seed."""
  k_d, k_f, k_s, k_b = jax.random.split(jax.random.key(spec.seed), 4)
  N, D = spec.n_features, spec.d_hidden
  d = jax.random.normal(k_d, (N, D), jnp.float32)
  d = d / jnp.linalg.norm(d, axis=-1, keepdims=True)
  if spec.ortho_steps:
    d = jax.jit(_orthogonalise, static_argnums=(1, 2))(d, spec.ortho_steps, spec.ortho_lr)
  f = spec.corr_scale * jax.random.normal(k_f, (N, max(spec.corr_rank, 1)), jnp.float32)
  f = f if spec.corr_rank else jnp.zeros_like(f)
  sq = jnp.sum(f * f, -1, keepdims=True)
  f = jnp.where(sq > 0.99, f * jnp.sqrt(0.99 / jnp.maximum(sq, 1e-12)), f)
  mu = np.linspace(spec.mag_max, spec.mag_min, N) if N > 1 else np.array([spec.mag_max])
  sigma = jnp.abs(spec.mag_std_mean + spec.mag_std_std * jax.random.normal(k_s, (N,)))
  b = jax.random.normal(k_b, (D,), jnp.float32)
  return {"dictionary": d, "F": f, "p": jnp.asarray(copula_probabilities(spec), jnp.float32),
          "mu": jnp.asarray(mu, jnp.float32), "sigma": sigma.astype(jnp.float32),
          "bias": spec.bias_norm * b / jnp.linalg.norm(b)}


def _uniform(key, shape):
  """Uniforms on the midpoints of a 2^-23 grid: exact in float32 and strictly inside (0, 1),
  so Phi^-1 of them is finite (|z| <= 5.3)."""
  u = jnp.floor(hash_uniform(key, shape) * jnp.float32(2.0 ** 23))
  return (u + jnp.float32(0.5)) * jnp.float32(2.0 ** -23)


def _hierarchy(spec: SynthSpec, params, key, a_BN):
  """Parent gating, mutual exclusion and child rescaling, level by level from the roots."""
  B = a_BN.shape[0]
  for l, ((s0, n0), (s1, n1)) in enumerate(zip(spec.levels[:-1], spec.levels[1:])):
    par_BP = a_BN[:, s0:s0 + n0]
    c_BPK = a_BN[:, s1:s1 + n1].reshape(B, n0, spec.branching) * (par_BP > 0)[..., None]
    if spec.mutually_exclusive:
      u = hash_uniform(jax.random.fold_in(key, l), (B, n0, spec.branching))
      win = jnp.argmax(jnp.where(c_BPK > 0, u, -1.0), axis=-1)
      c_BPK = c_BPK * jax.nn.one_hot(win, spec.branching, dtype=c_BPK.dtype)
    if spec.scale_children:
      c_BPK = jax.nn.relu(c_BPK * (par_BP / params["mu"][s0:s0 + n0])[..., None])
    a_BN = a_BN.at[:, s1:s1 + n1].set(c_BPK.reshape(B, n1))
  return a_BN


def _normal(key, shape):
  """N(0, 1) draws: Phi^-1 of `_uniform`."""
  return ndtri(_uniform(key, shape))


def sample(spec: SynthSpec, params, key, batch: int):
  """(h [B, D] hidden activations, a [B, N] ground-truth feature magnitudes).

  Two hashes and two Phi^-1 per (sample, feature): the copula's e and the magnitude's noise.
  (Drawing the firing given g as u < Phi((F g - t) / s) and the noise as Phi^-1(u / pi) from
  the same u needs one hash less but an erfc more, measured 1.6x slower on CPU.)"""
  k_g, k_e, k_m, k_h = jax.random.split(key, 4)
  N = spec.n_features
  f = params["F"]
  z = _normal(k_e, (batch, N)) * jnp.sqrt(jnp.maximum(1.0 - jnp.sum(f * f, -1), 0.0))
  if spec.corr_rank:
    z = z + jax.random.normal(k_g, (batch, f.shape[1]), jnp.float32) @ f.T
  fire = z > ndtri(1.0 - params["p"])
  mag = jax.nn.relu(params["mu"] + params["sigma"] * _normal(k_m, (batch, N)))
  a = jnp.where(fire, mag, 0.0)
  if spec.n_roots and spec.depth:
    a = _hierarchy(spec, params, k_h, a)
  return a @ params["dictionary"] + params["bias"], a


def batch_key(seed: int, step):
  """The key of batch `step` of stream `seed`."""
  return jax.random.fold_in(jax.random.key(int(seed)), step)


class SynthSource:
  """The generator as an activation source for the SAE stage (jaxcode.pipeline.sae):
  batch(step) and sample(n, seed) are pure in (stream seed, step)."""
  kind = "synth_features"

  def __init__(self, spec: SynthSpec, params=None, seed: int = 0):
    self.spec, self.seed, self.d_in = spec, int(seed), spec.d_hidden
    self.params = make_params(spec) if params is None else params
    self._draw = jax.jit(lambda p, k, b: sample(spec, p, k, b), static_argnums=2)

  def pair(self, seed: int, step: int, batch: int):
    """(h, a) of batch `step` of stream `seed` (device arrays)."""
    return self._draw(self.params, batch_key(seed, step), int(batch))

  def batch(self, step, batch_size):
    return np.asarray(self.pair(self.seed, step, batch_size)[0])

  def batch_rows(self, step, batch_size, rows):   # generated whole, then sliced
    return self.batch(step, batch_size)[rows]

  def sample(self, n, seed):
    return np.asarray(self.pair(self.seed + 1_000_003 + int(seed), 0, n)[0])
