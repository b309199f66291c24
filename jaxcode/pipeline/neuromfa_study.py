"""Stages of the NeuroMFA study (launch.neuromfa_study): train a decoder LM to log-spaced
checkpoints and measure it at each; spectra per network-sampling seed; real checkpoints.

`lm_run(cfg, data, folder, mesh, start=None)` trains cfg's model (jaxcode.pipeline.
neuromfa_study_lm, the shared loop; orbax checkpoints under folder/checkpoints, resumed)
and runs the stage folder/analysis: at step 0 and every saved step the held-out evaluation
(jaxcode.analysis.neuromfa_study.evaluator) and the NeuroMFA spectrum with its null per
sampling seed (seed_spectra). `start` (params) fine-tunes from them instead of a fresh init;
the analysed series then begins with `series_head` (e.g. the init the fine-tuned run grew
from, so E(t) keeps its reference). Its result (a "family point" when cfg is a family size):
  name, params_nonembed, params_total, steps [t], eval {loss, acc, cloze_code, cloze_prose,
  task_acc: [t]}, train_loss [t], per_seed {alpha0, width, emergence, null_*: [seed][t]},
  spectra [t] (first seed's alpha, f, null_alpha, null_f), wall_s.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

import jax
import ml_collections
import numpy as np

from jaxcode import parallel
from jaxcode.analysis import neuromfa_study as study
from jaxcode.pipeline import neuromfa as nmfa_stage
from jaxcode.pipeline import neuromfa_study_lm as lm
from jaxcode.pipeline import stage
from jaxcode.train import optim


def log(msg: str) -> None:
  """One progress line on stderr (main process only)."""
  if parallel.is_main_process():
    print(f"neuromfa_study: {msg}", file=sys.stderr, flush=True)


KEYS = ("alpha0", "width", "emergence", "null_alpha0", "null_width", "null_emergence")


def member_config(config, i: int) -> ml_collections.ConfigDict:
  """The config of family member i: the study's fields with `model` set to its size."""
  c = ml_collections.ConfigDict(config.to_dict())
  f = config.family
  c.model = ml_collections.ConfigDict(dict(
      d_model=int(f.d_model[i]), n_layers=int(f.n_layers[i]), n_heads=int(f.n_heads[i]),
      d_mlp=int(f.d_mlp[i]), init_std=float(f.init_std)))
  c.name = f"size{i}_d{f.d_model[i]}_l{f.n_layers[i]}"
  c.params_nonembed = int(f.params_nonembed[i])
  return c


def seed_spectra(block, labelled, kw: dict) -> dict:
  """The NeuroMFA stage's analysis once per sampling seed (each with its own null seed):
  per_seed {KEYS: [seed][t]} and the first seed's spectra per checkpoint."""
  per_seed = {k: [] for k in KEYS}
  first = None
  for j, s in enumerate(block.seeds):
    log(f"  spectra, sampling seed {j + 1}/{len(block.seeds)}: {len(labelled)} checkpoints "
        "and their nulls")
    b = ml_collections.ConfigDict(block.to_dict())
    b.seeds, b.null_seed = (int(s),), int(block.null_seed) + 7919 * j
    out = nmfa_stage.analyse(b, labelled, kw)
    for k in KEYS:
      per_seed[k].append([r[k] for r in out["checkpoints"]])
    first = first or out
  spectra = [{k: r[k] for k in ("alpha", "f", "null_alpha", "null_f")} for r in first["checkpoints"]]
  return {"per_seed": per_seed, "spectra": spectra, "fit_window": first["fit_window"]}


def _params_total(params) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def lm_run(cfg, data: dict, folder: str, mesh, start=None, series_head=(), lr=None) -> dict:
  """Trains (or fine-tunes from `start`) and analyses one run; see the module doc."""
  t0 = time.time()
  steps = lm.checkpoint_steps(cfg)
  module, _ = lm.make_module(cfg, data["vocab"])
  tx = optim.make_optimizer(cfg.optim, int(cfg.steps))
  task = lm.make_task(cfg, module, data, tx)
  if start is not None:
    task = dataclasses.replace(task, init=lambda k: (start, {}))
  live = lm.train_segments(cfg, task, folder, steps, mesh)

  def work() -> dict:
    log(f"{os.path.basename(folder)}: held-out evaluation and spectra of each checkpoint")
    logged = lm.logged_losses(folder)
    params0 = start if start is not None else jax.jit(
        lambda k: lm.init_params(module, k, float(cfg.model.init_std)))(
            jax.random.PRNGKey(int(cfg.seed)))
    series = [("step0", jax.tree.map(np.asarray, params0))]
    series += [(f"step{s}", nmfa_stage.orbax_params(folder, s)) for s in steps]
    labelled = list(series_head) + series
    evaluate = study.evaluator(module, data)
    evals = [evaluate(p) for _, p in labelled]
    out = {"name": cfg.get("name", os.path.basename(folder)),
           "params_nonembed": int(cfg.get("params_nonembed", 0)),
           "params_total": _params_total(series[0][1]),
           "labels": [lab for lab, _ in labelled],
           "steps": [None] * len(series_head) + [0] + steps,
           "eval": {k: [e[k] for e in evals] for k in evals[0]},
           "train_loss": [None] * (len(series_head) + 1) + [live.get(s, logged.get(s))
                                                             for s in steps],
           **seed_spectra(cfg.neuromfa, labelled, nmfa_stage.validate(cfg.neuromfa))}
    out["wall_s"] = round(time.time() - t0, 1)
    return out
  return stage.run_stage("analysis", os.path.join(folder, "analysis"), work)


def last_params(folder: str, cfg):
  """The params of a run's last saved step."""
  return nmfa_stage.orbax_params(folder, lm.checkpoint_steps(cfg)[-1])


def real_checkpoints(block, specs, folder: str) -> dict:
  """folder/results.json: per real model (one series each) the per-seed spectra and nulls."""
  def work() -> dict:
    t0 = time.time()
    models = []
    for spec in specs:
      log(f"real checkpoint {spec}")
      labelled = nmfa_stage.load_checkpoints([spec])
      out = seed_spectra(block, labelled, nmfa_stage.validate(block))
      models.append({"spec": spec, "label": labelled[0][0], **out})
    return {"models": models, "wall_s": round(time.time() - t0, 1)}
  return stage.run_stage("real", folder, work)
