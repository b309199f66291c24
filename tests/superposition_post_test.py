"""The toy-superposition post's hidden-ReLU model (configs/superposition.py:post): its
forward against NumPy, its N(0, 1/n) init, a one-feature case solved by hand, the variant
end to end, and an unknown model kind refused before compute."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import superposition as configs
from jaxcode import parallel
from jaxcode.data import sparse_features
from jaxcode.errors import ConfigError
from jaxcode.experiments import superposition as exp
from jaxcode.models import toy


def _numpy_forward(x, w, b, kind):
  """Hand-written forward (W stored [n, m]): linear x W W^T + b; relu ReLU of that; the
  post's hidden_relu ReLU(ReLU(x W) W^T + b)."""
  h = x @ w
  if kind == "hidden_relu":
    h = np.maximum(h, 0.0)
  out = h @ w.T + b
  return out if kind == "linear" else np.maximum(out, 0.0)


def test_forward_and_loss_against_numpy():
  """Reference: _numpy_forward and a NumPy importance-weighted mean, for three instances of
  the three kinds in one vmapped call (float64 NumPy against float32 JAX)."""
  rng = np.random.default_rng(0)
  n, m, batch = 7, 3, 16
  kinds = ("linear", "relu", "hidden_relu")
  w = rng.standard_normal((3, n, m))
  b = 0.3 * rng.standard_normal((3, n))
  x = rng.random((3, batch, n)) * (rng.random((3, batch, n)) < 0.6)
  imp = rng.random((3, n))
  model = toy.ToyModel(n=n, m=m, init_std=0.1)
  params = {"W": jnp.asarray(w, jnp.float32), "b": jnp.asarray(b, jnp.float32)}
  relu = jnp.array([k != "linear" for k in kinds])
  hidden = jnp.array([k == "hidden_relu" for k in kinds])
  got = toy.weighted_mse(model, params, jnp.asarray(x, jnp.float32), jnp.asarray(imp),
                         relu, hidden)
  for i, kind in enumerate(kinds):
    out = model.apply({"params": {"W": params["W"][i], "b": params["b"][i]}},
                      jnp.asarray(x[i], jnp.float32), relu[i], hidden[i])
    ref = _numpy_forward(x[i], w[i], b[i], kind)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5, err_msg=kind)
    np.testing.assert_allclose(float(got[i]), np.mean(imp[i] * (x[i] - ref) ** 2),
                               rtol=1e-5, err_msg=kind)
  # the hidden ReLU matters: a negative pre-activation is cut (W = -1: h = 0, x' = ReLU(b))
  one = model.apply({"params": {"W": -jnp.ones((n, m)), "b": jnp.full((n,), 0.2)}},
                    jnp.ones((2, n)), True, True)
  np.testing.assert_allclose(np.asarray(one), 0.2, rtol=1e-6)


def test_post_init_is_gaussian_with_std_sqrt_one_over_n():
  """Through the experiment's own init (make_task.init): hidden_relu's W has std sqrt(1/n)
  (the post), relu's the notebook's xavier std sqrt(2 / (n m + L m)); both within 5
  standard errors of a sample std of N draws (SE = sigma / sqrt(2 N)), means within
  5 sigma / sqrt(N); toy.init_std, when set, overrides both."""
  c = configs.get_config("post")
  c.toy.n, c.toy.m, c.toy.sparsities = 400, 50, (0.5,)
  c.toy.models = ("relu", "hidden_relu")
  inst = exp.build_instances(c.toy, pad_to=1)
  mesh = parallel.single_device_mesh()
  params, aux = exp.make_task(c, inst, mesh).init(jax.random.key(0))
  w = np.asarray(params["W"], np.float64).reshape(2, -1)
  num = w.shape[1]
  for row, sigma in zip(w, (np.sqrt(2.0 / (400 * 50 + 50)), np.sqrt(1.0 / 400))):
    assert abs(row.std() - sigma) < 5 * sigma / np.sqrt(2 * num), (row.std(), sigma)
    assert abs(row.mean()) < 5 * sigma / np.sqrt(num)
  assert np.asarray(aux["hidden"]).tolist() == [False, True]
  assert np.asarray(aux["relu"]).tolist() == [True, True]
  np.testing.assert_array_equal(np.asarray(params["b"]), 0.0)
  c.toy.init_std = 0.3
  params, _ = exp.make_task(c, inst, mesh).init(jax.random.key(0))
  for row in np.asarray(params["W"], np.float64).reshape(2, -1):
    assert abs(row.std() - 0.3) < 5 * 0.3 / np.sqrt(2 * num)


def test_identity_embedding_reconstructs_exactly():
  """m = n, W = I, b = 0: x >= 0 so ReLU(x) = x and x' = ReLU(x) = x: zero loss on the
  project's sampler at every sparsity, for the hidden-ReLU and the ReLU-output model."""
  n = 5
  x = sparse_features.sample_instances(jax.random.key(3), jnp.arange(3), 256, n,
                                       jnp.array([0.0, 0.5, 0.9]))
  params = {"W": jnp.broadcast_to(jnp.eye(n), (3, n, n)), "b": jnp.zeros((3, n))}
  for hidden in (True, False):
    loss = toy.weighted_mse(toy.ToyModel(n=n, m=n, init_std=0.1), params, x,
                            jnp.ones((3, n)), jnp.ones(3, bool), jnp.full(3, hidden))
    np.testing.assert_array_equal(np.asarray(loss), 0.0)


def test_one_feature_hidden_relu_follows_the_hand_solved_dynamics(tmp_path):
  """n = m = 1, density p = 0.5, x = 0 or U[0, 1), b starts at 0. By hand, the sign of the
  initial w decides: w > 0: x' = ReLU(w^2 x + b), zero loss exactly at w^2 = 1, b = 0, where
  training must go. w < 0: h = ReLU(w x) = 0 and x' = ReLU(b) with b = 0, so W and b get
  zero gradient (ReLU'(0) = 0), Adam's step is 0 and only AdamW's decay acts:
  w_T = w_0 (1 - lr wd)^T, b stays 0, loss E[x^2] = p/3. The post's init (std
  sqrt(1/1) = 1) puts instances in both; the run's mean final loss must match the hand
  losses within 4 standard errors of the batch means (per-sample sd of x^2 at p = 1/2:
  sqrt(p/5 - p^2/9) = 0.269, by hand)."""
  p, lr, wd, steps = 0.5, 0.02, 0.01, 1200
  c = configs.get_config("post")
  c.toy.n, c.toy.m, c.toy.sparsities, c.toy.seeds = 1, 1, (0.5,), 8
  c.toy.models, c.toy.batch = ("hidden_relu",), 1024
  c.steps, c.optim.lr, c.log_every, c.checkpoint.every = steps, lr, 600, steps
  assert c.optim.weight_decay == wd
  inst = exp.build_instances(c.toy, pad_to=1)
  w0, _ = exp.make_task(c, inst, parallel.single_device_mesh()).init(
      jax.random.PRNGKey(c.seed))      # the initial state training starts from
  w0 = np.asarray(w0["W"], np.float64).ravel()
  assert (w0 > 0).any() and (w0 < 0).any(), w0
  r = exp.run(c, str(tmp_path / "one"))
  hand = []
  for rec, w_init in zip(r["instances"], w0):
    w2, b = rec["wtw"][0][0], rec["bias"][0]
    if w_init > 0:
      assert abs(w2 - 1.0) < 0.05 and abs(b) < 0.02, (w_init, w2, b)
      hand.append(0.0)
    else:
      assert b == 0.0, (w_init, b)
      assert w2 == pytest.approx((w_init * (1 - lr * wd) ** steps) ** 2, rel=1e-4)
      hand.append(p / 3)
  loss = r["post"]["models"]["hidden_relu"]["loss"][0]
  dead = int(np.sum(w0 < 0))
  assert abs(loss - np.mean(hand)) < 4 * 0.269 * np.sqrt(dead) / (8 * np.sqrt(1024)), (loss, hand)
  assert r["final_loss"] == pytest.approx(8 * loss, rel=1e-9)


def test_post_variant_end_to_end(tmp_path):
  """A smaller :post (n 12, m 3, 300 steps): the three kinds at the post's sparsities, its
  figures, and a post summary whose numbers agree with what this test recomputes from each
  instance's W W^T diagonal and bias (and whose losses sum to final_loss)."""
  c = configs.get_config("post")
  assert c.toy.models == ("linear", "relu", "hidden_relu")
  assert {0.1, 0.9} <= set(c.toy.sparsities)
  c.toy.n, c.toy.m, c.toy.batch = 12, 3, 256
  c.steps, c.optim.lr, c.log_every, c.checkpoint.every = 300, 0.01, 100, 300
  r = exp.run(c, str(tmp_path / "post"))
  figs = set(os.listdir(tmp_path / "post" / "figures"))
  assert {"wtw_and_norms.png", "bias.png", "feature_norms.png", "dims_per_feature.png"} <= figs
  post = r["post"]
  assert post["sparsities"] == sorted(c.toy.sparsities)
  assert set(post["models"]) == {"linear", "relu", "hidden_relu"}
  total = 0.0
  for rec in r["instances"]:
    k, j = rec["model"], post["sparsities"].index(rec["sparsity"])
    row = {name: vals[j] for name, vals in post["models"][k].items()}
    norms = np.sqrt(np.diag(np.asarray(rec["wtw"])))
    rep = norms > 0.5
    assert row["n_represented"] == rep.sum()
    assert row["frobenius_sq"] == pytest.approx(np.sum(norms ** 2), rel=1e-9)
    if rep.any() and (~rep).any():
      assert row["bias_represented"] == pytest.approx(np.mean(np.array(rec["bias"])[rep]))
      assert row["bias_unrepresented"] == pytest.approx(np.mean(np.array(rec["bias"])[~rep]))
    total += row["loss"]
  assert total == pytest.approx(r["final_loss"], rel=1e-6)
  diff = post["hidden_relu_minus_relu"]["n_represented"]
  assert diff == [a - b for a, b in zip(post["models"]["hidden_relu"]["n_represented"],
                                        post["models"]["relu"]["n_represented"])]


def test_unknown_model_kind_is_one_line_before_compute(tmp_path):
  c = configs.get_config("post")
  c.toy.models = ("linear", "hiden_relu")
  with pytest.raises(ConfigError) as err:
    exp.run(c, str(tmp_path / "w"))
  msg = str(err.value)
  assert "\n" not in msg and "toy.models contains 'hiden_relu'" in msg and "hidden_relu" in msg
  assert not (tmp_path / "w" / "metrics.jsonl").exists()
