"""Toy models of superposition (Elhage et al. 2022), many instances at once.

One instance maps x in R^n to h = W^T x in R^m (W stored as [n, m], so h = x W)
and back: x' = W h + b (linear) or ReLU(W h + b) (ReLU output model). The loss is
the importance-weighted squared error, averaged over batch and features; the
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


class ToyModel(nn.Module):
  """A single instance; `relu` selects the output nonlinearity (a traced bool)."""
  n: int
  m: int
  init_std: float

  @nn.compact
  def __call__(self, x_BN, relu):
    w_NM = self.param("W", nn.initializers.normal(self.init_std), (self.n, self.m))
    b_N = self.param("b", nn.initializers.zeros, (self.n,))
    h_BM = x_BN @ w_NM
    out_BN = h_BM @ w_NM.T + b_N
    return jnp.where(relu, jax.nn.relu(out_BN), out_BN)


def init_instances(model: ToyModel, key, ids_I):
  """Params with a leading instance axis; instance i is seeded by fold_in(key, ids_I[i])."""
  x = jnp.zeros((1, model.n))

  def one(i):
    return model.init(jax.random.fold_in(key, i), x, False)["params"]

  return jax.vmap(one)(ids_I)


def weighted_mse(model: ToyModel, params, x_IBN, importance_IN, relu_I):
  """Per-instance loss [I]: mean over batch and features of I_f (x - x')^2."""
  chex.assert_rank(x_IBN, 3)

  def one(p, x_BN, imp_N, relu):
    out = model.apply({"params": p}, x_BN, relu)
    return jnp.mean(imp_N * (x_BN - out) ** 2)

  return jax.vmap(one)(params, x_IBN, importance_IN, relu_I)
