"""Toy models of superposition: a sweep of instances trained at once, analysed, plotted.

run(config, workdir) writes workdir/{config.json, metrics.jsonl, checkpoints/,
results.json, figures/*.png}; rerunning resumes from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxcode import parallel
from jaxcode.analysis import superposition as sup
from jaxcode.data import sparse_features
from jaxcode import workdir as workdir_lib
from jaxcode.models import toy
from jaxcode.errors import ConfigError
from jaxcode.train import checkpoint as ckpt_lib
from jaxcode.train import loop

MODELS = toy.KINDS   # linear, relu (Elhage et al.), hidden_relu (the post's model)
IMPORTANCE = ("linear", "uniform", "geometric")


@dataclasses.dataclass
class Instances:
  """Per-instance settings; the first `n_real` are the requested ones, the rest padding."""
  model: list[str]
  sparsity: np.ndarray        # [I]
  importance: np.ndarray      # [I, n]
  relative_importance: np.ndarray  # [I] (phase variant: importance of feature 2; else 1)
  seed: list[int]
  n_real: int


def importance_vector(tc) -> np.ndarray:
  n = int(tc.n)
  if tc.importance == "uniform":
    return np.ones(n)
  if tc.importance == "geometric":
    return float(tc.importance_decay) ** np.arange(n)
  return np.linspace(float(tc.importance_max), float(tc.importance_min), n)


def _number(v) -> float:
  """v as a float; NaN (which fails every range check) when it is not a number."""
  try:
    return float(v)
  except (TypeError, ValueError):
    return float("nan")


def validate(config, workdir: str) -> tuple[int, int]:
  """Checks everything that can be checked before compute; returns the mesh sizes."""
  tc = config.toy
  for name in ("n", "m", "batch", "seeds"):
    v = tc[name]
    if not isinstance(v, int) or v <= 0:
      raise ConfigError(f"toy.{name}={v!r}: expected a positive integer")
  if tc.importance not in IMPORTANCE:
    raise ConfigError(f"toy.importance={tc.importance!r}: expected one of {IMPORTANCE}")
  if not tc.sparsities:
    raise ConfigError("toy.sparsities=[]: expected at least one sparsity in [0, 1)")
  for s in tc.sparsities:
    if not 0.0 <= _number(s) < 1.0:
      raise ConfigError(f"toy.sparsities contains {s!r}: expected numbers in [0, 1)")
  for name in ("importance_max", "importance_min", "importance_decay"):
    if not 0.0 <= _number(tc[name]) < float("inf"):
      raise ConfigError(f"toy.{name}={tc[name]!r}: expected a finite number >= 0")
  for mdl in tc.models:
    if mdl not in MODELS:
      raise ConfigError(f"toy.models contains {mdl!r}: expected one of {MODELS}")
  if tc.relative_importance:
    if int(tc.n) != 2 or int(tc.m) != 1 or tuple(tc.models) != ("relu",):
      raise ConfigError(f"toy.n={tc.n}, toy.m={tc.m}, toy.models={list(tc.models)}: the phase "
                        f"diagram (relative_importance set) needs n=2, m=1, models=('relu',)")
    for r in tc.relative_importance:
      if not 0.0 < _number(r) < float("inf"):
        raise ConfigError(f"toy.relative_importance contains {r!r}: expected finite numbers > 0")
  if not 0.0 <= _number(tc.init_std) < float("inf"):
    raise ConfigError(f"toy.init_std={tc.init_std}: expected >= 0 (0 selects each model's own)")
  loop.validate_train_config(config)
  data, model = parallel.resolve_axis_sizes(config.mesh.data, config.mesh.model,
                                            jax.device_count())
  if tc.batch % data:
    raise ConfigError(f"toy.batch={tc.batch}: expected a multiple of the data axis size {data}")
  workdir_lib.check_workdir(workdir)
  ckpt_lib.check_directory(os.path.join(workdir, "checkpoints"))
  return data, model


def build_instances(tc, pad_to: int) -> Instances:
  base = importance_vector(tc)
  rel = [float(r) for r in tc.relative_importance] or [1.0]
  rows = list(itertools.product(list(tc.models), rel, [float(s) for s in tc.sparsities],
                                range(int(tc.seeds))))
  n_real = len(rows)
  while len(rows) % pad_to:
    rows.append(rows[-1])
  model, r_, s_, seed = zip(*rows)
  imp = np.stack([base * np.array([1.0] + [r] * (len(base) - 1)) if tc.relative_importance
                  else base for r in r_])
  return Instances(list(model), np.array(s_), imp, np.array(r_), list(seed), n_real)


def init_std(tc) -> float:
  """The notebook's xavier-normal std on the joint [L, n, m] tensor (L sparsity levels)."""
  if float(tc.init_std) > 0:
    return float(tc.init_std)
  n, m, levels = int(tc.n), int(tc.m), len(tc.sparsities)
  return float(np.sqrt(2.0 / (n * m + levels * m)))


def instance_stds(tc, inst: Instances) -> np.ndarray:
  """Std of W per instance: toy.init_std when set, else the notebook's xavier std for the
  Elhage et al. models and the post's sqrt(1/n) for hidden_relu."""
  elhage = init_std(tc)
  post = elhage if float(tc.init_std) > 0 else toy.post_init_std(int(tc.n))
  return np.array([post if k == "hidden_relu" else elhage for k in inst.model])


def make_task(config, inst: Instances, mesh) -> loop.Task:
  tc = config.toy
  model = toy.ToyModel(n=int(tc.n), m=int(tc.m), init_std=init_std(tc))
  num = len(inst.model)
  ids = jnp.arange(num, dtype=jnp.int32)
  x_sharding = NamedSharding(mesh, P(parallel.MODEL, parallel.DATA, None))

  def init(key):
    aux = {"importance": jnp.asarray(inst.importance, jnp.float32),
           "sparsity": jnp.asarray(inst.sparsity, jnp.float32),
           "relu": jnp.asarray([m != "linear" for m in inst.model]),       # output ReLU
           "hidden": jnp.asarray([m == "hidden_relu" for m in inst.model]),  # hidden ReLU
           "ids": ids}
    return toy.init_instances(model, key, ids, instance_stds(tc, inst)), aux

  def device_batch(key, step):
    sparsity = jnp.asarray(inst.sparsity, jnp.float32)
    x = sparse_features.sample_instances(key, ids, int(tc.batch), int(tc.n), sparsity)
    return jax.lax.with_sharding_constraint(x, x_sharding)

  def loss(params, aux, x, key, step):
    per = toy.weighted_mse(model, params, x, aux["importance"], aux["relu"], aux["hidden"])
    return per.sum(), ({"instance_loss": per}, aux)

  rules = [(r".*", P(parallel.MODEL))]   # every leaf's leading axis is the instance axis
  meta = {"n": int(tc.n), "m": int(tc.m), "instances": num,
          "sparsities": [float(s) for s in tc.sparsities], "models": list(tc.models)}
  return loop.Task(init=init, loss=loss, device_batch=device_batch, param_rules=rules,
                   aux_rules=rules, meta=meta)


def analyse(params, inst: Instances, phase: bool = False) -> list[dict]:
  """Per-instance records; for the phase diagram each also gets its exact expected loss."""
  host = parallel.to_host(params)
  w = np.asarray(host["W"], np.float64)
  b = np.asarray(host["b"], np.float64)
  out = []
  for i in range(inst.n_real):
    rec = {"model": inst.model[i], "sparsity": float(inst.sparsity[i]),
           "density": float(1.0 - inst.sparsity[i]),
           "importance": inst.importance[i].tolist(),
           "relative_importance": float(inst.relative_importance[i]), "seed": int(inst.seed[i])}
    rec.update(sup.summarize(w[i], b[i]))
    rec["wtw"] = sup.gram(w[i]).tolist()
    if phase:
      rec["expected_loss"] = sup.two_feature_loss(w[i][:, 0], b[i], rec["density"],
                                                  rec["relative_importance"])
    out.append(rec)
  return out


def phase_summary(records: list[dict], seed: int = 0) -> dict:
  """Per (density, relative importance) cell: the phase of the seed with the lowest exact
  expected loss, the theoretical phase (global minimum of the same loss), and the
  fraction of cells where they agree."""
  cells = {}
  for r in records:
    key = (r["density"], r["relative_importance"])
    if key not in cells or r["expected_loss"] < cells[key]["expected_loss"]:
      cells[key] = r
  rows = []
  for (dens, rel), r in sorted(cells.items()):
    theory = sup.two_feature_optimum(dens, rel, seed=seed)
    rows.append({"density": dens, "relative_importance": rel,
                 "phase": sup.phase_of(np.asarray(r["feature_norms"])[:, None]),
                 "phase_theory": theory["phase"], "loss": r["expected_loss"],
                 "loss_theory": theory["loss"], "seed": r["seed"]})
  agree = [c["phase"] == c["phase_theory"] for c in rows]
  return {"cells": rows, "agreement": float(np.mean(agree)), "n_cells": len(rows),
          "seeds_per_cell": len(records) // max(1, len(rows))}


def summary(instances: list[dict]) -> dict:
  """Headline numbers per model kind: D* per sparsity, plateaus, represented features."""
  out = {}
  for kind in MODELS:
    rows = sorted((r for r in instances if r["model"] == kind), key=lambda r: r["sparsity"])
    if not rows:
      continue
    dims = np.concatenate([r["feature_dimensionality"] for r in rows])
    out[kind] = {
        "inverse_density": [1.0 / r["density"] for r in rows],
        "dims_per_feature": [r["dims_per_feature"] for r in rows],
        "n_represented": [r["n_represented"] for r in rows],
        "max_offdiag_represented": [r["max_offdiag_represented"] for r in rows],
        "fraction_counts": sup.fraction_counts(dims),
        "histogram_peaks": sup.histogram_peaks(dims),
    }
  return out


POST_METRICS = {   # name: what it measures, per (model, sparsity), mean over seeds
    "loss": "final training loss of the instance (importance-weighted MSE, last step)",
    "n_represented": "features with ||W_i|| > 0.5",
    "frobenius_sq": "||W||_F^2 (about the number of features learned)",
    "dims_per_feature": "D* = m / ||W||_F^2",
    "superposition_represented": "mean over represented features of sum_{j!=i} (W_i_hat . W_j)^2",
    "max_offdiag_represented": "largest |W_i . W_j| between represented features",
    "neuron_share_represented": "mean over represented features of max_j W_ij^2 / ||W_i||^2",
    "bias_represented": "mean b_i over represented features",
    "bias_unrepresented": "mean b_i over the other features",
}


def _post_row(rec: dict, loss: float) -> dict:
  rep = np.asarray(rec["feature_norms"]) > 0.5
  mean = lambda key, mask: (float(np.mean(np.asarray(rec[key])[mask])) if mask.any()
                            else None)
  return {"loss": loss, "n_represented": rec["n_represented"],
          "frobenius_sq": rec["frobenius_sq"], "dims_per_feature": rec["dims_per_feature"],
          "superposition_represented": mean("superposition", rep),
          "max_offdiag_represented": rec["max_offdiag_represented"],
          "neuron_share_represented": mean("neuron_share", rep),
          "bias_represented": mean("bias", rep), "bias_unrepresented": mean("bias", ~rep)}


def post_summary(records: list[dict], losses) -> dict:
  """The post's comparison: POST_METRICS per model kind and sparsity (means over seeds,
  None where no seed had a represented feature), and hidden_relu minus relu per metric."""
  sparsities = sorted({r["sparsity"] for r in records})
  models = {}
  for kind in MODELS:
    per_s = []
    for s in sparsities:
      rows = [_post_row(r, float(l)) for r, l in zip(records, losses)
              if r["model"] == kind and r["sparsity"] == s]
      per_s.append({k: _mean_or_none([row[k] for row in rows]) for k in POST_METRICS}
                   if rows else None)
    if any(per_s):
      models[kind] = {k: [row[k] if row else None for row in per_s] for k in POST_METRICS}
  out = {"sparsities": sparsities, "models": models, "metrics": POST_METRICS}
  if "hidden_relu" in models and "relu" in models:
    hid, rel = models["hidden_relu"], models["relu"]
    out["hidden_relu_minus_relu"] = {
        k: [None if a is None or b is None else a - b for a, b in zip(hid[k], rel[k])]
        for k in POST_METRICS}
  return out


def _mean_or_none(values):
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def run(config, workdir: str, mesh=None) -> dict:
  """Trains the configured sweep in `workdir` (resuming) and writes results and figures.

  `mesh` overrides config.mesh (tests use it to run on a subset of the devices).
  """
  parallel.maybe_initialize_from_config(config.distributed)
  if mesh is None:
    validate(config, workdir)
    mesh = parallel.mesh_from_config(config.mesh)
  return workdir_lib.run_owned(workdir, config, "superposition",
                          lambda: _train_and_analyse(config, workdir, mesh))


def _train_and_analyse(config, workdir: str, mesh) -> dict:
  model_axis = mesh.shape[parallel.MODEL]
  inst = build_instances(config.toy, pad_to=model_axis)
  task = make_task(config, inst, mesh)
  result = loop.train(task, config, workdir, mesh=mesh)
  phase = bool(config.toy.relative_importance)
  records = analyse(result.state.params, inst, phase)
  out = {"experiment": "superposition", "variant": config.get("variant", ""),
         "n": int(config.toy.n), "m": int(config.toy.m), "steps": int(config.steps),
         # float64: a resumed run's last metrics come back from JSON as float64, and a float32
         # sum's rounding depends on the CPU's SIMD width; the float64 sum of the same values
         # is the same on both paths
         "final_loss": float(np.sum(np.asarray(result.metrics["instance_loss"],
                                               np.float64)[:inst.n_real])),
         "device_count": jax.device_count(), "process_count": jax.process_count(),
         "instances": records, "summary": summary(records)}
  if "hidden_relu" in config.toy.models:
    out["post"] = post_summary(records, np.asarray(result.metrics["instance_loss"],
                                                   np.float64)[:inst.n_real])
  if parallel.is_main_process():
    if phase:   # the theory solves every cell once, on the process that writes the results
      out["phase"] = phase_summary(records, int(config.seed))
    from jaxcode.report import superposition as figs
    out["figures"] = figs.write_all(records, os.path.join(workdir, "figures"),
                                    phase=out.get("phase"), post=out.get("post"))
    workdir_lib.write_json(os.path.join(workdir, "results.json"), out)
  return out
