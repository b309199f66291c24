"""Coding schemes of wide Bayesian networks: sample, analyse, report (layer 4).

run(config, workdir) samples the weight posterior of the wide network of
models/wide.py by Langevin dynamics (train/langevin.py as the shared loop's
optax transformation), once per nonlinearity in config.nonlinearities, each in
workdir/<nonlinearity>/ (checkpoints, metrics.jsonl; rerunning resumes), then
analyses the stored samples (analysis/coding_schemes.py) and writes
workdir/results.json and workdir/figures/*.png (report/coding_schemes.py).
"""

from __future__ import annotations

import math
import os
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxcode import parallel
from jaxcode.analysis import coding_schemes as cs
from jaxcode.data import tasks
from jaxcode import workdir as workdir_lib
from jaxcode.models import wide
from jaxcode.errors import ConfigError
from jaxcode.train import langevin as lg
from jaxcode.train import loop
from jaxcode.errors import NonFiniteError

PARAM_RULES = wide.CHAIN_RULES                              # chain axis first
AUX_RULES = ((r"^buffer/samples/", P(None, parallel.DATA)),)  # sample axis, then chains


def step_size(cfg, nonlinearity: str) -> float:
  return float(cfg.sampling.step_size[nonlinearity])


def validate(cfg) -> None:
  """Config checks that need no data (the rest fail in WideSpec / langevin / tasks)."""
  for nl in cfg.nonlinearities:
    if nl not in wide.NONLINEARITIES:
      raise ConfigError(f"nonlinearities has {nl!r}: expected a subset of {wide.NONLINEARITIES}")
    lg.validate(step_size(cfg, nl), float(cfg.sampling.beta))
  s = cfg.sampling
  lg.validate_schedule(int(cfg.steps), int(s.burn_in), int(s.thin), int(s.n_samples))
  if int(s.n_chains) < 1:
    raise ConfigError(f"sampling.n_chains={s.n_chains}: expected >= 1")


def _max_sigma(params, var):
  dev = jax.tree.map(lambda p, v: jnp.max(jnp.abs(p)) / math.sqrt(v), params, var)
  return jnp.max(jnp.stack(jax.tree.leaves(dev)))


def sampling_task(spec: wide.WideSpec, data: tasks.ClassTask, cfg, nonlinearity: str):
  """(Task for the shared loop, prior variances) sampling C chains of one network."""
  s = cfg.sampling
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  n_chains, burn_in, thin = int(s.n_chains), int(s.burn_in), int(s.thin)
  shapes = jax.eval_shape(lambda k: wide.init_chains(spec, k, n_chains), jax.random.PRNGKey(0))
  var = wide.prior_variances(spec, shapes)

  def init(key):
    params = wide.init_chains(spec, key, n_chains)
    return params, {"buffer": lg.init_buffer(params, int(s.n_samples))._asdict()}

  def loss(params, aux, batch, key, step):
    del batch, key
    loss_C = wide.mse_loss_per_chain(spec, params, x, y)
    buf = lg.record(lg.SampleBuffer(**aux["buffer"]), params, step, burn_in, thin)
    metrics = {"train_mse": 2 * loss_C / x.shape[0], "train_mse_mean": 2 * loss_C.mean() / x.shape[0],
               "max_param_sigma": _max_sigma(params, var)}
    return jnp.sum(loss_C), (metrics, {"buffer": buf._asdict()})

  tx = lg.langevin(step_size(cfg, nonlinearity), float(s.beta), var, int(cfg.seed),
                   bool(s.precondition), float(s.bad_sigma))
  meta = {"nonlinearity": nonlinearity, "width": spec.width, "depth": spec.depth,
          "n_chains": n_chains, "beta": float(s.beta)}
  task = loop.Task(init=init, loss=loss, param_rules=PARAM_RULES, aux_rules=AUX_RULES, tx=tx,
                   meta=meta)
  return task, var


def step_size_check(spec, data, cfg, nonlinearity, var) -> float:
  """eta * lambda_max of the preconditioned Hessian of U at a prior draw (< 2 to be stable)."""
  x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  beta = float(cfg.sampling.beta)
  p0 = wide.init_chains(spec, jax.random.PRNGKey(int(cfg.seed)), 1)

  def potential(p):
    return beta * jnp.sum(wide.mse_loss_per_chain(spec, p, x, y)) - wide.log_prior(spec, p)

  lam = float(jax.jit(lambda p: lg.top_hessian_eig(potential, p, var))(p0))
  return step_size(cfg, nonlinearity) * lam


def validate_step_size(spec, data, cfg, nonlinearity, var=None) -> float:
  """eta * lambda_max at a prior draw (NaN when sampling.check_step_size is off); ConfigError
  when it is >= 2, an unstable Euler step."""
  if not cfg.sampling.check_step_size:
    return float("nan")
  if var is None:
    var = sampling_task(spec, data, cfg, nonlinearity)[1]
  check = step_size_check(spec, data, cfg, nonlinearity, var)
  if check >= 2.0:
    raise ConfigError(f"langevin step_size={step_size(cfg, nonlinearity)} for {nonlinearity}: "
                      f"eta*lambda_max={check:.3g} >= 2 at the prior draw, the Euler step is "
                      "unstable; expected a smaller step")
  return check


def validate_step_sizes(specs: dict, data, cfg) -> dict[str, float]:
  """Every nonlinearity's step-size check, all before any chain is sampled."""
  return {nl: validate_step_size(spec, data, cfg, nl) for nl, spec in specs.items()}


def sample(spec, data, cfg, nonlinearity, workdir, mesh=None, check=None):
  """Runs the chains through the shared loop; returns (stored samples _SC..., last metrics, check).
  `check`: the step-size check's value when run already (validate_step_sizes)."""
  task, var = sampling_task(spec, data, cfg, nonlinearity)
  eta = step_size(cfg, nonlinearity)
  if check is None:
    check = validate_step_size(spec, data, cfg, nonlinearity, var)
  bad_sigma = float(cfg.sampling.bad_sigma)

  def guard(step, m):
    if float(m["max_param_sigma"]) > bad_sigma:
      raise lg.divergence_error(eta, step)

  try:
    res = loop.train(task, cfg, workdir, mesh=mesh, on_metrics=guard)
  except NonFiniteError as e:
    raise ConfigError(f"langevin step_size={eta}: chains diverged ({e}); "
                      "expected a smaller step size") from None
  lstate = lg.find_langevin_state(res.state.opt_state)
  first_bad = int(jax.device_get(lstate.first_bad))
  if first_bad >= 0:
    raise lg.divergence_error(eta, first_bad)
  buf = lg.SampleBuffer(**res.state.aux["buffer"])
  return lg.stored(buf), res.metrics, check


# ------------------------------------------------------------ analysis of samples

def _pass_over_samples(spec, data, samples, n_rhat_inputs: int) -> dict:
  """One forward pass per stored sample (all chains at once): per-(sample, chain) scheme
  statistics and NC1, and the sums the posterior means, variances and kernel need."""
  m = data.n_classes
  fwd = jax.jit(lambda p, x: wide.apply_chains(spec, p, x))
  acc = {"stats": [], "nc1": [], "obs": [], "mse_tr": [], "f_te": 0.0, "f2_te": 0.0,
         "f_tr": 0.0, "k_tr": 0.0, "n": 0}
  for s in range(jax.tree.leaves(samples)[0].shape[0]):
    p_s = jax.tree.map(lambda v: jnp.asarray(v[s]), samples)
    f_tr, h_tr = jax.device_get(fwd(p_s, data.x_train))
    f_te, _ = jax.device_get(fwd(p_s, data.x_test))
    feat = np.asarray(h_tr[-1], np.float64)                 # C x P x N
    a = np.asarray(p_s["a"])
    for c in range(a.shape[0]):
      acc["stats"].append(cs.scheme_statistics(a[c], feat[c], data.labels_train, m))
      acc["nc1"].append(cs.neural_collapse(feat[c], data.labels_train, m))
    acc["f_te"] = acc["f_te"] + f_te.sum(0)
    acc["f2_te"] = acc["f2_te"] + (f_te ** 2).sum(0)
    acc["f_tr"] = acc["f_tr"] + f_tr.sum(0)
    acc["k_tr"] = acc["k_tr"] + np.einsum("cpn,cqn->pq", feat, feat) / feat.shape[2]
    acc["mse_tr"].append(((f_tr - data.y_train[None]) ** 2).sum(2).mean(1))
    acc["obs"].append(f_te[:, :n_rhat_inputs].reshape(f_te.shape[0], -1))
    acc["n"] += a.shape[0]
  acc["feat_last"], acc["chains"] = feat[0], a.shape[0]
  return acc


def _gp_comparison(spec, data, beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(NNGP train kernel, GP posterior mean and variance on the test inputs)."""
  kern = lambda x1, x2: cs.nngp_feature_kernel(x1, x2, spec.nonlinearity, spec.depth, spec.w_var)
  k_gp_tr = kern(data.x_train, data.x_train)
  k_gp_diag = np.array([kern(x[None], x[None])[0, 0] for x in data.x_test])
  gp_mean, gp_var = cs.gp_predictor(k_gp_tr, kern(data.x_test, data.x_train), k_gp_diag,
                                    data.y_train, spec.readout_variance, beta)
  return k_gp_tr, gp_mean, gp_var


def analyse(spec, data, samples, beta: float, n_rhat_inputs: int = 8) -> tuple[dict, dict]:
  """Statistics, errors and the GP comparison from samples with leading axes (S, C);
  returns (numbers for results.json, figure data for jaxcode.report.coding_schemes)."""
  m = data.n_classes
  acc = _pass_over_samples(spec, data, samples, n_rhat_inputs)
  n_s, n_tot = len(acc["obs"]), acc["n"]
  f_te_mean, f_tr_mean = acc["f_te"] / n_tot, acc["f_tr"] / n_tot
  f_te_var = (acc["f2_te"] / n_tot - f_te_mean ** 2).sum(1)
  avg = cs.average_statistics(acc["stats"])
  k_gp_tr, gp_mean, gp_var = _gp_comparison(spec, data, beta)
  sem = np.sqrt(f_te_var / m / max(n_tot - 1, 1)).mean()
  r = (lg.rhat(np.stack(acc["obs"])) if n_s > 1 and acc["chains"] > 1
       else np.array([np.nan]))
  result = {
      "scheme": cs.classify(avg),
      "statistics": avg,
      "criteria": cs.criteria(),
      "train": {"mse_of_samples": float(np.mean(acc["mse_tr"])),
                "mse_of_mean_predictor": float(((f_tr_mean - data.y_train) ** 2).sum(1).mean()),
                "class_error_of_mean_predictor":
                    float(np.mean(f_tr_mean.argmax(1) != data.labels_train))},
      "test": cs.per_class_errors(f_te_mean, f_te_var, data.y_test, data.labels_test, m),
      "gp": {"test": cs.per_class_errors(gp_mean, m * gp_var, data.y_test, data.labels_test, m),
             "mean_predictor_rms_difference": float(np.sqrt(((f_te_mean - gp_mean) ** 2).mean())),
             "mean_predictor_rms_sem": float(sem)},
      "neural_collapse_nc1": float(np.mean(acc["nc1"])),
      "rhat_test_outputs": {"max": float(np.nanmax(r)), "median": float(np.nanmedian(r))},
      "n_samples": int(n_tot),
  }
  figs = {"a_last": np.asarray(samples["a"][-1, 0]), "a_all": np.asarray(samples["a"]),
          "feat_last": acc["feat_last"], "kernel": acc["k_tr"] / n_tot, "kernel_gp": k_gp_tr,
          "codes": avg["code_histogram"], "labels": data.labels_train,
          "f_te_mean": f_te_mean, "gp_mean": gp_mean}
  return result, figs


# ------------------------------------------------------------ run

def run(cfg, workdir: str, mesh=None) -> dict:
  """Runs the experiment holding its workdir (jaxcode.workdir): a rerun of a finished run
  is a no-op, a differing config or a second process is refused in one line."""
  return workdir_lib.run_owned(workdir, cfg, "coding_schemes", lambda: _run(cfg, workdir, mesh))


def _run(cfg, workdir: str, mesh=None) -> dict:
  from jaxcode.report import coding_schemes as report
  validate(cfg)
  data = tasks.task_from_config(cfg.data)
  specs = {nl: wide.spec_from_config(cfg.model, data.x_train.shape[1], data.n_classes,
                                     data.x_train.shape[0], nl) for nl in cfg.nonlinearities}
  checks = validate_step_sizes(specs, data, cfg)
  workdir_lib.check_workdir(workdir)
  out = {"task": data.name, "n_train": int(data.x_train.shape[0]),
         "n_test": int(data.x_test.shape[0]), "n_classes": data.n_classes, "results": {}}
  for nl, spec in specs.items():
    samples, metrics, check = sample(spec, data, cfg, nl, os.path.join(workdir, nl), mesh,
                                     checks[nl])
    result, figs = analyse(spec, data, samples, float(cfg.sampling.beta))
    result["step_size"] = step_size(cfg, nl)
    result["eta_lambda_max_at_prior_draw"] = check
    result["final_train_mse_per_chain"] = np.asarray(metrics.get("train_mse", [])).tolist()
    result["readout_prior_variance"] = spec.readout_variance
    result["figures"] = report.write_all({nl: figs}, os.path.join(workdir, "figures"))
    out["results"][nl] = result
  workdir_lib.write_json(os.path.join(workdir, "results.json"), out)
  return out
