"""The feature atlas of a language model: a list of stages (jaxcode.pipeline), one report.

run(config, workdir) runs each stage in its own folder, passing each the config block it
needs as it is:

  extract/                 the activation cache of every analysed block's residual stream
                           (pipeline.cache, config.extract)
  sae/layer_<i>/           one SAE per block (pipeline.sae, config.sae_train: the SAE
                           experiment's config), trained one after another, exported under
                           export/sae; config.sae_passes > 0 sets its updates to that many
                           passes over the cached tokens (sae_block)
  spliced/                 each SAE spliced into the model on held-out rows: CE loss
                           recovered and KL through the real LM head (causal LMs), or the
                           sentence embedding recovered (encoders) (pipeline.spliced)
  estimates/layer_<i>.json TwoNN, MLE, SAE L0 and orthogonality, eigenvalue power laws and
                           clustering entropies (activations and decoder), code-vs-prose lobes
                           (pipeline.estimates and pipeline.lobes, config.estimates and
                           config.lobes)
  four_properties/         concept-word table with the SAEs (pipeline.four_properties)
  neuromfa/                the weights' multifractal spectrum with its null (pipeline.neuromfa)
  dashboards/layer_<i>/     a page for every latent of the layer's SAE: index.html, latent
                           pages (pipeline.dashboards over the first dashboards.max_tokens
                           tokens of the activation cache, report.dashboards); the report
                           links each layer to its index
  results.json, report.html, figures/*.png

A stage is complete when its final file (written last by an atomic rename) exists; complete
stages are reused, a half-written one is redone (the cache keeps its complete chunks and an
SAE resumes from its last checkpoint). The cache is reused only when every file matches the
sha256 in its manifest; a damaged chunk is named in one line and recomputed. The workdir's
config.json (jaxcode.workdir) refuses a rerun with another model or settings before compute.
"""

from __future__ import annotations

import os
import sys
import time

import jax

from jaxcode import parallel
from jaxcode import workdir as workdir_lib
from jaxcode.errors import ConfigError, positive_int
from jaxcode.pipeline import cache as cache_lib
from jaxcode.pipeline import estimates as estimates_lib
from jaxcode.pipeline import evals as evals_lib
from jaxcode.pipeline import four_properties as four_properties_lib
from jaxcode.pipeline import model as model_lib
from jaxcode.pipeline import neuromfa as neuromfa_lib
from jaxcode.pipeline import sae as sae_stage
from jaxcode.pipeline import spliced as spliced_lib
from jaxcode.pipeline import stage

# The stages in run order; each is STAGE_FNS[name](config, workdir, plan, done) -> its result
# (done: the earlier stages' results by name). A new stage is one function and one entry here.
STAGES = ("extract", "sae", "spliced", "estimates", "four_properties", "neuromfa", "dashboards",
          "evals")


def _log(config, msg: str) -> None:
  if config.progress:
    print(f"atlas: {msg}", file=sys.stderr, flush=True)


def hook(layer: int) -> str:
  return f"blocks.{layer}.resid_post"


# ------------------------------------------------------------------ validation

def _check_blocks(config) -> None:
  """Checks of the config alone, by each stage's own validators."""
  es, lb = config.estimates, config.lobes
  for name in ("tokens", "mle_k", "pca_dim"):
    positive_int(f"estimates.{name}", es[name])
  positive_int("lobes.block_len", lb.block_len)
  positive_int("sae_passes", config.sae_passes, low=0)
  if not 1 <= int(es.lo) < int(es.hi):
    raise ConfigError(f"estimates rank window lo={es.lo}, hi={es.hi}: expected 1 <= lo < hi")
  if es.mle_k >= es.tokens:
    raise ConfigError(f"estimates.mle_k={es.mle_k}: expected < estimates.tokens={es.tokens}")
  cache_lib.validate_block(config.extract, [hook(0)], jax.device_count(), where="extract.")
  sae_stage.validate_settings(config.sae_train, where="sae_train.")
  four_properties_lib.validate(config.four_properties)
  if config.spliced.enabled:
    spliced_lib.validate(config.spliced)
  if config.neuromfa.enabled:
    neuromfa_lib.validate(config.neuromfa)
  if config.dashboards.enabled:
    if int(config.dashboards.max_tokens) < 0:
      raise ConfigError(f"dashboards.max_tokens={config.dashboards.max_tokens}: expected >= 0 "
                        "(0: every cached token)")
    positive_int("dashboards.per_page", config.dashboards.per_page)
  if config.evals.enabled:
    positive_int("evals.core_rows", config.evals.core_rows)
    if str(config.evals.names).strip() != "all":
      from jaxcode.analysis import saebench
      saebench.check_eval_names(config.evals.names)       # before the model loads


def _check_layers(config, n: int) -> list[int]:
  layers = [int(l) for l in config.layers] if config.layers else list(range(n))
  if not layers or len(set(layers)) != len(layers) or min(layers) < 0 or max(layers) >= n:
    raise ConfigError(f"layers={tuple(config.layers)}: the model has blocks 0..{n - 1}: "
                      f"expected distinct indices in that range")
  return layers


def validate(config) -> dict:
  """Every check before compute; returns the plan (model spec and model, layers, d_sae)."""
  _check_blocks(config)
  spec = model_lib.resolve(config.model, config.revision)   # unknown path: one line
  from jaxcode.data import corpus as corpus_lib
  corpus_lib.load_corpus(config.extract.corpus)             # an empty corpus: one line
  lm = model_lib.load(spec)
  layers = _check_layers(config, lm.n_layers)
  sae_stage.validate(config.sae_train, lm.d_model, where="sae_train.")
  d_sae = sae_stage.d_sae(config.sae_train, lm.d_model)
  es = config.estimates
  if es.hi > min(d_sae, lm.d_model, es.tokens - 1):
    raise ConfigError(f"estimates.hi={es.hi}: expected <= min(d_sae, d_model, tokens - 1) = "
                      f"{min(d_sae, lm.d_model, es.tokens - 1)}")
  if config.dashboards.enabled:
    from jaxcode.pipeline import dashboards as dash
    dash.check(config.dashboards.scan, lm, None, hook(layers[0]), int(config.extract.seq_len))
  if max(config.lobes.cluster_counts) >= d_sae:
    raise ConfigError(f"lobes.cluster_counts={tuple(config.lobes.cluster_counts)}: expected "
                      "< d_sae")
  evals, tasks = (), {}
  if config.evals.enabled:
    evals = evals_lib.resolve_names(str(config.evals.names), lm)
    tasks = evals_lib.check(config.evals, lm, evals, spec.name)
  return dict(spec=spec, path=spec.path, name=spec.name, layers=layers, lm=lm, d_sae=d_sae,
              evals=evals, eval_tasks=tasks)


# ------------------------------------------------------------------ stages

def stage_extract(config, workdir: str, plan: dict, done: dict) -> dict:
  folder = os.path.join(workdir, "extract")
  old = stage.read_final(folder)
  if old and old.get("complete"):
    damage = cache_lib.damage(os.path.join(folder, cache_lib.CACHE))   # hashes every file once
    if not damage:
      _log(config, f"extract: reused ({old['n_tokens']} tokens cached)")
      return old
    print(f"atlas: extract: {damage}: rerunning the extraction, which recomputes the damaged "
          "chunks", file=sys.stderr, flush=True)
  else:
    _log(config, f"extract: caching blocks {plan['layers']} of {plan['name']}")
  t0, mesh = time.time(), parallel.make_mesh(-1, 1)
  lm = model_lib.load(plan["spec"], mesh=mesh)   # the extraction's own, sharded over data
  res = cache_lib.cache_activations(config.extract, folder, lm, plan["spec"],
                                    [hook(l) for l in plan["layers"]], mesh)
  _log(config, f"extract: {res['n_tokens']} tokens in {time.time() - t0:.0f} s")
  return res


def _cache(workdir: str, config):
  from jaxcode.data import activations
  cache = activations.ActivationCache.open(os.path.join(workdir, "extract", cache_lib.CACHE))
  if cache.n_tokens <= int(config.estimates.mle_k) + 1:
    raise ConfigError(f"the corpus gave {cache.n_tokens} tokens: expected more than "
                      f"estimates.mle_k + 1 = {config.estimates.mle_k + 1}")
  return cache


def sae_block(config, n_tokens: int):
  """config.sae_train, or (sae_passes > 0) a copy whose steps make sae_passes passes over
  n_tokens cached tokens: ceil(sae_passes x n_tokens / batch_size)."""
  passes = int(config.sae_passes)
  if passes == 0:
    return config.sae_train
  t = config.sae_train.copy_and_resolve_references()
  t.unlock()
  t.steps = -(-passes * int(n_tokens) // int(t.batch_size))
  t.lock()
  return t


def _one_sae(config, workdir: str, layer: int, t) -> dict:
  from jaxcode.data import sources
  from jaxcode.report import sae as report_sae
  folder = os.path.join(workdir, "sae", f"layer_{layer}")
  reused = stage.read_final(folder) is not None and os.path.isdir(os.path.join(folder, "export"))
  t0 = time.time()
  source = sources.ActivationCacheSource(os.path.join(workdir, "extract", cache_lib.CACHE),
                                         hook(layer), seed=int(t.data.seed))
  res = sae_stage.train_saes(t, folder, source, parallel.mesh_from_config(t.mesh),
                             figures=report_sae.write_all)
  _log(config, f"sae layer {layer}: reused" if reused else
       f"sae layer {layer}: {res['steps']} steps, L0 {res['l0']:.1f}, explained variance "
       f"{res['explained_variance']:.3f} ({time.time() - t0:.0f} s)")
  return res


def stage_sae(config, workdir: str, plan: dict, done: dict) -> dict:
  t = sae_block(config, _cache(workdir, config).n_tokens)
  sae_stage.validate_settings(t, where="sae_train.")   # derived steps vs warm-up, before compute
  if int(config.sae_passes):
    _log(config, f"sae: {config.sae_passes} passes over {done['extract']['n_tokens']} tokens = "
                 f"{t.steps} updates of {t.batch_size} per layer")
  return {l: _one_sae(config, workdir, l, t) for l in plan["layers"]}


def _sae_dir(workdir: str, layer: int) -> str:
  return os.path.join(workdir, "sae", f"layer_{layer}", "export", "sae")


def stage_spliced(config, workdir: str, plan: dict, done: dict) -> dict | None:
  if not config.spliced.enabled:
    return None
  folder, t0 = os.path.join(workdir, "spliced"), time.time()
  reused = stage.read_final(folder) is not None
  res = spliced_lib.run(plan["lm"], config.spliced, config.extract,
                        {l: _sae_dir(workdir, l) for l in plan["layers"]}, folder,
                        log=config.progress)
  _log(config, "spliced: reused" if reused else
       f"spliced: {res['tokens']} tokens per layer ({time.time() - t0:.0f} s)")
  return res


def _load_sae(workdir: str, layer: int):
  from jaxcode.models import sae_io
  return sae_io.load_saelens(_sae_dir(workdir, layer))


def stage_estimates(config, workdir: str, plan: dict, done: dict) -> dict:
  from jaxcode.data import corpus as corpus_lib
  cache = _cache(workdir, config)
  prefix, suffix = corpus_lib.special_affixes(plan["lm"].tokenizer)
  body = int(cache.manifest["seq_len"]) - len(prefix) - len(suffix)
  out = {}
  for l in plan["layers"]:
    path = os.path.join(workdir, "estimates", f"layer_{l}.json")
    reused, t0 = stage.read_final(*os.path.split(path)) is not None, time.time()
    out[l] = r = estimates_lib.run(path, config.estimates, config.lobes, cache, l, hook(l),
                                   _load_sae(workdir, l), done["sae"][l], len(prefix), body,
                                   int(config.seed))
    _log(config, f"estimates layer {l}: reused" if reused else
         f"estimates layer {l}: TwoNN {r['twonn']:.1f}, MLE {r['mle']:.1f}, slope "
         f"{r['act_slope']:.2f} ({time.time() - t0:.0f} s)")
  return out


def stage_four_properties(config, workdir: str, plan: dict, done: dict) -> dict:
  from jaxcode.report import four_properties as report_fp
  folder, lm, t0 = os.path.join(workdir, "four_properties"), plan["lm"], time.time()
  reused = stage.read_final(folder) is not None
  paths = [""] + [_sae_dir(workdir, l) if l in plan["layers"] else ""
                  for l in range(lm.n_layers)]
  saes = four_properties_lib.saes_from_paths(paths, lm.n_layers + 1, lm.d_model)
  res = four_properties_lib.run(lm, saes, config.four_properties, folder,
                                name=plan["spec"].spec, figures=report_fp.write_all, log=False)
  _log(config, "four properties: reused" if reused else
       f"four properties: {time.time() - t0:.0f} s")
  return res


def stage_neuromfa(config, workdir: str, plan: dict, done: dict) -> dict | None:
  from jaxcode.report import neuromfa as report_nm
  if not config.neuromfa.enabled:
    return None
  folder, t0 = os.path.join(workdir, "neuromfa"), time.time()
  if stage.read_final(folder) is not None:
    _log(config, "neuromfa: reused")
    return stage.read_final(folder)
  labelled = neuromfa_lib.load_checkpoints([plan["spec"].neuromfa_label])
  res = neuromfa_lib.run(labelled, config.neuromfa, folder, log=False,
                         header={"experiment": "neuromfa", "variant": f"atlas-{config.variant}"},
                         figures=report_nm.write_all)
  r = res["checkpoints"][0]
  _log(config, f"neuromfa: alpha0 {r['alpha0']:.3f} width {r['width']:.3f} (null "
               f"{r['null_alpha0']:.3f}, {r['null_width']:.3f}) ({time.time() - t0:.0f} s)")
  return res


def _dashboard_rows(config, lm):
  """The packed rows the activation cache holds, in its row order (the scan's contexts)."""
  return cache_lib.load_packed(config.extract, lm.tokenizer)


def stage_dashboards(config, workdir: str, plan: dict, done: dict) -> dict | None:
  from jaxcode.pipeline import dashboards as dash
  from jaxcode.report import dashboards as report_dash
  if not config.dashboards.enabled:
    return None
  d, lm, out, packed = config.dashboards, plan["lm"], {}, None
  for l in plan["layers"]:
    folder, t0 = os.path.join(workdir, "dashboards", f"layer_{l}"), time.time()
    if stage.read_final(folder) is not None:
      out[l] = stage.read_final(folder)
      _log(config, f"dashboards layer {l}: reused")
      continue
    packed = packed if packed is not None else _dashboard_rows(config, lm)

    def compute(l=l, folder=folder):
      batches = dash.CacheBatches(_cache(workdir, config), hook(l),
                                  int(d.scan.rows_per_batch) * int(config.extract.seq_len),
                                  int(d.max_tokens))
      recs, summary = dash.records(d.scan, os.path.join(folder, "scan"), lm, _load_sae(workdir, l),
                                   hook(l), packed, layer_label=hook(l), batches=batches)
      report_dash.write_dashboards(recs, folder, title=f"{plan['name']} {hook(l)}",
                                   layer_label=hook(l), per_page=int(d.per_page))
      return {**summary, "index": f"dashboards/layer_{l}/index.html"}
    out[l] = r = stage.run_stage("dashboards", folder, compute, log=False)
    _log(config, f"dashboards layer {l}: {r['n_latents']} latents over {r['n_tokens']} tokens "
                 f"({time.time() - t0:.0f} s)")
  return out


def stage_evals(config, workdir: str, plan: dict, done: dict) -> dict | None:
  """The SAEBench-compatible evals of every layer's SAE (pipeline.evals, one JSON per layer and
  eval under evals/, each skipped when it exists) and their comparison page evals/evals.html."""
  from jaxcode.models import sae_formats
  from jaxcode.report import evaluate as report_evals
  if not config.evals.enabled:
    return None
  folder, t0 = os.path.join(workdir, "evals"), time.time()
  if stage.read_final(folder) is not None:
    _log(config, "evals: reused")
    return stage.read_final(folder)

  def compute():
    packed = _dashboard_rows(config, plan["lm"]).evenly_spaced_rows(int(config.evals.core_rows))
    files = {}
    for l in plan["layers"]:
      sae = sae_formats.load_dictionary(_sae_dir(workdir, l))
      got = evals_lib.run_evals(plan["lm"], sae, hook(l), packed, plan["evals"], folder,
                                config.evals, f"layer_{l}", plan["name"],
                                tasks=plan["eval_tasks"])
      files[l] = {k: os.path.relpath(v, workdir) for k, v in got.items()}
    page = report_evals.write_page(folder)
    return {"evals": list(plan["evals"]), "files": files,
            "page": os.path.relpath(page, workdir), "summary": report_evals.summary_rows(folder)}
  res = stage.run_stage("evals", folder, compute, log=False)
  _log(config, f"evals: {', '.join(plan['evals'])} on {len(plan['layers'])} layers "
               f"({time.time() - t0:.0f} s)")
  return res


STAGE_FNS = dict(extract=stage_extract, sae=stage_sae, spliced=stage_spliced,
                 estimates=stage_estimates,
                 four_properties=stage_four_properties, neuromfa=stage_neuromfa,
                 dashboards=stage_dashboards, evals=stage_evals)


# ------------------------------------------------------------------ run

def run(config, workdir: str, stop_after: str | None = None) -> dict:
  """Runs (or finishes) the atlas holding its workdir (jaxcode.workdir): a rerun of a
  finished run is a no-op, a differing config or a second process is refused in one line;
  `stop_after` (a STAGES name) stops early, as a kill would."""
  if stop_after is not None and stop_after not in STAGES:
    raise ConfigError(f"stop_after={stop_after!r}: expected one of {STAGES}")
  return workdir_lib.run_owned(workdir, config, "atlas", lambda: _run(config, workdir, stop_after),
                               completed=lambda out: "stopped_after" not in out)


def _run(config, workdir: str, stop_after: str | None) -> dict:
  t0, seconds, done = time.time(), {}, {}
  plan = validate(config)
  for name in STAGES:
    t1 = time.time()
    done[name] = STAGE_FNS[name](config, workdir, plan, done)
    seconds[name] = time.time() - t1
    if stop_after == name:
      return {"stopped_after": name}
  from jaxcode.report import atlas as report
  results = report.assemble(config, plan, done["extract"], done["sae"], done["estimates"],
                            done["four_properties"], done["neuromfa"], done["spliced"],
                            done["dashboards"], done["evals"])
  results["seconds_this_invocation"] = dict(seconds, total=time.time() - t0)
  figures = report.write_all(results, os.path.join(workdir, "figures"))
  results["figures"] = [os.path.relpath(f, workdir) for f in figures]   # portable workdir
  workdir_lib.write_json(os.path.join(workdir, "results.json"), results)
  report.write_html(stage.read_final(workdir), workdir)
  _log(config, f"done in {time.time() - t0:.0f} s -> {os.path.join(workdir, 'report.html')}")
  return results
