"""Toy models of superposition, many instances at once.

One instance maps x in R^n to h = W^T x in R^m (W stored as [n, m], so h = x W)
and back. Three kinds:
- linear (Elhage et al. 2022): x' = W h + b;
- relu (Elhage et al. 2022, the ReLU output model): x' = ReLU(W h + b);
- hidden_relu (the toy-superposition post's model): h = ReLU(x W), x' = ReLU(W h + b),
  with W initialised N(0, 1/n) (POST_INIT below) instead of the notebook's xavier std.
The loss is the importance-weighted squared error, averaged over batch and features; the
instance losses are summed, so instances train independently under Adam(W).

Instances are stacked on a leading axis and vmapped; each instance has its own
id, which seeds its initialisation and its data, so an instance's trajectory
does not depend on how many instances are trained beside it or on how the
instance axis is split over devices.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("linear", "relu", "hidden_relu")


def post_init_std(n: int) -> float:
  """The post's init: W = Gaussian * sqrt(1/n), n the number of features."""
  return float(np.sqrt(1.0 / n))


class ToyModel(nn.Module):
  """A single instance; `relu` selects the output nonlinearity and `hidden` the hidden one
  (traced bools, so instances of different kinds share one vmapped program)."""
  n: int
  m: int
  init_std: float

  @nn.compact
  def __call__(self, x_BN, relu, hidden=False):
    w_NM = self.param("W", nn.initializers.normal(self.init_std), (self.n, self.m))
    b_N = self.param("b", nn.initializers.zeros, (self.n,))
    h_BM = x_BN @ w_NM
    h_BM = jnp.where(hidden, jax.nn.relu(h_BM), h_BM)
    out_BN = h_BM @ w_NM.T + b_N
    return jnp.where(relu, jax.nn.relu(out_BN), out_BN)


def init_instances(model: ToyModel, key, ids_I, std_I=None):
  """Params with a leading instance axis; instance i is seeded by fold_in(key, ids_I[i]).

  std_I, when given, is each instance's std of W (a unit-normal draw times std_I[i], the
  same numbers normal(std) gives); otherwise every instance uses model.init_std.
  """
  x = jnp.zeros((1, model.n))
  unit = model if std_I is None else model.clone(init_std=1.0)

  def one(i):
    return unit.init(jax.random.fold_in(key, i), x, False)["params"]

  params = jax.vmap(one)(ids_I)
  if std_I is not None:
    params = dict(params, W=params["W"] * jnp.asarray(std_I, jnp.float32)[:, None, None])
  return params


def weighted_mse(model: ToyModel, params, x_IBN, importance_IN, relu_I, hidden_I=None):
  """Per-instance loss [I]: mean over batch and features of I_f (x - x')^2."""
  chex.assert_rank(x_IBN, 3)
  if hidden_I is None:
    hidden_I = jnp.zeros(x_IBN.shape[:1], bool)

  def one(p, x_BN, imp_N, relu, hidden):
    out = model.apply({"params": p}, x_BN, relu, hidden)
    return jnp.mean(imp_N * (x_BN - out) ** 2)

  return jax.vmap(one)(params, x_IBN, importance_IN, relu_I, hidden_I)
