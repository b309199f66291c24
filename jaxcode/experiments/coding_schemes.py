"""Coding schemes of wide Bayesian networks: sample, analyse, report (layer 4).

run(config, workdir) samples the weight posterior of the wide network of
models/wide.py by Langevin dynamics (train/langevin.py as the shared loop's
optax transformation), once per nonlinearity in config.nonlinearities, each in
workdir/<nonlinearity>/ (checkpoints, metrics.jsonl; rerunning resumes), then
analyses the stored samples (analysis/coding_schemes.py) and writes
workdir/results.json and workdir/figures/*.png (report/coding_schemes.py).

Beside the scheme statistics and the network-vs-GP errors per class, each
nonlinearity's result holds: `layers` (codes, NC1 and kernel-label alignment at every
hidden layer: sharpening with depth), `drift` (analysis/coding_schemes_drift.py:
identity-matched readout/code agreement within a chain by lag, between chains, and a
permuted-neuron null: drift and symmetry breaking), `theory` (analysis/coding_theory.py:
the self-consistent single-neuron theory, linear in closed form, erf by Monte Carlo,
beside the samples), and `signatures`, the three signatures in a few numbers (also
gathered at the top level of results.json). Bad input (data folders without images, a
network built for another input size: model.n_in) is refused in one line before any
sampling.
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
from jaxcode.analysis import coding_schemes_drift as drift_lib
from jaxcode.analysis import coding_theory as th
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
  t = cfg.theory
  for name in ("n_neurons", "outer", "inner"):
    if int(t[name]) < 2:
      raise ConfigError(f"theory.{name}={t[name]}: expected an integer >= 2")
  if not 0 < float(t.damping) <= 1:
    raise ConfigError(f"theory.damping={t.damping}: expected a value in (0, 1]")


def check_input_size(cfg, data) -> None:
  """model.n_in (0: any) against the data's input dimension, before any compute."""
  want, got = int(cfg.model.get("n_in", 0) or 0), int(data.x_train.shape[1])
  if want and want != got:
    side = int(round(math.sqrt(got)))
    size = f" ({side}x{side} images)" if side * side == got and data.name != "toy" else ""
    raise ConfigError(f"model.n_in={want}: the {data.name} inputs have {got} values{size}; "
                      f"expected model.n_in={got} (or 0 to take the data's size)")


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
  statistics, NC1, per-layer codes, drift summaries (code ids, contributions), and the sums
  the posterior means, variances and kernels (every layer) need."""
  m = data.n_classes
  fwd = jax.jit(lambda p, x: wide.apply_chains(spec, p, x))
  acc = {"stats": [], "nc1": [], "obs": [], "mse_tr": [], "layers": [], "ids": [], "contrib": [],
         "f_te": 0.0, "f2_te": 0.0, "f_tr": 0.0, "k_layers": 0.0, "n": 0}
  for s in range(jax.tree.leaves(samples)[0].shape[0]):
    p_s = jax.tree.map(lambda v: jnp.asarray(v[s]), samples)
    f_tr, h_tr = jax.device_get(fwd(p_s, data.x_train))
    f_te, _ = jax.device_get(fwd(p_s, data.x_test))
    hs = [np.asarray(h, np.float64) for h in h_tr]          # layers of C x P x N
    feat = hs[-1]
    a = np.asarray(p_s["a"])
    ids, con = [], []
    for c in range(a.shape[0]):
      acc["stats"].append(cs.scheme_statistics(a[c], feat[c], data.labels_train, m))
      acc["nc1"].append(cs.neural_collapse(feat[c], data.labels_train, m))
      acc["layers"].append([cs.layer_statistics(h[c], data.labels_train, m) for h in hs])
      ids.append(drift_lib.code_ids(*cs.codes(cs.class_responses(feat[c], data.labels_train, m))[::-1]))
      con.append(np.linalg.norm(a[c], axis=1) * np.sqrt((feat[c] ** 2).mean(0)))
    acc["ids"].append(ids)
    acc["contrib"].append(con)
    acc["f_te"] = acc["f_te"] + f_te.sum(0)
    acc["f2_te"] = acc["f2_te"] + (f_te ** 2).sum(0)
    acc["f_tr"] = acc["f_tr"] + f_tr.sum(0)
    acc["k_layers"] = acc["k_layers"] + np.stack(
        [np.einsum("cpn,cqn->pq", h, h) / h.shape[2] for h in hs])
    acc["mse_tr"].append(((f_tr - data.y_train[None]) ** 2).sum(2).mean(1))
    acc["obs"].append(f_te[:, :n_rhat_inputs].reshape(f_te.shape[0], -1))
    acc["n"] += a.shape[0]
  acc["feat_last"], acc["chains"] = feat[0], a.shape[0]
  acc["k_tr"] = acc["k_layers"][-1]
  return acc


def theory_kernel(spec, data, k_layers_LPP: np.ndarray) -> np.ndarray:
  """The prior kernel of the feature layer's pre-activations: w_var x.x'/N0 for one hidden
  layer; for deeper nets w_var times the sampled posterior-averaged kernel of layer L-1
  (the theory's K_{L-1}, taken from the samples rather than solved for)."""
  if spec.depth == 1:
    x = np.asarray(data.x_train, np.float64)
    return spec.w_var * x @ x.T / x.shape[1]
  return spec.w_var * k_layers_LPP[-2]


def theory(spec, data, cfg, samples, k_layers_LPP: np.ndarray, beta: float) -> dict | None:
  """The self-consistent single-neuron theory beside the samples (None for ReLU, whose
  outlier theory is not implemented)."""
  tc = cfg.theory
  if not tc.enabled or spec.nonlinearity not in th.THEORY_NONLINEARITIES:
    return None
  k = theory_kernel(spec, data, k_layers_LPP)
  b, s_a = beta / spec.width, spec.readout_variance
  if spec.nonlinearity == "linear":
    sol = th.linear_theory(k, data.y_train, s_a, b)
    method = "closed form (Gaussian single-neuron posterior)"
  else:
    sol = th.solve(k, data.y_train, s_a, b, spec.nonlinearity, int(tc.n_neurons), int(tc.outer),
                   int(tc.inner), float(tc.damping), int(cfg.seed))
    method = "Monte Carlo self-consistency (Langevin on single neurons)"
  out = th.compare(sol, np.asarray(samples["a"]), np.asarray(k_layers_LPP[-1]))
  out["method"] = method
  out["b_beta_over_n"] = b
  out["train_mean_rms_error"] = float(np.sqrt(((sol["train_mean"] - data.y_train) ** 2).mean()))
  if "a_NM" in sol:
    st = cs.scheme_statistics(sol["a_NM"], sol["phi_PN"], data.labels_train, data.n_classes)
    out["statistics"] = {k: st[k] for k in cs.NUMERIC_STATS} | {
        "code_histogram": st["code_histogram"]}
    out["scheme"] = cs.classify(st)
    out["a_theory"] = sol["a_NM"]
  else:
    out["a_theory"] = np.random.default_rng(0).multivariate_normal(
        np.zeros(data.n_classes), sol["U"], size=4096)
    out["scheme"] = "analog"
    out["statistics"] = {"discreteness": cs.discreteness(out["a_theory"])}
  return out


def _gp_comparison(spec, data, beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(NNGP train kernel, GP posterior mean and variance on the test inputs)."""
  kern = lambda x1, x2: cs.nngp_feature_kernel(x1, x2, spec.nonlinearity, spec.depth, spec.w_var)
  k_gp_tr = kern(data.x_train, data.x_train)
  k_gp_diag = np.array([kern(x[None], x[None])[0, 0] for x in data.x_test])
  gp_mean, gp_var = cs.gp_predictor(k_gp_tr, kern(data.x_test, data.x_train), k_gp_diag,
                                    data.y_train, spec.readout_variance, beta)
  return k_gp_tr, gp_mean, gp_var


def analyse(spec, data, samples, beta: float, n_rhat_inputs: int = 8,
            cfg=None) -> tuple[dict, dict]:
  """Statistics, errors, the GP comparison, drift and symmetry breaking, per-layer codes and
  (cfg.theory) the single-neuron theory from samples with leading axes (S, C); returns
  (numbers for results.json, figure data for jaxcode.report.coding_schemes)."""
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
      "layers": cs.average_layers(acc["layers"]),
      "drift": drift_lib.drift(np.asarray(samples["a"]), np.asarray(acc["ids"]),
                               np.asarray(acc["contrib"])),
  }
  theo = theory(spec, data, cfg, samples, acc["k_layers"] / n_tot, beta) if cfg else None
  if theo is not None:
    a_theory = theo.pop("a_theory")
    result["theory"] = theo
  result["signatures"] = signatures(result)
  figs = {"a_theory": None if theo is None else a_theory, "layers": result["layers"],
          "drift": result["drift"], "a_last": np.asarray(samples["a"][-1, 0]), "a_all": np.asarray(samples["a"]),
          "feat_last": acc["feat_last"], "kernel": acc["k_tr"] / n_tot, "kernel_gp": k_gp_tr,
          "codes": avg["code_histogram"], "labels": data.labels_train,
          "f_te_mean": f_te_mean, "gp_mean": gp_mean}
  return result, figs


def signatures(result: dict) -> dict:
  """The three signatures in a few numbers: the scheme (sampled and theory), drift (within
  a chain at lag 1 against between chains) and sharpening (kernel alignment by layer)."""
  st, d = result["statistics"], result["drift"]
  lag1 = d["within_chain_by_lag"][0] if d["within_chain_by_lag"] else {}
  theo = result.get("theory")
  return {"scheme": result["scheme"], "theory_scheme": theo["scheme"] if theo else None,
          "discreteness": st["discreteness"],
          "theory_discreteness": theo["statistics"]["discreteness"] if theo else None,
          "coding_fraction": st["coding_fraction"], "participation": st["participation"],
          "readout_second_moment_sampled_vs_theory":
              [theo["readout_second_moment_sampled"], theo["readout_second_moment_theory"]]
              if theo else None,
          "within_chain_lag1_readout_corr": lag1.get("readout_corr"),
          "within_chain_lag1_code_agreement": lag1.get("code_agreement"),
          "between_chain_readout_corr": d["between_chains"]["readout_corr"],
          "between_chain_scheme_overlap": d["between_chains"]["scheme_overlap"],
          "kernel_alignment_by_layer": [l["kernel_alignment"] for l in result["layers"]],
          "coding_fraction_by_layer": [l["coding_fraction"] for l in result["layers"]],
          "test_gen_error_network_vs_gp": [result["test"]["gen_error_mean"],
                                           result["gp"]["test"]["gen_error_mean"]]}


# ------------------------------------------------------------ run

def run(cfg, workdir: str, mesh=None) -> dict:
  """Runs the experiment holding its workdir (jaxcode.workdir): a rerun of a finished run
  is a no-op, a differing config or a second process is refused in one line."""
  return workdir_lib.run_owned(workdir, cfg, "coding_schemes", lambda: _run(cfg, workdir, mesh))


def _run(cfg, workdir: str, mesh=None) -> dict:
  from jaxcode.report import coding_schemes as report
  validate(cfg)
  data = tasks.task_from_config(cfg.data)
  check_input_size(cfg, data)
  specs = {nl: wide.spec_from_config(cfg.model, data.x_train.shape[1], data.n_classes,
                                     data.x_train.shape[0], nl) for nl in cfg.nonlinearities}
  checks = validate_step_sizes(specs, data, cfg)
  workdir_lib.check_workdir(workdir)
  out = {"task": data.name, "n_train": int(data.x_train.shape[0]),
         "n_test": int(data.x_test.shape[0]), "n_classes": data.n_classes, "results": {}}
  for nl, spec in specs.items():
    samples, metrics, check = sample(spec, data, cfg, nl, os.path.join(workdir, nl), mesh,
                                     checks[nl])
    result, figs = analyse(spec, data, samples, float(cfg.sampling.beta), cfg=cfg)
    result["step_size"] = step_size(cfg, nl)
    result["eta_lambda_max_at_prior_draw"] = check
    result["final_train_mse_per_chain"] = np.asarray(metrics.get("train_mse", [])).tolist()
    result["readout_prior_variance"] = spec.readout_variance
    result["figures"] = report.write_all({nl: figs}, os.path.join(workdir, "figures"))
    out["results"][nl] = result
  out["signatures"] = {nl: r["signatures"] for nl, r in out["results"].items()}
  workdir_lib.write_json(os.path.join(workdir, "results.json"), out)
  return out
