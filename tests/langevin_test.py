"""Langevin sampling (jaxcode/train/langevin.py) and its use through the shared loop.

References we did not write: the exact stationary law of the Euler-Maruyama
Langevin chain on a Gaussian target (an AR(1) process: mean m, variance
1 / (lambda (1 - eta lambda / 2)) in preconditioned units), bit-exact agreement
of a resumed run with the uninterrupted run on the same mesh, and agreement of the
8-device sharded run with a single-device run to float32 rounding.
"""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import coding_schemes as cfg_lib
from jaxcode import parallel
from jaxcode.data import tasks
from jaxcode.experiments import coding_schemes as exp
from jaxcode.models import wide
from jaxcode.errors import ConfigError
from jaxcode.train import langevin as lg
from jaxcode.train import loop


def test_gaussian_target_exact_stationary_law():
  """L = 1/2 ||theta - mu||^2, prior N(0, v): posterior N(beta mu / (beta + 1/v), 1/(beta + 1/v)).

  With preconditioning m = v the chain is AR(1) with lambda = v (beta + 1/v); its
  stationary variance is m / (lambda (1 - eta lambda / 2)) exactly.
  """
  beta, v, eta, mu = 3.0, 2.0, 0.05, 1.5
  n_chains, steps = 4000, 400
  tx = lg.langevin(eta, beta, v, seed=0)
  theta = {"x": jnp.zeros((n_chains,))}
  state = tx.init(theta)

  @jax.jit
  def run(theta, state):
    def body(c, _):
      p, s = c
      g = jax.tree.map(lambda t: t - mu, p)          # grad of L per chain
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    return jax.lax.scan(body, (theta, state), None, length=steps)[0]

  theta, state = run(theta, state)
  x = np.asarray(theta["x"], np.float64)
  prec = beta + 1 / v
  lam = v * prec
  want_mean = beta * mu / prec
  want_var = v / (lam * (1 - eta * lam / 2))
  assert abs(x.mean() - want_mean) < 4 * np.sqrt(want_var / n_chains)
  assert abs(x.var() / want_var - 1) < 0.08
  assert int(state.count) == steps and int(state.first_bad) == -1


def test_noise_is_a_function_of_seed_and_step():
  tx = lg.langevin(0.1, 1.0, 1.0, seed=7)
  p = {"w": jnp.zeros((3,))}
  g = {"w": jnp.zeros((3,))}
  s0 = tx.init(p)
  u1, s1 = tx.update(g, s0, p)
  u1b, _ = tx.update(g, s0, p)
  u2, _ = tx.update(g, s1, p)
  np.testing.assert_array_equal(u1["w"], u1b["w"])
  assert not np.allclose(u1["w"], u2["w"])
  u_other, _ = tx.update(g, lg.langevin(0.1, 1.0, 1.0, seed=8).init(p), p)
  assert not np.allclose(u1["w"], u_other["w"])


def test_divergence_detected_with_step():
  """eta * lambda = 3 > 2: |theta| grows by 2x per step; the first step past bad_sigma is recorded."""
  tx = lg.langevin(1.5, 1.0, 1.0, seed=0, precondition=False, bad_sigma=1e3)
  p = {"x": jnp.ones((2,))}
  s = tx.init(p)
  first = None
  for t in range(30):
    u, s = tx.update({"x": p["x"]}, s, p)         # L = x^2/2: drift (1 + 1) x
    p = optax.apply_updates(p, u)
    if first is None and np.max(np.abs(np.asarray(p["x"]))) > 1e3:
      first = t
  assert int(s.first_bad) == first
  err = lg.divergence_error(1.5, int(s.first_bad))
  assert f"diverged at step {first}" in str(err) and "step_size=1.5" in str(err)


@pytest.mark.parametrize("eta,beta,needle", [(0.0, 1.0, "step_size=0.0"),
                                             (1e-3, 0.0, "beta=0.0"),
                                             (1e-3, -2.0, "beta=-2.0")])
def test_bad_step_or_beta(eta, beta, needle):
  with pytest.raises(ConfigError, match=needle):
    lg.langevin(eta, beta, 1.0, seed=0)


def test_top_hessian_eig_of_quadratic():
  """Power iteration on U = 1/2 x^T A x with A diagonal: the largest entry (times the scale)."""
  a = jnp.array([1.0, 5.0, 3.0])
  lam = lg.top_hessian_eig(lambda p: 0.5 * jnp.sum(a * p["x"] ** 2), {"x": jnp.ones(3)},
                           {"x": 2.0}, iters=60)
  assert float(lam) == pytest.approx(10.0, rel=1e-3)


def test_buffer_burn_in_and_thinning():
  buf = lg.init_buffer({"w": jnp.zeros(())}, 4)
  rec = jax.jit(lambda b, p, t: lg.record(b, p, t, 5, 3))
  for t in range(30):
    buf = rec(buf, {"w": jnp.asarray(float(t))}, jnp.asarray(t))
  got = lg.stored(buf)["w"].tolist()
  assert got == [20.0, 23.0, 26.0, 29.0]         # steps 5, 8, ..., 29 kept, last 4 in order
  with pytest.raises(ConfigError, match="burn_in=10"):
    lg.validate_schedule(12, 10, 2, 3)


def test_rhat():
  rng = np.random.default_rng(0)
  same = rng.standard_normal((200, 4, 3))
  shifted = same + np.array([0.0, 0.0, 3.0, 3.0])[None, :, None]
  assert np.all(np.abs(lg.rhat(same) - 1) < 0.05)
  assert np.all(lg.rhat(shifted) > 1.5)


# ------------------------------------------------------------ through the shared loop

def _tiny(tmp_steps=20):
  cfg = cfg_lib.get_config("toy")
  with cfg.unlocked():
    cfg.steps = tmp_steps
    cfg.log_every = 5
    cfg.checkpoint.every = 10
    cfg.checkpoint.async_save = False
    cfg.model.width = 8
    cfg.data.n_train = 8
    cfg.data.n_test = 4
    cfg.sampling.n_chains = 8
    cfg.sampling.beta = 1e3
    cfg.sampling.burn_in = 4
    cfg.sampling.thin = 3
    cfg.sampling.n_samples = 4
    cfg.sampling.step_size.relu = 1e-3
  data = tasks.task_from_config(cfg.data)
  spec = wide.spec_from_config(cfg.model, 8, 3, 8, "relu")
  return cfg, data, spec


def _leaves(state):
  return [np.asarray(jax.device_get(x)) for x in
          jax.tree.leaves((state.params, state.opt_state, state.aux))]


def test_resume_after_kill_and_sharded_equals_single(tmp_path):
  """Resuming from the step-10 checkpoint (what a kill between steps 10 and 20 leaves on
  disk) ends bit for bit where the uninterrupted run ended; the 8-device sharded run
  equals a single-device run to float32 rounding (reductions may be reordered)."""
  cfg, data, spec = _tiny()
  task, _ = exp.sampling_task(spec, data, cfg, "relu")
  mesh8 = parallel.make_mesh(8, 1)
  work = tmp_path / "a"
  straight = loop.train(task, cfg, str(work), mesh=mesh8).state
  assert straight.params["a"].sharding.spec[0] == "data"
  assert straight.aux["buffer"]["samples"]["a"].sharding.spec[:2] == (None, "data")
  shutil.rmtree(work / "checkpoints" / "20")       # the kill: only step 10 reached disk
  resumed = loop.train(task, cfg, str(work), mesh=mesh8)
  assert resumed.resumed_from == 10 and resumed.steps_run == 10
  for x, y in zip(_leaves(straight), _leaves(resumed.state)):
    np.testing.assert_array_equal(x, y)
  single = loop.train(task, cfg, str(tmp_path / "c"), mesh=parallel.single_device_mesh()).state
  for x, y in zip(_leaves(straight), _leaves(single)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_divergent_step_size_reported_with_step(tmp_path, monkeypatch):
  cfg, data, spec = _tiny(tmp_steps=40)
  with cfg.unlocked():
    cfg.sampling.step_size.relu = 0.5
    cfg.sampling.bad_sigma = 50.0
  # the pre-run curvature check rejects it before any sampling ...
  with pytest.raises(ConfigError, match=r"step_size=0\.5 for relu: eta\*lambda_max="):
    exp.sample(spec, data, cfg, "relu", str(tmp_path / "pre"))
  # ... and without that check the in-run detector names the step
  monkeypatch.setattr(exp, "step_size_check", lambda *a: 0.0)
  with pytest.raises(ConfigError, match=r"step_size=0\.5: chains diverged at step \d+"):
    exp.sample(spec, data, cfg, "relu", str(tmp_path / "run"), parallel.single_device_mesh())
