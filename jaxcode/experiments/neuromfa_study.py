"""NeuroMFA's claims tested in miniature offline (issue 21): a GPT-2 family, its spectra,
verdicts computed from the data, one HTML page.

run(config, workdir): checks everything before compute; builds the study data (the offline
corpus split by document, held-out cloze tasks: jaxcode.pipeline.neuromfa_study_data);
trains and analyses the family members the claims need (workdir/family/<name>/, each a
resumable run plus its analysis stage: jaxcode.pipeline.neuromfa_study); runs each claim of
config.claims from the CLAIMS registry; compares real checkpoints (config.real) with the
family; writes workdir/{results.json (a `claims` entry per claim with its verdict), figures/,
report.html}. Rerunning resumes; a finished run is a no-op.

Adding a claim is one line in CLAIMS: name -> (fn(config, workdir, ctx) -> claim dict,
members), members 'all' (the whole family) or 'claim5' (family.claim5_size only); ctx holds
'family' (the family points, in size order), 'data' and 'mesh'.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np

from jaxcode import parallel
from jaxcode import workdir as workdir_lib
from jaxcode.analysis import neuromfa as nm
from jaxcode.analysis import neuromfa_study as study
from jaxcode.analysis import neuromfa_vision as vision
from jaxcode.errors import ConfigError, positive_int
from jaxcode.pipeline import neuromfa as nmfa_stage
from jaxcode.pipeline import neuromfa_study as stages
from jaxcode.pipeline import neuromfa_study_data as sdata
from jaxcode.pipeline import neuromfa_study_lm as lm
from jaxcode.train import loop


def _mean(per_seed_KT) -> np.ndarray:
  return np.asarray(per_seed_KT, np.float64).mean(0)


def claim1(config, workdir, ctx) -> dict:
  sizes = []
  for pt in ctx["family"]:
    p = pt["per_seed"]
    left, widen = study.shift_excess(p["alpha0"], p["width"], p["null_alpha0"], p["null_width"])
    sizes.append({"name": pt["name"], "params": pt["params_nonembed"], "left": left.tolist(),
                  "widen": widen.tolist()})
  return study.claim1(sizes, float(config.z))


def claim2(config, workdir, ctx) -> dict:
  boot = lambda x, y, yn: study.spearman_boot(x, y, int(config.n_boot), int(config.boot_seed), yn)
  per, xs, ys, ns = [], [], [], []
  for pt in ctx["family"]:
    acc, e, en = (np.asarray(pt["eval"]["task_acc"]), _mean(pt["per_seed"]["emergence"]),
                  _mean(pt["per_seed"]["null_emergence"]))
    per.append({"name": pt["name"], **boot(acc, e, en)})
    xs.append(acc), ys.append(e), ns.append(en)
  out = study.claim2(boot(np.concatenate(xs), np.concatenate(ys), np.concatenate(ns)), per)
  out["number"]["pooled_per_task"] = {   # each task alone (task_acc is their mean)
      task: boot(np.concatenate([pt["eval"][task] for pt in ctx["family"]]), np.concatenate(ys),
                 np.concatenate(ns)) for task in ("cloze_code", "cloze_prose", "acc")}
  return out


def claim3(config, workdir, ctx) -> dict:
  fam = ctx["family"]
  params = [pt["params_nonembed"] for pt in fam]
  e_last = [np.asarray(pt["per_seed"]["emergence"])[:, -1] for pt in fam]
  excess = [e - np.asarray(pt["per_seed"]["null_emergence"])[:, -1] for e, pt in zip(e_last, fam)]
  fit = study.logfit_boot(params, e_last, int(config.n_boot), int(config.boot_seed))
  return study.claim3(fit, study.threshold(params, excess, float(config.z)))


def _finetune_config(cfg, c5):
  f = ml_collections.ConfigDict(cfg.to_dict())
  f.steps, f.checkpoint_steps = int(c5.finetune_steps), ()
  f.optim.lr, f.optim.schedule, f.optim.warmup_steps = float(c5.finetune_lr), "constant", 0
  return f


def claim5(config, workdir, ctx) -> dict:
  """Same member on the duplicated corpus; a token-shuffled fine-tune of its clean run."""
  i, c5, data, mesh = int(config.family.claim5_size), config.claim5, ctx["data"], ctx["mesh"]
  cfg = stages.member_config(config, i)
  clean = next(pt for pt in ctx["family"] if pt["name"] == cfg.name)
  tr, mk = sdata.degrade(data["train"], data["train_mask"], float(c5.dup_fraction),
                         int(c5.dup_copies), int(config.seed))
  dup = stages.lm_run(cfg, {**data, "train": tr, "train_mask": mk},
                      os.path.join(workdir, "claim5", "duplicated"), mesh)
  clean_dir = os.path.join(workdir, "family", cfg.name)
  module, _ = lm.make_module(cfg, data["vocab"])
  p0 = jax.tree.map(np.asarray, lm.init_params(module, jax.random.PRNGKey(int(cfg.seed)),
                                                float(cfg.model.init_std)))
  shuffled = sdata.shuffle_tokens(data["train"], data["train_mask"], int(c5.shuffle_seed))
  ft = stages.lm_run(_finetune_config(cfg, c5), {**data, "train": shuffled},
                     os.path.join(workdir, "claim5", "finetune"), mesh,
                     start=stages.last_params(clean_dir, cfg), series_head=[("init", p0)])
  dd = (np.asarray(clean["per_seed"]["emergence"])[:, -1]
        - np.asarray(dup["per_seed"]["emergence"])[:, -1])
  e_ft = np.asarray(ft["per_seed"]["emergence"])
  acc = ft["eval"]["task_acc"]
  out = study.claim5(dd, e_ft[:, -1] - e_ft[:, 1], acc[-1] - acc[1], float(config.z))
  out["duplicated"], out["finetune"] = dup, ft
  return out


def claim4(config, workdir, ctx) -> dict:
  """A ResNet and a denoiser at the family's non-embedding parameter counts
  (jaxcode.analysis.neuromfa_vision), against each member's E and null E at its last
  checkpoint (means over network samples)."""
  last = lambda pt, key: float(np.mean(np.asarray(pt["per_seed"][key])[:, -1]))
  points = [{"params": int(pt["params_nonembed"]), "E": last(pt, "emergence"),
             "E_null": last(pt, "null_emergence")} for pt in ctx["family"]]
  out = vision.claim4(config.claim4, workdir, points)
  return {**out, "direction": "transformers self-organise more (larger E) than CNNs and "
          "diffusion models", "figures": [os.path.join(workdir, out["figure"])]}


CLAIMS = {   # name: (fn(config, workdir, ctx) -> claim dict, family members it needs)
    "claim1": (claim1, "all"),
    "claim2": (claim2, "all"),
    "claim3": (claim3, "all"),
    "claim4": (claim4, "all"),
    "claim5": (claim5, "claim5"),
}


PROGRESS_HINT = {   # what a claim computes beyond the family (progress lines)
    "claim4": "a ResNet and a denoiser per matched size and training seed, then spectra",
    "claim5": "the duplicated-corpus twin and the contaminated fine-tune, then spectra",
}


def selected_claims(config) -> list[str]:
  names = list(config.claims)
  if names == ["all"]:
    return list(CLAIMS)
  bad = [n for n in names if n not in CLAIMS]
  if bad or not names:
    raise ConfigError(f"claims={tuple(names)}: unknown claim {bad[0] if bad else '(none)'!r}, "
                      f"expected names of {', '.join(CLAIMS)} or ('all',)")
  return names


def _check_family(f, S: int) -> None:
  n = len(f.d_model)
  for name in ("n_layers", "n_heads", "d_mlp", "params_nonembed"):
    if len(f[name]) != n:
      raise ConfigError(f"family.{name} has {len(f[name])} entries: expected {n}, one per "
                        f"family.d_model entry")
  sizes = [int(v) for v in f.params_nonembed]
  if n < 1 or any(b <= a for a, b in zip(sizes, sizes[1:])):
    raise ConfigError(f"family.params_nonembed={tuple(sizes)}: expected a strictly increasing "
                      f"size list")
  for i in range(n):
    d, L, h, m = (int(f[k][i]) for k in ("d_model", "n_layers", "n_heads", "d_mlp"))
    for k, v in (("d_model", d), ("n_layers", L), ("n_heads", h), ("d_mlp", m)):
      positive_int(f"family.{k}[{i}]", v)
    if d % h:
      raise ConfigError(f"family.d_model[{i}]={d}: expected a multiple of n_heads={h}")
    want = study.gpt2_nonembed_params(d, L, m)
    if sizes[i] != want:
      raise ConfigError(f"family.params_nonembed[{i}]={sizes[i]}: the closed form gives {want} "
                        f"for d_model {d}, n_layers {L}, d_mlp {m}")
    nm.lm_sample(d, m, 1, S, 0)                  # S fits every size
  if not 0 <= int(f.claim5_size) < n:
    raise ConfigError(f"family.claim5_size={f.claim5_size}: expected an index in 0..{n - 1}")


def validate(config, workdir: str) -> list[str]:
  """Every check before compute; returns the claims to run."""
  names = selected_claims(config)
  _check_family(config.family, int(config.neuromfa.S))
  loop.validate_train_config(config)
  beyond = [int(s) for s in config.checkpoint_steps if int(s) > int(config.steps)]
  if beyond:
    raise ConfigError(f"checkpoint_steps={tuple(config.checkpoint_steps)}: step {beyond[0]} "
                      f"beyond steps={config.steps}, expected steps in 1..{config.steps}")
  lm.checkpoint_steps(config)
  for name in ("seq_len", "batch", "eval_sequences", "cloze_items"):
    positive_int(f"data.{name}", config.data[name])
  if not 0 < float(config.data.heldout_fraction) < 1:
    raise ConfigError(f"data.heldout_fraction={config.data.heldout_fraction}: expected in (0, 1)")
  data, _ = parallel.resolve_axis_sizes(config.mesh.data, config.mesh.model, jax.device_count())
  if config.data.batch % data:
    raise ConfigError(f"data.batch={config.data.batch}: expected a multiple of the data axis "
                      f"size {data}")
  positive_int("claim5.finetune_steps", config.claim5.finetune_steps)
  positive_int("claim5.dup_copies", config.claim5.dup_copies)
  if not 0 < float(config.claim5.dup_fraction) < 1:
    raise ConfigError(f"claim5.dup_fraction={config.claim5.dup_fraction}: expected in (0, 1)")
  positive_int("n_boot", config.n_boot)
  nmfa_stage.validate(config.neuromfa)
  if "claim4" in names:
    vision.validate(config.claim4, config.family.params_nonembed)
  for spec in config.real.checkpoints:
    nmfa_stage.parse_spec(spec)
  workdir_lib.check_workdir(workdir)
  return names


def run(config, workdir: str, mesh=None) -> dict:
  """Runs the study holding its workdir (jaxcode.workdir): a rerun of a finished run is a
  no-op, a differing config or a second process is refused in one line."""
  parallel.maybe_initialize_from_config(config.distributed)
  return workdir_lib.run_owned(workdir, config, "neuromfa_study",
                               lambda: _run(config, workdir, mesh))


def _family(config, workdir, names, data, mesh, wall) -> list[dict]:
  members = range(len(config.family.d_model))
  if all(CLAIMS[n][1] == "claim5" for n in names):
    members = [int(config.family.claim5_size)]
  points = []
  for n, i in enumerate(members):
    cfg = stages.member_config(config, i)
    t0 = time.time()
    stages.log(f"family member {n + 1}/{len(members)}: {cfg.name}, {cfg.params_nonembed:,} "
               f"non-embedding parameters, {config.steps} steps")
    points.append(stages.lm_run(cfg, data, os.path.join(workdir, "family", cfg.name), mesh))
    wall[f"family/{cfg.name}"] = round(time.time() - t0, 1)
    stages.log(f"{cfg.name} done in {wall[f'family/{cfg.name}']:.0f} s")
  return points


def _run(config, workdir: str, mesh=None) -> dict:
  names = validate(config, workdir)
  mesh = mesh if mesh is not None else parallel.mesh_from_config(config.mesh)
  wall, t0 = {}, time.time()
  data = sdata.study_data(config.data, int(config.seed))
  wall["data"] = round(time.time() - t0, 1)
  ctx = {"data": data, "mesh": mesh}
  ctx["family"] = _family(config, workdir, names, data, mesh, wall)
  claims = {}
  for name in names:
    t0 = time.time()
    stages.log(f"{name}: {PROGRESS_HINT.get(name, 'running')}")
    claims[name] = CLAIMS[name][0](config, workdir, ctx)
    wall[name] = round(time.time() - t0, 1)
    stages.log(f"{name}: {claims[name]['verdict']} ({wall[name]:.0f} s)")
  out = {"experiment": "neuromfa_study", "variant": config.get("variant", ""),
         "claims": claims, "family": ctx["family"], "vocab": data["vocab"],
         "train_tokens": data["train_tokens"], "n_train_docs": data["n_train_docs"],
         "n_heldout_docs": data["n_heldout_docs"], "wall_s": wall}
  if config.real.checkpoints:
    t0 = time.time()
    out["real"] = stages.real_checkpoints(config.neuromfa, list(config.real.checkpoints),
                                          os.path.join(workdir, "real"))
    wall["real"] = round(time.time() - t0, 1)
  if parallel.is_main_process():
    from jaxcode.report import neuromfa_study as report
    out["figures"] = report.write_all(out, os.path.join(workdir, "figures"))
    out["report"] = report.write_page(out, os.path.join(workdir, "report.html"))
    workdir_lib.write_json(os.path.join(workdir, "results.json"), out)
  return out
