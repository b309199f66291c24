"""Coding schemes of wide Bayesian networks: sample, analyse, report (layer 4).

run(config, workdir) samples the weight posterior of the wide network of
models/wide.py by Langevin dynamics (train/langevin.py as the shared loop's
optax transformation), once per nonlinearity in config.nonlinearities, each in
workdir/<nonlinearity>/ (checkpoints, metrics.jsonl; rerunning resumes), then
analyses the stored samples (analysis/coding_schemes.py) and writes
workdir/results.json and workdir/figures/*.png.
"""

from __future__ import annotations

import math
import os
from typing import Any

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

def analyse(spec, data, samples, beta: float, n_rhat_inputs: int = 8) -> tuple[dict, dict]:
  """Statistics, errors and the GP comparison from samples with leading axes (S, C)."""
  m = data.n_classes
  fwd = jax.jit(lambda p, x: wide.apply_chains(spec, p, x))
  n_s = jax.tree.leaves(samples)[0].shape[0]
  stats, nc1, obs = [], [], []
  f_te_sum = f2_te_sum = f_tr_sum = k_tr_sum = 0.0
  mse_tr = []
  for s in range(n_s):
    p_s = jax.tree.map(lambda v: jnp.asarray(v[s]), samples)
    f_tr, h_tr = jax.device_get(fwd(p_s, data.x_train))
    f_te, _ = jax.device_get(fwd(p_s, data.x_test))
    feat = np.asarray(h_tr[-1], np.float64)                 # C x P x N
    a = np.asarray(p_s["a"])
    for c in range(a.shape[0]):
      stats.append(cs.scheme_statistics(a[c], feat[c], data.labels_train, m))
      nc1.append(cs.neural_collapse(feat[c], data.labels_train, m))
    f_te_sum = f_te_sum + f_te.sum(0)
    f2_te_sum = f2_te_sum + (f_te ** 2).sum(0)
    f_tr_sum = f_tr_sum + f_tr.sum(0)
    k_tr_sum = k_tr_sum + np.einsum("cpn,cqn->pq", feat, feat) / feat.shape[2]
    mse_tr.append(((f_tr - data.y_train[None]) ** 2).sum(2).mean(1))
    obs.append(f_te[:, :n_rhat_inputs].reshape(f_te.shape[0], -1))
  n_tot = n_s * a.shape[0]
  f_te_mean, f_tr_mean = f_te_sum / n_tot, f_tr_sum / n_tot
  f_te_var = (f2_te_sum / n_tot - f_te_mean ** 2).sum(1)
  avg = cs.average_statistics(stats)
  scheme = cs.classify(avg)

  k_gp_tr = cs.nngp_feature_kernel(data.x_train, data.x_train, spec.nonlinearity, spec.depth,
                                   spec.w_var)
  k_gp_te = cs.nngp_feature_kernel(data.x_test, data.x_train, spec.nonlinearity, spec.depth,
                                   spec.w_var)
  k_gp_diag = np.array([cs.nngp_feature_kernel(x[None], x[None], spec.nonlinearity, spec.depth,
                                               spec.w_var)[0, 0] for x in data.x_test])
  gp_mean, gp_var = cs.gp_predictor(k_gp_tr, k_gp_te, k_gp_diag, data.y_train,
                                    spec.readout_variance, beta)
  net_err = cs.per_class_errors(f_te_mean, f_te_var, data.y_test, data.labels_test, m)
  gp_err = cs.per_class_errors(gp_mean, m * gp_var, data.y_test, data.labels_test, m)
  sem = np.sqrt(f_te_var / m / max(n_tot - 1, 1)).mean()
  r = lg.rhat(np.stack(obs)) if n_s > 1 and a.shape[0] > 1 else np.array([np.nan])
  result = {
      "scheme": scheme,
      "statistics": avg,
      "criteria": cs.criteria(),
      "train": {"mse_of_samples": float(np.mean(mse_tr)),
                "mse_of_mean_predictor": float(((f_tr_mean - data.y_train) ** 2).sum(1).mean()),
                "class_error_of_mean_predictor":
                    float(np.mean(f_tr_mean.argmax(1) != data.labels_train))},
      "test": net_err,
      "gp": {"test": gp_err,
             "mean_predictor_rms_difference": float(np.sqrt(((f_te_mean - gp_mean) ** 2).mean())),
             "mean_predictor_rms_sem": float(sem)},
      "neural_collapse_nc1": float(np.mean(nc1)),
      "rhat_test_outputs": {"max": float(np.nanmax(r)), "median": float(np.nanmedian(r))},
      "n_samples": int(n_tot),
  }
  figs = {"a_last": np.asarray(samples["a"][-1, 0]), "a_all": np.asarray(samples["a"]),
          "feat_last": feat[0], "kernel": k_tr_sum / n_tot, "kernel_gp": k_gp_tr,
          "codes": avg["code_histogram"], "labels": data.labels_train,
          "f_te_mean": f_te_mean, "gp_mean": gp_mean}
  return result, figs


# ------------------------------------------------------------ figures

def write_figures(figdir: str, nl: str, fig: dict[str, Any]) -> list[str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  os.makedirs(figdir, exist_ok=True)
  out = []

  def save(f, name):
    path = os.path.join(figdir, f"{nl}_{name}.png")
    tmp = path + ".tmp.png"
    f.savefig(tmp, dpi=90, bbox_inches="tight")
    plt.close(f)
    os.replace(tmp, path)
    out.append(path)

  a = fig["a_all"].reshape(-1, fig["a_all"].shape[-1])
  m = a.shape[1]
  cols = min(m, 10)
  f, axes = plt.subplots(1, cols, figsize=(2.2 * cols, 2.2), squeeze=False)
  for k in range(cols):
    axes[0, k].hist(a[:, k], bins=60, color="C0", log=True)   # log counts: outliers visible
    axes[0, k].set_title(f"class {k}: a_ik", fontsize=8)
  f.suptitle(f"{nl}: readout weights, all posterior samples", y=1.08)
  save(f, "readouts")

  order = np.argsort(fig["labels"], kind="stable")
  feat = fig["feat_last"][order]
  top = np.argsort(-np.sqrt((feat ** 2).mean(0)) * np.linalg.norm(fig["a_last"], axis=1))[:20]
  f, ax = plt.subplots(figsize=(6, 3))
  ax.imshow(feat[:, top].T, aspect="auto", cmap="RdBu_r" if nl != "relu" else "viridis")
  ax.set_xlabel("training input (sorted by class)")
  ax.set_ylabel("neuron (top 20)")
  ax.set_title(f"{nl}: activations of the most active neurons (one sample)")
  save(f, "activations")

  f, axes = plt.subplots(1, 2, figsize=(8, 3.6))
  for ax, k, t in ((axes[0], fig["kernel"], "posterior-averaged kernel"),
                   (axes[1], fig["kernel_gp"], "NNGP kernel (lazy)")):
    im = ax.imshow(k[np.ix_(order, order)], cmap="viridis")
    ax.set_title(f"{nl}: {t}", fontsize=9)
    plt.colorbar(im, ax=ax, fraction=0.046)
  save(f, "kernels")

  codes = list(fig["codes"].items())[:16]
  f, ax = plt.subplots(figsize=(6, 2.8))
  ax.bar(range(len(codes)), [v for _, v in codes])
  ax.set_xticks(range(len(codes)), [c for c, _ in codes], rotation=90, fontsize=7)
  ax.set_ylabel("neurons (summed over samples)")
  ax.set_title(f"{nl}: coding scheme")
  save(f, "codes")
  return out


# ------------------------------------------------------------ run

def run(cfg, workdir: str, mesh=None) -> dict:
  """Runs the experiment holding its workdir (jaxcode.workdir): a rerun of a finished run
  is a no-op, a differing config or a second process is refused in one line."""
  return workdir_lib.run_owned(workdir, cfg, "coding_schemes", lambda: _run(cfg, workdir, mesh))


def _run(cfg, workdir: str, mesh=None) -> dict:
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
    result["figures"] = write_figures(os.path.join(workdir, "figures"), nl, figs)
    out["results"][nl] = result
  workdir_lib.write_json(os.path.join(workdir, "results.json"), out)
  return out
