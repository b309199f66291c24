"""The feature atlas of a language model: cache -> SAEs -> per-layer estimates -> report.

run(config, workdir) composes the other experiments, each stage in its own folder:

  extract/                 the activation cache of every analysed block's residual stream
                           (jaxcode.experiments.extract)
  sae/layer_<i>/           one TopK SAE per block (jaxcode.experiments.train_sae), trained one
                           after another, exported under export/sae
  estimates/layer_<i>.json TwoNN, MLE, SAE L0 and orthogonality, eigenvalue power laws and
                           clustering entropies (activations and decoder), code-vs-prose lobes
  four_properties/         concept-word table with the SAEs (jaxcode.experiments.four_properties)
  neuromfa/                the weights' multifractal spectrum with its null
  results.json, report.html, figures/*.png

A stage is complete when its final file (results.json / layer_<i>.json, written last by an
atomic rename) exists; complete stages are reused, a half-written one is redone (the cache
keeps its complete chunks and an SAE resumes from its last checkpoint). The cache is reused
only when every file matches the sha256 in its manifest; a damaged chunk is named in one
line and recomputed. atlas.json records what the workdir holds, so a workdir with another
model's atlas is refused before compute.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from ml_collections import ConfigDict

from jaxcode import workdir as workdir_lib
from jaxcode.errors import ConfigError

STAGES = ("extract", "sae", "estimates", "four_properties", "neuromfa")
SOURCES_CODE, SOURCES_PROSE = "code", "prose"


def _log(config, msg: str) -> None:
  if config.progress:
    print(f"atlas: {msg}", file=sys.stderr, flush=True)


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


# ------------------------------------------------------------------ validation

def _pos(name: str, v) -> None:
  if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
    raise ConfigError(f"{name}={v!r}: expected a positive integer")


def model_spec(config) -> tuple[str, str]:
  """(path to load, name recorded): checks a local path exists, before anything is loaded."""
  from jaxcode.models.lm import minilm_path
  from jaxcode.models.lm.hf import resolve_dir
  if config.model == "minilm":
    return minilm_path(), "sentence-transformers/all-MiniLM-L6-v2"
  return resolve_dir(str(config.model), config.revision or None), str(config.model)


def identity(config, name: str, layers: list[int]) -> dict:
  """What a workdir's atlas is of; a rerun must match it."""
  c = config.to_dict()
  c.pop("progress", None)
  c.pop("variant", None)
  return {"model": name, "revision": config.revision or None, "layers": layers, "config": c}


def _first_difference(a, b, prefix=""):
  if isinstance(a, dict) and isinstance(b, dict):
    for k in sorted(set(a) | set(b)):
      d = _first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
      if d:
        return d
    return None
  return prefix.rstrip(".") if json.dumps(a) != json.dumps(b) else None


def check_identity(workdir: str, want: dict) -> None:
  old = _read_json(os.path.join(workdir, "atlas.json"))
  if old is None:
    return
  if old.get("model") != want["model"] or old.get("revision") != want["revision"]:
    raise ConfigError(f"workdir {workdir!r} holds the atlas of model {old.get('model')!r}, the "
                      f"config asks for {want['model']!r}: use another workdir")
  want = json.loads(json.dumps(want))
  diff = _first_difference(old, want)
  if diff:
    raise ConfigError(f"workdir {workdir!r} holds an atlas made with a different {diff}: use "
                      f"another workdir or the same config")


def validate_sae_train(t, d_in: int | None = None, d_sae: int | None = None) -> None:
  """The SAE stage's checks, by launch.train_sae's own validators (so the limits are the
  same, e.g. 0 < k <= d_sae), with the fields named as sae_train.*: the training settings,
  and once the model's width d_in is known the SAE itself."""
  from jaxcode.experiments import train_sae
  from jaxcode.models import sae as sae_lib
  train_sae.validate_settings(t, where="sae_train.")
  if d_in is None:
    return
  s = ConfigDict(t.to_dict())
  s.sae.d_sae = d_sae
  try:
    sae_lib.validate(train_sae.sae_config(s, d_in), None, d_in)
  except ConfigError as e:
    raise ConfigError(f"sae_train.{e}") from None


def validate(config, workdir: str) -> dict:
  """Every check before compute; returns the plan (model, layers, lm)."""
  e, t, es, lb = config.extract, config.sae_train, config.estimates, config.lobes
  for name, v in (("extract.seq_len", e.seq_len), ("extract.max_tokens", e.max_tokens),
                  ("extract.batch_size", e.batch_size), ("extract.rows_per_chunk",
                                                         e.rows_per_chunk),
                  ("estimates.tokens", es.tokens), ("estimates.mle_k", es.mle_k),
                  ("estimates.pca_dim", es.pca_dim), ("lobes.block_len", lb.block_len),
                  ("sae_train.sae.k", t.sae.k)):
    _pos(name, v)
  if int(t.sae.d_sae) < 0:
    raise ConfigError(f"sae_train.sae.d_sae={t.sae.d_sae}: expected >= 0 (0: 2 x model width)")
  if not 1 <= int(es.lo) < int(es.hi):
    raise ConfigError(f"estimates rank window lo={es.lo}, hi={es.hi}: expected 1 <= lo < hi")
  if es.mle_k >= es.tokens:
    raise ConfigError(f"estimates.mle_k={es.mle_k}: expected < estimates.tokens={es.tokens}")
  validate_sae_train(t)
  path, name = model_spec(config)                  # unknown path: one line, nothing loaded
  from jaxcode.data import corpus as corpus_lib
  corpus_lib.load_corpus(e.corpus)                 # an empty corpus: one line
  from jaxcode.models.lm import load_pretrained
  lm = load_pretrained(path, config.revision or None)
  n = lm.n_layers
  layers = [int(l) for l in config.layers] if config.layers else list(range(n))
  if not layers or len(set(layers)) != len(layers) or min(layers) < 0 or max(layers) >= n:
    raise ConfigError(f"layers={tuple(config.layers)}: the model has blocks 0..{n - 1}: "
                      f"expected distinct indices in that range")
  d_sae = int(t.sae.d_sae) or 2 * lm.d_model
  validate_sae_train(t, lm.d_model, d_sae)
  if es.hi > min(d_sae, lm.d_model, es.tokens - 1):
    raise ConfigError(f"estimates.hi={es.hi}: expected <= min(d_sae, d_model, tokens - 1) = "
                      f"{min(d_sae, lm.d_model, es.tokens - 1)}")
  if max(lb.cluster_counts) >= d_sae:
    raise ConfigError(f"lobes.cluster_counts={tuple(lb.cluster_counts)}: expected < d_sae")
  ident = identity(config, name, layers)
  check_identity(workdir, ident)
  workdir_lib.check_workdir(workdir)                    # created only once every value passed
  return dict(path=path, name=name, layers=layers, lm=lm, d_sae=d_sae, identity=ident)


# ------------------------------------------------------------------ stage configs

def hook(layer: int) -> str:
  return f"blocks.{layer}.resid_post"


def extract_config(config, layers) -> ConfigDict:
  e = config.extract
  return ConfigDict(dict(
      variant=f"atlas-{config.variant}", model=config.model, revision=config.revision,
      compute_dtype="float32", corpus=e.corpus, text_field="text", max_docs=0,
      seq_len=int(e.seq_len), max_tokens=int(e.max_tokens),
      hookpoints=tuple(hook(l) for l in layers), dtype=e.dtype, batch_size=int(e.batch_size),
      rows_per_chunk=int(e.rows_per_chunk), drop_special=True, progress=bool(config.progress),
      mesh=dict(data=-1, model=1)))


def sae_config(config, cache_dir: str, layer: int, d_sae: int) -> ConfigDict:
  t = ConfigDict(config.sae_train.to_dict())
  t.sae.d_sae = d_sae
  t.data.kind, t.data.path, t.data.hookpoint = "activation_cache", cache_dir, hook(layer)
  t.data.seed = t.seed = int(config.seed)
  t.lock()
  return t


def four_properties_config(config, sae_paths) -> ConfigDict:
  f = config.four_properties
  return ConfigDict(dict(
      variant=f"atlas-{config.variant}", model=config.model, revision=config.revision,
      template=f.template, categories_file=f.categories_file,
      relations_file=f.relations_file, batch=int(f.batch),
      seed=int(config.seed), twonn_discard=float(config.estimates.twonn_discard),
      mle_k=int(config.estimates.mle_k), probe=dict(dim=int(f.probe_dim), folds=int(f.probe_folds)),
      spectrum=dict(lo=int(f.lo), hi=int(f.hi)), sae_paths=tuple(sae_paths)))


def neuromfa_config(config, path: str) -> ConfigDict:
  n = config.neuromfa
  if config.model == "minilm":
    spec = "minilm"
  elif os.path.isdir(os.path.expanduser(str(config.model))):
    spec = str(config.model)
  else:
    spec = f"hub:{config.model}" + (f"@{config.revision}" if config.revision else "")
  return ConfigDict(dict(
      variant=f"atlas-{config.variant}", checkpoints=(spec,), S=int(n.S),
      seeds=tuple(int(s) for s in n.seeds), null_seed=int(n.null_seed), mode="paper",
      filter_mode=0, residual=False, T=150, q_min=-3.0, q_max=3.0, q_step=0.1,
      multihop=dict(r_min=20.0, r_max=2000.0, n_radii=16, window=(), p=-1.0, lam=1.0,
                    gamma=0.0, directed=False, normaliser="node", skip_length=1.0)))


# ------------------------------------------------------------------ per-layer estimates

def _row_sources(cache) -> np.ndarray:
  """Source label ('prose' / 'code' / ...) of each packed row: its last document's source."""
  m = cache.manifest
  info = cache.token_info(np.arange(cache.n_tokens))
  last = np.full(int(m["n_rows"]), -1, np.int64)
  np.maximum.at(last, info["row"].astype(np.int64), info["doc_index"].astype(np.int64))
  src = np.array(list(m["sources"]) + [""], dtype=object)
  return src[last]


def lobe_statistics(config, cache, h: str, sae, tokenizer) -> dict:
  """Code-vs-prose lobes of the layer's SAE features (Li et al. 2024, via concept_geometry)."""
  from jaxcode.analysis import concept_geometry as cg
  from jaxcode.data import corpus as corpus_lib
  from jaxcode.experiments.concept_geometry import dense_layout
  from jaxcode.models import sae_io
  lb = config.lobes
  prefix, suffix = corpus_lib.special_affixes(tokenizer)
  n_rows, seq_len = int(cache.manifest["n_rows"]), int(cache.manifest["seq_len"])
  body = seq_len - len(prefix) - len(suffix)
  cg.check_block_len(int(lb.block_len), body)
  x, valid = dense_layout(cache, h, n_rows, body, len(prefix))
  c, t, fired, rows = cg.cooccurrence(lambda z: sae_io.encode(sae, z), x, valid,
                                      int(lb.block_len), float(lb.threshold), int(lb.batch_rows))
  if t == 0:
    raise ConfigError(f"lobes: no complete block of {lb.block_len} tokens: expected "
                      f"lobes.block_len <= the rows' text length {body}")
  res = cg.lobes(c, t, sae.W_dec, tuple(lb.cluster_counts), tuple(lb.affinities),
                 int(lb.n_null_ami), int(lb.n_null_probe), fired, _row_sources(cache)[rows],
                 seed=42 + int(config.seed))
  out = {"n_features": res["n_features"], "n_active": res["n_active"], "blocks": res["blocks"],
         "fired_fraction": float(np.mean(fired)), "by_affinity": {}}
  for name, per_k in res["affinities"].items():
    out["by_affinity"][name] = {}
    for k, r in per_k.items():
      srcs = r.get("sources", {})
      sep = None
      if SOURCES_CODE in srcs and SOURCES_PROSE in srcs:
        a = np.asarray(srcs[SOURCES_CODE]["share"])
        b = np.asarray(srcs[SOURCES_PROSE]["share"])
        sep = float(0.5 * np.abs(a - b).sum())
      out["by_affinity"][name][str(k)] = {
          "ami": r["ami"]["ami"], "ami_sigma": r["ami"]["sigma"],
          "balanced_accuracy": r["probe"]["balanced_accuracy"],
          "probe_sigma": r["probe"]["sigma"], "code_prose_separation": sep,
          "sources": srcs}
  return out


def layer_estimates(config, cache, layer: int, sae, sae_results: dict, tokenizer) -> dict:
  from jaxcode.analysis import concept_geometry as cg
  from jaxcode.analysis import four_properties as fp
  from jaxcode.estimators import intrinsic_dim
  from jaxcode.models import sae_io
  es = config.estimates
  h = hook(layer)
  rng = np.random.default_rng([int(config.seed), layer])
  idx = np.sort(rng.choice(cache.n_tokens, min(cache.n_tokens, int(es.tokens)), replace=False))
  x = np.asarray(cache.get(h, idx), np.float32)
  codes = np.asarray(sae_io.encode(sae, x))
  gal = cg.galaxy_layer(sae.W_dec, x, int(es.lo), int(es.hi), len(x), int(es.pca_dim),
                        float(es.theta), int(es.n_boot), int(es.n_boot_corrected),
                        int(config.seed))
  act_h = cg.corrected_clustering_entropy(x, len(x), int(es.pca_dim), 1,
                                          int(es.n_boot_corrected), 0.8, int(config.seed))
  row = dict(
      layer=layer, hookpoint=h, tokens=int(len(x)),
      twonn=intrinsic_dim.twonn(x, discard_fraction=float(es.twonn_discard)),
      mle=intrinsic_dim.mle(x, k=int(es.mle_k)),
      sae_l0=float(np.mean(np.sum(codes > 0, axis=1))),
      sae_l0_fraction=fp.l0_sparsity(codes),
      sae_orthogonality=fp.orthogonality(sae.W_dec),
      sae_explained_variance=sae_results.get("explained_variance"),
      sae_dead_fraction=sae_results.get("dead_fraction"),
      act_slope=gal["activations"]["slope"], act_slope_r2=gal["activations"]["r2"],
      dec_slope=gal["decoder"]["slope"], dec_slope_r2=gal["decoder"]["r2"],
      act_clustering_entropy=act_h["value"], act_clustering_entropy_error=act_h["error"],
      dec_clustering_entropy=gal["clustering_entropy_corrected"]["value"],
      dec_clustering_entropy_error=gal["clustering_entropy_corrected"]["error"],
      dec_clustering_entropy_notebook=gal["clustering_entropy_notebook"]["value"],
      eigenvalues_activations=np.asarray(gal["eigenvalues_activations"])[:int(es.hi)].tolist(),
      eigenvalues_decoder=np.asarray(gal["eigenvalues_decoder"])[:int(es.hi)].tolist())
  row["lobes"] = lobe_statistics(config, cache, h, sae, tokenizer)
  return row


# ------------------------------------------------------------------ stages

def cache_damage(cache_dir: str) -> str:
  """'' when the cache is complete and every file matches its manifest sha256 (all hashed
  now, and marked verified so later reads in this process skip the hash), else one line
  naming the damaged files."""
  from jaxcode.data import activations
  try:
    bad = activations.ActivationCache.open(cache_dir).corrupt_files()
  except ConfigError as e:
    return str(e)
  if not bad:
    return ""
  names = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
  return f"{names} in {cache_dir} do not match the sha256 recorded in its manifest"


def stage_extract(config, workdir: str, plan: dict) -> dict:
  from jaxcode.experiments import extract
  d = os.path.join(workdir, "extract")
  res = _read_json(os.path.join(d, "results.json"))
  if res is not None and res.get("complete"):
    damage = cache_damage(os.path.join(d, extract.CACHE))
    if not damage:
      _log(config, f"extract: reused ({res['n_tokens']} tokens cached)")
      return res
    print(f"atlas: extract: {damage}: rerunning the extraction, which recomputes the "
          "damaged chunks", file=sys.stderr, flush=True)
  _log(config, f"extract: caching blocks {plan['layers']} of {plan['name']}")
  t0 = time.time()
  res = extract.run(extract_config(config, plan["layers"]), d)
  _log(config, f"extract: {res['n_tokens']} tokens in {time.time() - t0:.0f} s")
  return res


def stage_sae(config, workdir: str, plan: dict, layer: int, cache_dir: str) -> dict:
  from jaxcode.experiments import train_sae
  d = os.path.join(workdir, "sae", f"layer_{layer}")
  res = _read_json(os.path.join(d, "results.json"))
  if res is not None and os.path.isdir(os.path.join(d, "export", "sae")):
    _log(config, f"sae layer {layer}: reused")
    return res
  t0 = time.time()
  res = train_sae.run(sae_config(config, cache_dir, layer, plan["d_sae"]), d)
  _log(config, f"sae layer {layer}: {res['steps']} steps, L0 {res['l0']:.1f}, explained "
               f"variance {res['explained_variance']:.3f} ({time.time() - t0:.0f} s)")
  return res


def stage_estimates(config, workdir: str, plan: dict, layer: int, cache, sae_dir: str,
                    sae_res: dict) -> dict:
  from jaxcode.models import sae_io
  path = os.path.join(workdir, "estimates", f"layer_{layer}.json")
  res = _read_json(path)
  if res is not None:
    _log(config, f"estimates layer {layer}: reused")
    return res
  t0 = time.time()
  sae = sae_io.load_saelens(os.path.join(sae_dir, "export", "sae"))
  res = layer_estimates(config, cache, layer, sae, sae_res, plan["lm"].tokenizer)
  workdir_lib.write_json(path, res)
  _log(config, f"estimates layer {layer}: TwoNN {res['twonn']:.1f}, MLE {res['mle']:.1f}, "
               f"slope {res['act_slope']:.2f} ({time.time() - t0:.0f} s)")
  return _read_json(path)


def stage_four_properties(config, workdir: str, plan: dict) -> dict:
  from jaxcode.experiments import four_properties
  d = os.path.join(workdir, "four_properties")
  res = _read_json(os.path.join(d, "results.json"))
  if res is not None:
    _log(config, "four properties: reused")
    return res
  n = plan["lm"].n_layers
  paths = [""] + [os.path.abspath(os.path.join(workdir, "sae", f"layer_{l}", "export", "sae"))
                  if l in plan["layers"] else "" for l in range(n)]
  t0 = time.time()
  res = four_properties.run(four_properties_config(config, paths), d)
  _log(config, f"four properties: {time.time() - t0:.0f} s")
  return res


def stage_neuromfa(config, workdir: str, plan: dict) -> dict | None:
  from jaxcode.experiments import neuromfa
  if not config.neuromfa.enabled:
    return None
  d = os.path.join(workdir, "neuromfa")
  res = _read_json(os.path.join(d, "results.json"))
  if res is not None:
    _log(config, "neuromfa: reused")
    return res
  t0 = time.time()
  res = neuromfa.run(neuromfa_config(config, plan["path"]), d)
  r = res["checkpoints"][0]
  _log(config, f"neuromfa: alpha0 {r['alpha0']:.3f} width {r['width']:.3f} (null "
               f"{r['null_alpha0']:.3f}, {r['null_width']:.3f}) ({time.time() - t0:.0f} s)")
  return res


# ------------------------------------------------------------------ run

def run(config, workdir: str, stop_after: str | None = None) -> dict:
  """Runs the experiment holding its workdir (jaxcode.workdir): a rerun of a finished run
  is a no-op, a differing config or a second process is refused in one line."""
  return workdir_lib.run_owned(workdir, config, "atlas", lambda: _run(config, workdir, stop_after),
                          completed=lambda out: "stopped_after" not in out)


def _run(config, workdir: str, stop_after: str | None = None) -> dict:
  """Runs (or finishes) the atlas; `stop_after` (a STAGES name) stops early, as a kill would."""
  if stop_after is not None and stop_after not in STAGES:
    raise ConfigError(f"stop_after={stop_after!r}: expected one of {STAGES}")
  t0 = time.time()
  plan = validate(config, workdir)
  workdir_lib.write_json(os.path.join(workdir, "atlas.json"), plan["identity"])
  seconds = {}
  ext = stage_extract(config, workdir, plan)
  seconds["extract"] = time.time() - t0
  if stop_after == "extract":
    return {"stopped_after": "extract"}
  from jaxcode.data import activations
  cache_dir = os.path.join(workdir, "extract", "activations")
  cache = activations.ActivationCache.open(cache_dir)
  if cache.n_tokens <= int(config.estimates.mle_k) + 1:
    raise ConfigError(f"the corpus gave {cache.n_tokens} tokens: expected more than "
                      f"estimates.mle_k + 1 = {config.estimates.mle_k + 1}")
  t1 = time.time()
  saes = {l: stage_sae(config, workdir, plan, l, cache_dir) for l in plan["layers"]}
  seconds["sae"] = time.time() - t1
  if stop_after == "sae":
    return {"stopped_after": "sae"}
  t1 = time.time()
  est = {l: stage_estimates(config, workdir, plan, l, cache,
                            os.path.join(workdir, "sae", f"layer_{l}"), saes[l])
         for l in plan["layers"]}
  seconds["estimates"] = time.time() - t1
  if stop_after == "estimates":
    return {"stopped_after": "estimates"}
  t1 = time.time()
  fp = stage_four_properties(config, workdir, plan)
  seconds["four_properties"] = time.time() - t1
  if stop_after == "four_properties":
    return {"stopped_after": "four_properties"}
  t1 = time.time()
  nm = stage_neuromfa(config, workdir, plan)
  seconds["neuromfa"] = time.time() - t1
  from jaxcode.report import atlas as report
  results = report.assemble(config, plan, ext, saes, est, fp, nm)
  results["seconds_this_invocation"] = dict(seconds, total=time.time() - t0)
  figures = report.write_figures(results, os.path.join(workdir, "figures"))
  results["figures"] = [os.path.relpath(f, workdir) for f in figures]   # portable workdir
  workdir_lib.write_json(os.path.join(workdir, "results.json"), results)
  report.write_html(_read_json(os.path.join(workdir, "results.json")), workdir)
  _log(config, f"done in {time.time() - t0:.0f} s -> {os.path.join(workdir, 'report.html')}")
  return results
