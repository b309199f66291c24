"""Wide networks (jaxcode/models/wide.py).

References we did not write: the forward pass is checked against a numpy
implementation of the formulas of notes/geometry.md A.1 with scipy.special.erf;
the prior against its analytic moments.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from jaxcode.models import wide
from jaxcode.errors import ConfigError


def _spec(**kw):
  base = dict(width=16, depth=2, n_in=5, n_out=3, nonlinearity="erf")
  base.update(kw)
  return wide.WideSpec(**base)


@pytest.mark.parametrize("nonlinearity,readout", [("linear", "mean_field"), ("erf", "lazy"),
                                                   ("relu", "mean_field")])
def test_forward_matches_numpy_formula(nonlinearity, readout):
  spec = _spec(nonlinearity=nonlinearity, readout=readout)
  params = wide.init_chains(spec, jax.random.PRNGKey(0), 2)
  x = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
  f, hs = wide.apply_chains(spec, params, jnp.asarray(x))
  phi = {"linear": lambda z: z, "erf": erf, "relu": lambda z: np.maximum(z, 0)}[nonlinearity]
  for c in range(2):
    p = jax.tree.map(lambda v: np.asarray(v[c], np.float64), params)
    h1 = phi(x @ p["w1"] / math.sqrt(5))
    h2 = phi(h1 @ p["w2"] / math.sqrt(16))
    scale = 1 / 16 if readout == "mean_field" else 1 / 4
    np.testing.assert_allclose(np.asarray(hs[1][c]), h2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(f[c]), h2 @ p["a"] * scale, rtol=1e-4, atol=1e-5)
  zs = wide.preactivations(spec, jax.tree.map(lambda v: v[0], params), jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(phi(np.asarray(zs[1], np.float64))),
                             np.asarray(hs[1][0]), rtol=1e-4, atol=1e-5)
  y = np.zeros((7, 3), np.float32)
  np.testing.assert_allclose(wide.mse_loss_per_chain(spec, params, jnp.asarray(x), jnp.asarray(y)),
                             0.5 * np.sum(np.asarray(f) ** 2, axis=(1, 2)), rtol=1e-5)


def test_prior_draw_and_log_prior():
  """init draws W ~ N(0, w_var), a ~ N(0, a_var P^power): analytic moments."""
  spec = _spec(width=300, depth=1, n_in=40, w_var=2.0, a_var=0.5, a_var_p_power=1.0, n_train=4)
  params = wide.init_chains(spec, jax.random.PRNGKey(1), 4)
  assert params["w1"].shape == (4, 40, 300) and params["a"].shape == (4, 300, 3)
  assert abs(float(jnp.var(params["w1"])) - 2.0) < 0.06
  assert abs(float(jnp.var(params["a"])) - 2.0) < 0.2       # 0.5 * 4
  assert spec.readout_variance == pytest.approx(2.0)
  lp = wide.log_prior(spec, params)
  want = -0.5 * (np.sum(np.asarray(params["w1"]) ** 2) / 2.0
                 + np.sum(np.asarray(params["a"]) ** 2) / 2.0)
  assert float(lp) == pytest.approx(want, rel=1e-4)
  # chains are independent draws
  assert not np.allclose(np.asarray(params["a"][0]), np.asarray(params["a"][1]))


@pytest.mark.parametrize("kw,needle", [
    (dict(width=0), "model.width=0"),
    (dict(depth=0), "model.depth=0"),
    (dict(nonlinearity="tanh"), "model.nonlinearity='tanh'"),
    (dict(readout="ntk"), "model.readout='ntk'"),
    (dict(w_var=0.0), "model.w_var=0.0"),
])
def test_bad_spec_one_line(kw, needle):
  with pytest.raises(ConfigError) as e:
    _spec(**kw)
  assert needle in str(e.value) and "\n" not in str(e.value)
