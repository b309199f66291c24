"""SAEBench-compatible evaluations of one or more dictionaries (configs/evaluate.py).

run(config, workdir) checks everything first (the model, the eval names against what the model
can run, each dictionary and its width against the hookpoint, the settings, the probing tasks'
labels; one line per bad value, nothing written), then:

  sae/                          only with sae='': a TopK SAE trained on the hookpoint
  <eval_type_id>/<release>_<sae id>_eval_results.json   one SAEBench JSON per dictionary and
                                eval (pipeline.evals.run_evals; each skipped when it exists)
  evals.html                    every dictionary evaluated in the workdir (report.evaluate)
  results.json
"""

from __future__ import annotations

import os
import re
import sys
import time

from jaxcode import parallel
from jaxcode import workdir as workdir_lib
from jaxcode.analysis import saebench
from jaxcode.errors import ConfigError
from jaxcode.models import sae_formats, sae_io
from jaxcode.pipeline import cache as cache_lib
from jaxcode.pipeline import evals as evals_stage
from jaxcode.pipeline import model as model_lib
from jaxcode.pipeline import sae as sae_stage

TRAINED = os.path.join("sae", "export", "sae")


def _log(config, msg: str) -> None:
  if config.progress:
    print(f"evaluate: {msg}", file=sys.stderr, flush=True)


def _paths(config) -> list[str]:
  return [os.path.expanduser(p.strip()) for p in str(config.sae).split(",") if p.strip()]


def sae_id(path: str) -> str:
  """A dictionary's id in file names: its folder (or file stem) and parent, '/' -> '_'."""
  path = os.path.normpath(os.path.abspath(path))
  parts = [p for p in path.split(os.sep)[-2:] if p]
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(parts))


def evals_for(config, lm) -> tuple[str, ...]:
  """config.evals resolved: 'all' is every offered eval the model supports."""
  return evals_stage.resolve_names(str(config.evals), lm)


def validate(config, workdir: str | None) -> dict:
  """Every check before compute; returns the plan."""
  if str(config.evals).strip() != "all":
    saebench.check_eval_names(config.evals)      # before the model loads
  spec = model_lib.resolve(config.model, config.revision)
  lm = model_lib.load(spec)
  evals = evals_for(config, lm)
  tasks = evals_stage.check(config, lm, evals, spec.name)
  saes = [(p, sae_formats.load_dictionary(p)) for p in _paths(config)]
  hookpoint = sae_stage.own_hookpoint(config.hookpoint, saes[0][1] if saes else None)
  if hookpoint not in lm.hookpoint_names():
    raise ConfigError(f"hookpoint {hookpoint!r}: the {lm.model_type} model has no such "
                      "hookpoint")
  for p, sae in saes:
    sae_io.check_width(sae, lm.hookpoint_width(hookpoint), hookpoint)
  if not saes:
    sae_stage.validate_settings(config.train, "train.")
  packed = cache_lib.load_packed(config.data, lm.tokenizer)
  if workdir is not None:
    workdir_lib.check_workdir(workdir)
  return dict(spec=spec, lm=lm, evals=evals, tasks=tasks, saes=saes, hookpoint=hookpoint,
              packed=packed)


def run(config, workdir: str, mesh=None) -> dict:
  """Checks, then runs (or finishes) the evaluations holding the workdir: a rerun of a
  finished run is a no-op."""
  parallel.maybe_initialize_from_config(config.distributed)
  plan = validate(config, workdir)
  mesh = mesh if mesh is not None else parallel.mesh_from_config(config.mesh)
  return workdir_lib.run_owned(workdir, config, "evaluate",
                               lambda: _run(config, workdir, plan, mesh))


def _train(config, workdir: str, plan: dict, mesh):
  t0 = time.time()
  path, res = sae_stage.train_on_lm(config.train, os.path.join(workdir, "sae"), plan["lm"],
                                    plan["packed"], plan["hookpoint"], mesh)
  _log(config, f"sae: {res['steps']} steps, L0 {res['l0']:.1f}, explained variance "
               f"{res['explained_variance']:.3f} ({time.time() - t0:.0f} s)")
  return path, sae_formats.load_dictionary(path)


def _run(config, workdir: str, plan: dict, mesh) -> dict:
  from jaxcode.report import evaluate as report
  t0 = time.time()
  saes = plan["saes"] or [_train(config, workdir, plan, mesh)]
  files = {}
  for path, sae in saes:
    sid = "trained_sae" if path == os.path.join(workdir, TRAINED) else sae_id(path)
    _log(config, f"{sid}: {', '.join(plan['evals'])} at {plan['hookpoint']}")
    got = evals_stage.run_evals(plan["lm"], sae, plan["hookpoint"], plan["packed"],
                                plan["evals"], workdir, config, sid, plan["spec"].name,
                                tasks=plan["tasks"], log=lambda m: _log(config, m))
    files[sid] = {k: os.path.relpath(v, workdir) for k, v in got.items()}
  results = {"experiment": "evaluate", "variant": config.variant, "model": plan["spec"].name,
             "hookpoint": plan["hookpoint"], "evals": list(plan["evals"]), "files": files,
             "not_offered": saebench.NOT_OFFERED,
             "not_implemented": saebench.NOT_IMPLEMENTED}
  if parallel.is_main_process():
    results["page"] = os.path.relpath(report.write_page(workdir), workdir)
    results["summary"] = report.summary_rows(workdir)
    results["seconds_this_invocation"] = time.time() - t0
    workdir_lib.write_json(os.path.join(workdir, "results.json"), results)
  _log(config, f"-> {os.path.join(workdir, 'evals.html')}")
  return results
