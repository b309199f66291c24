"""Wide fully connected networks for Bayesian coding-scheme studies (layer 1).

The network of van Meegen & Sompolinsky (Nat. Commun. 2025), notes/geometry.md A.1:

  z^1 = W^1 x / sqrt(N0),   z^l = W^l phi(z^{l-1}) / sqrt(N)   (l = 2..L),
  f(x) = (1/N)       sum_i a_i phi(z^L_i(x))   readout='mean_field' (non-lazy),
  f(x) = (1/sqrt N)  sum_i a_i phi(z^L_i(x))   readout='lazy' (NNGP limit).

Weights carry no scale of their own: the 1/sqrt(fan-in) factors are in the
forward pass, so the Gaussian prior is W^l_ij ~ N(0, w_var) and
a_ik ~ N(0, a_var * P**a_var_p_power) (readout variance scaling with the
number of training points P; see `readout_variance`). `init` draws from that
prior, so a chain starts at a prior sample.

Many Langevin chains run at once: every parameter gets a leading chain axis C
(`init_chains`, `apply_chains` are vmaps of the single-network functions) and
`CHAIN_RULES` shards that axis over the mesh's 'data' axis.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxcode.errors import ConfigError
from jaxcode.parallel import DATA

NONLINEARITIES = ("linear", "erf", "relu")
READOUTS = ("mean_field", "lazy")

# Sharding rules (for tree_shardings / Task.param_rules): every parameter of a
# chain-batched params pytree ('w1', ..., 'wL', 'a') has the chain axis first.
CHAIN_RULES = ((r"^(w\d+|a)$", P(DATA)),)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """phi for 'linear', 'erf' (the sigmoidal case) or 'relu'."""
  if name == "linear":
    return lambda z: z
  if name == "erf":
    return jax.scipy.special.erf
  if name == "relu":
    return jax.nn.relu
  raise ConfigError(f"nonlinearity={name!r}: expected one of {NONLINEARITIES}")


@dataclasses.dataclass(frozen=True)
class WideSpec:
  """Architecture and prior of one wide network (all validated in __post_init__)."""
  width: int                  # N, hidden units per layer
  depth: int                  # L, number of hidden layers
  n_in: int                   # N0, input dimension
  n_out: int                  # m, number of outputs (classes)
  nonlinearity: str = "relu"  # linear | erf | relu
  readout: str = "mean_field"  # mean_field (1/N) | lazy (1/sqrt N)
  w_var: float = 1.0          # prior variance of every hidden weight
  a_var: float = 1.0          # prior variance of readout weights before P-scaling
  a_var_p_power: float = 0.0  # readout prior variance = a_var * n_train**a_var_p_power
  n_train: int = 1            # P, used only for the readout-variance scaling

  def __post_init__(self):
    for name in ("width", "depth", "n_in", "n_out", "n_train"):
      v = getattr(self, name)
      if not isinstance(v, int) or v < 1:
        raise ConfigError(f"model.{name}={v!r}: expected an integer >= 1")
    if self.nonlinearity not in NONLINEARITIES:
      raise ConfigError(f"model.nonlinearity={self.nonlinearity!r}: expected one of "
                        f"{NONLINEARITIES}")
    if self.readout not in READOUTS:
      raise ConfigError(f"model.readout={self.readout!r}: expected one of {READOUTS}")
    for name in ("w_var", "a_var"):
      v = getattr(self, name)
      if not v > 0:
        raise ConfigError(f"model.{name}={v!r}: expected a prior variance > 0")

  @property
  def readout_variance(self) -> float:
    return readout_variance(self.a_var, self.n_train, self.a_var_p_power)

  @property
  def readout_scale(self) -> float:
    return 1.0 / self.width if self.readout == "mean_field" else 1.0 / math.sqrt(self.width)


def readout_variance(a_var: float, n_train: int, p_power: float) -> float:
  """Prior variance of the readout weights, a_var * P**p_power."""
  return float(a_var) * float(n_train) ** float(p_power)


def spec_from_config(model_cfg, n_in: int, n_out: int, n_train: int,
                     nonlinearity: str | None = None) -> WideSpec:
  """WideSpec from a config block with width, depth, nonlinearity, readout, priors."""
  return WideSpec(width=int(model_cfg.width), depth=int(model_cfg.depth), n_in=int(n_in),
                  n_out=int(n_out), nonlinearity=nonlinearity or model_cfg.nonlinearity,
                  readout=model_cfg.readout, w_var=float(model_cfg.w_var),
                  a_var=float(model_cfg.a_var), a_var_p_power=float(model_cfg.a_var_p_power),
                  n_train=int(n_train))


class WideNet(nn.Module):
  """One network; returns (f_BM, hiddens) with hiddens[l] = phi(z^{l+1})_BN."""
  spec: WideSpec

  @nn.compact
  def __call__(self, x_BD: jax.Array):
    s = self.spec
    chex.assert_shape(x_BD, (None, s.n_in))
    phi = activation(s.nonlinearity)
    w_init = nn.initializers.normal(math.sqrt(s.w_var))
    h, fan_in, hiddens = x_BD, s.n_in, []
    for l in range(s.depth):
      w = self.param(f"w{l + 1}", w_init, (fan_in, s.width))
      h = phi(h @ w / math.sqrt(fan_in))
      hiddens.append(h)
      fan_in = s.width
    a_NM = self.param("a", nn.initializers.normal(math.sqrt(s.readout_variance)),
                      (s.width, s.n_out))
    f_BM = (h @ a_NM) * s.readout_scale
    chex.assert_shape(f_BM, (x_BD.shape[0], s.n_out))
    return f_BM, tuple(hiddens)


def preactivations(spec: WideSpec, params, x_BD: jax.Array) -> tuple[jax.Array, ...]:
  """z^l_BN for l = 1..L of one network (before the nonlinearity)."""
  phi = activation(spec.nonlinearity)
  h, fan_in, zs = x_BD, spec.n_in, []
  for l in range(spec.depth):
    z = h @ params[f"w{l + 1}"] / math.sqrt(fan_in)
    zs.append(z)
    h, fan_in = phi(z), spec.width
  return tuple(zs)


def prior_variances(spec: WideSpec, params) -> Any:
  """Pytree like params holding each leaf's prior variance (a scalar per leaf)."""
  def one(path, _):
    name = str(path[-1].key)
    return spec.readout_variance if name == "a" else spec.w_var
  return jax.tree_util.tree_map_with_path(one, params)


def log_prior(spec: WideSpec, params) -> jax.Array:
  """log P0(theta) up to a constant (sum over all leaves, chain axes included)."""
  var = prior_variances(spec, params)
  terms = jax.tree.map(lambda p, v: -0.5 * jnp.sum(p.astype(jnp.float32) ** 2) / v, params, var)
  return sum(jax.tree.leaves(terms))


def init_chains(spec: WideSpec, key: jax.Array, n_chains: int):
  """Params with a leading chain axis C, each chain an independent prior draw."""
  if n_chains < 1:
    raise ConfigError(f"n_chains={n_chains}: expected >= 1")
  model = WideNet(spec)
  x = jnp.zeros((1, spec.n_in), jnp.float32)
  keys = jax.random.split(key, n_chains)
  return jax.vmap(lambda k: model.init(k, x)["params"])(keys)


def apply_chains(spec: WideSpec, params_C, x_BD: jax.Array):
  """(f_CBM, hiddens with entries _CBN) for chain-batched params."""
  model = WideNet(spec)
  return jax.vmap(lambda p: model.apply({"params": p}, x_BD))(params_C)


def mse_loss_per_chain(spec: WideSpec, params_C, x_BD: jax.Array, y_BM: jax.Array) -> jax.Array:
  """L_c = 1/2 sum_mu ||f_c(x_mu) - y_mu||^2 for each chain c (shape (C,))."""
  f_CBM, _ = apply_chains(spec, params_C, x_BD)
  return 0.5 * jnp.sum((f_CBM - y_BM[None]) ** 2, axis=(1, 2))
