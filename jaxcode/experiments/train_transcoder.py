"""Transcoders, skip transcoders or a cross-layer transcoder on a language model's MLPs.

run(config, workdir) checks everything first (configs/transcoder.py; one line per bad value,
nothing written), then runs its stages, each in its own folder and reused when complete:

  extract/        source='cache': every covered layer's hook_in and hook_out over the
                  corpus (jaxcode.pipeline.cache; resumes chunk by chunk)
  transcoder/     training through the shared loop, per-layer evaluation and exports
                  (jaxcode.pipeline.transcoder)
  replacement/    the exported dictionaries read back and spliced into the model on held-out
                  rows: every MLP replaced (jaxcode.analysis.replacement_eval)
  results.json, figures/*.png (jaxcode.report.transcoder)

source='lm' computes the pairs with the model for every batch instead (no extract/);
source='synthetic' trains on a planted transcoder (no model, no replacement/).
"""

from __future__ import annotations

import os
import sys
import time

import jax

from jaxcode import parallel
from jaxcode import workdir as workdir_lib
from jaxcode.data import sources
from jaxcode.data.synthetic import PlantedTranscoder
from jaxcode.errors import ConfigError, positive_int
from jaxcode.pipeline import cache as cache_lib
from jaxcode.pipeline import model as model_lib
from jaxcode.pipeline import spliced as spliced_lib
from jaxcode.pipeline import stage
from jaxcode.pipeline import transcoder as tc_stage
from jaxcode.train import checkpoint as ckpt_lib

SOURCES = ("cache", "lm", "synthetic")


def _log(config, msg: str) -> None:
  if config.progress:
    print(f"train_transcoder: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ validation

def _planted(config) -> PlantedTranscoder:
  s = config.synthetic
  for name in ("n_layers", "d_in", "d_out", "n_features"):
    positive_int(f"synthetic.{name}", s[name])
  return PlantedTranscoder(
      n_layers=int(s.n_layers), d_in=int(s.d_in), d_out=int(s.d_out),
      n_features=int(s.n_features), l0=float(s.l0), alpha=float(s.alpha),
      cross_layer=config.kind == "clt", skip=config.kind == "skip", offset=float(s.offset),
      dense_std=float(s.dense_std), signed=bool(s.signed), seed=int(s.dict_seed))


def _model_plan(config) -> dict:
  """The model, its covered layers and the widths of the paired hookpoints."""
  spec = model_lib.resolve(config.model, config.revision)
  from jaxcode.data import corpus as corpus_lib
  corpus_lib.load_corpus(config.extract.corpus)             # an empty corpus: one line
  lm = model_lib.load(spec)
  layers = tc_stage.check_layers(config.layers or range(lm.n_layers), lm.n_layers, config.kind)
  hooks = sources.paired_hookpoints(layers, config.hook_in, config.hook_out)
  have = set(lm.hookpoint_names())
  missing = [h for h in hooks if h not in have]
  if missing:
    raise ConfigError(f"hookpoint {missing[0]!r}: the {lm.model_type} model has no such "
                      f"hookpoint (a transcoder needs its MLP input and output hookpoints)")
  widths = {h: lm.hookpoint_width(h) for h in hooks}
  n = len(layers)
  for part in (hooks[:n], hooks[n:]):
    if len({widths[h] for h in part}) != 1:
      raise ConfigError(f"hookpoints {part}: widths {[widths[h] for h in part]} differ")
  if config.replacement.enabled and not getattr(lm, "has_logits", False):
    raise ConfigError(f"replacement.enabled: the model {spec.name!r} has no LM head (set "
                      "replacement.enabled=False)")
  return dict(spec=spec, lm=lm, layers=layers, hooks=hooks, d_in=widths[hooks[0]],
              d_out=widths[hooks[n]], name=spec.name)


def validate(config, workdir: str | None, mesh=None) -> dict:
  """Every check before compute; returns the plan."""
  if config.source not in SOURCES:
    raise ConfigError(f"source={config.source!r}: expected one of {SOURCES}")
  tc_stage.validate_settings(config)
  tc_stage.check_hooks(config.hook_in, config.hook_out)
  if config.replacement.enabled:
    spliced_lib.validate(config.replacement)
  if config.source == "synthetic":
    pl = _planted(config)
    plan = dict(planted=pl, layers=tuple(range(pl.n_layers)), d_in=pl.d_in, d_out=pl.d_out,
                name="synthetic")
  else:
    cache_lib.validate_block(config.extract, [config.hook_in.format(layer=0)],
                             jax.device_count(), where="extract.")
    plan = _model_plan(config)
  if mesh is None:
    data, model = parallel.resolve_axis_sizes(config.mesh.data, config.mesh.model,
                                              jax.device_count())
  else:
    data, model = mesh.shape[parallel.DATA], mesh.shape[parallel.MODEL]
  plan["cfg"] = tc_stage.validate(config, len(plan["layers"]), plan["d_in"], plan["d_out"],
                                  data, model)
  if workdir is not None:
    workdir_lib.check_workdir(workdir)
    ckpt_lib.check_directory(os.path.join(workdir, "transcoder", "checkpoints"))
  return plan


# ------------------------------------------------------------------ stages

def build_source(config, workdir: str, plan: dict):
  """The PairedSource of config.source (caching into extract/ first for 'cache')."""
  if config.source == "synthetic":
    return sources.PairedSource(planted=plan["planted"], seed=int(config.data.seed))
  t0 = time.time()
  src = tc_stage.paired_source(config, os.path.join(workdir, "extract"), plan["lm"], plan["spec"],
                               plan["hooks"], len(plan["layers"]), plan["d_in"], plan["d_out"],
                               log=lambda m: _log(config, f"{m} ({time.time() - t0:.0f} s)"))
  return src


def stage_transcoder(config, workdir: str, plan: dict, mesh, on_metrics=None) -> dict:
  folder = os.path.join(workdir, "transcoder")
  reused = os.path.isdir(os.path.join(folder, "export"))
  t0 = time.time()
  src = build_source(config, workdir, plan)
  facts = dict(hook_in=config.hook_in, hook_out=config.hook_out,
               model_name=plan.get("name"))
  res = tc_stage.train_transcoders(config, folder, src, mesh, plan["layers"], on_metrics,
                                   facts)
  _log(config, "transcoder: reused" if reused else
       f"transcoder: {res['steps']} steps, mean FVU {res['mean_fvu']:.3f}, mean L0 "
       f"{res['mean_l0']:.1f} ({time.time() - t0:.0f} s)")
  return res


def _replacements_of(config, export_dir: str) -> dict:
  """{'all': every covered MLP replaced} and, for per-layer transcoders, {'layer_<l>': that
  MLP alone} (errors do not compound there: the per-layer splice SAELens reports)."""
  from jaxcode.analysis import replacement_eval
  from jaxcode.models import transcoder_io
  ct = os.path.join(export_dir, "circuit_tracer")
  if config.kind == "clt":
    return {"all": replacement_eval.make_replacement_from_clt(
        transcoder_io.load_circuit_tracer_clt(ct))}
  ts = transcoder_io.load_circuit_tracer_plts(ct)
  make = lambda d: replacement_eval.make_replacement_from_external(
      d, hook_in=config.hook_in, hook_out=config.hook_out)
  out = {"all": make(ts)}
  if config.replacement.single_layers:
    out.update({f"layer_{l}": make({l: t}) for l, t in sorted(ts.items())})
  return out


def stage_replacement(config, workdir: str, plan: dict) -> dict | None:
  """The exported dictionaries, read back, replacing the MLPs of the real model."""
  if not config.replacement.enabled or config.source == "synthetic":
    return None
  from jaxcode.analysis import replacement_eval
  folder = os.path.join(workdir, "replacement")
  export_dir = os.path.join(workdir, "transcoder", "export")
  blk = config.replacement

  def compute() -> dict:
    t0 = time.time()
    rows, held_out = spliced_lib.held_out_rows(config.extract, plan["lm"].tokenizer,
                                               int(blk.rows))
    per = replacement_eval.replacement_eval(
        plan["lm"], rows.input_ids, rows.attention_mask, _replacements_of(config, export_dir),
        special=rows.special, batch_size=int(blk.batch_size))
    res = per.pop("all")
    keep = ("ce_replacement", "ce_zero", "ce_mean", "ce_recovered_zero", "ce_recovered_mean",
            "kl_replacement", "kl_zero", "kl_mean")
    res["single_layer"] = {k[len("layer_"):]: {f: v[f] for f in keep} for k, v in per.items()}
    res.update(stage="replacement", held_out=held_out, seconds=time.time() - t0)
    return res
  res = stage.run_stage("replacement", folder, compute, log=False)
  _log(config, f"replacement: CE clean {res['ce_clean']:.3f}, replaced "
               f"{res['ce_replacement']:.3f}, CE recovered {res['ce_recovered_zero']:.3f} "
               f"(vs zero) {res['ce_recovered_mean']:.3f} (vs mean), KL "
               f"{res['kl_replacement']:.3f}")
  return res


# ------------------------------------------------------------------ run

def run(config, workdir: str, mesh=None, on_metrics=None) -> dict:
  """Checks, then runs (or finishes) the stages holding the workdir (jaxcode.workdir): a
  rerun of a finished run is a no-op."""
  parallel.maybe_initialize_from_config(config.distributed)
  plan = validate(config, workdir, mesh)
  mesh = mesh if mesh is not None else parallel.mesh_from_config(config.mesh)
  return workdir_lib.run_owned(workdir, config, "train_transcoder",
                               lambda: _run(config, workdir, plan, mesh, on_metrics))


def _run(config, workdir: str, plan: dict, mesh, on_metrics) -> dict:
  from jaxcode.report import transcoder as report
  t0 = time.time()
  tc = stage_transcoder(config, workdir, plan, mesh, on_metrics)
  rep = stage_replacement(config, workdir, plan)
  results = {"experiment": "train_transcoder", "variant": config.variant, "kind": config.kind,
             "model": plan["name"], "source": config.source, "hook_in": config.hook_in,
             "hook_out": config.hook_out, "transcoder": tc, "replacement": rep,
             "seconds_this_invocation": time.time() - t0}
  if parallel.is_main_process():
    figures = report.write_all(results, os.path.join(workdir, "figures"))
    results["figures"] = [os.path.relpath(f, workdir) for f in figures]
    workdir_lib.write_json(os.path.join(workdir, "results.json"), results)
  _log(config, f"done in {time.time() - t0:.0f} s -> {os.path.join(workdir, 'results.json')}")
  return results
