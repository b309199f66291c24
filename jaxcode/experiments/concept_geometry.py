"""The geometry of SAE concepts: crystals, lobes and galaxy on a language model's SAEs.

run(config, workdir) writes workdir/{config.json, cache/ (activation cache), sae/layer_<i>/
(one SAE experiment per layer, unless config.sae_paths gives exported SAEs), results.json,
figures/*.png}. Rerunning resumes: the activation cache keeps complete chunks and each SAE
run resumes from its checkpoints.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from ml_collections import ConfigDict

from jaxcode.analysis import concept_geometry as cg
from jaxcode.data import activations, corpus
from jaxcode import workdir as workdir_lib
from jaxcode.models import sae_io
from jaxcode.errors import ConfigError

SOURCES = ("resid", "sae")


# ------------------------------------------------------------------ validation

def _check_layers(config, n_layers: int | None = None):
  layers = [int(l) for l in config.layers]
  if not layers or len(set(layers)) != len(layers):
    raise ConfigError(f"layers={list(config.layers)}: expected distinct block indices")
  if n_layers is not None and max(layers) >= n_layers:
    raise ConfigError(f"layers={layers}: the model has blocks 0..{n_layers - 1}")
  for name, want in (("crystals.layer", [int(config.crystals.layer)]),
                     ("lobes.layers", [int(l) for l in config.lobes.layers])):
    if any(l not in layers for l in want):
      raise ConfigError(f"{name}={want}: expected layers among config.layers={layers}")
  if config.sae_paths and len(config.sae_paths) != len(layers):
    raise ConfigError(f"sae_paths has {len(config.sae_paths)} entries: expected one per layer "
                      f"({len(layers)})")
  return layers


def validate(config, workdir: str) -> list[int]:
  """Checks that need nothing loaded."""
  layers = _check_layers(config)
  if config.crystals.source not in SOURCES:
    raise ConfigError(f"crystals.source={config.crystals.source!r}: expected one of {SOURCES}")
  for a in config.lobes.affinities:
    if a not in cg.AFFINITIES:
      raise ConfigError(f"lobes.affinities contains {a!r}: expected some of {cg.AFFINITIES}")
  cg.check_clusters(10 ** 9, config.lobes.cluster_counts)
  cg.check_block_len(int(config.lobes.block_len), int(config.corpus.seq_len))
  if config.crystals.pairs_file and not os.path.exists(config.crystals.pairs_file):
    raise ConfigError(f"crystals.pairs_file={config.crystals.pairs_file!r} does not exist")
  if not config.sae_paths:
    from jaxcode.experiments import train_sae
    train_sae.validate_settings(config.sae_train, where="sae_train.")
  workdir_lib.check_workdir(workdir)
  return layers


def load_external_sae(path: str):
  if path.endswith(".npz"):
    return sae_io.load_gemma_scope_npz(path)
  return sae_io.load_saelens(path)


def check_sae_width(sae, width: int, where: str):
  if sae.d_in != width:
    raise ConfigError(f"SAE {where} has d_in={sae.d_in} but the activations it is applied to "
                      f"have width {width}: expected the SAE of this model and hookpoint")


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
  out = {}
  for i in range(0, len(words), batch):
    ws = words[i:i + batch]
    ids, mask = lm.tokenize(ws)
    acts = np.asarray(lm.apply(ids, mask, (hookpoint,))[hookpoint])
    n_tok = [len(word_tokens(lm.tokenizer, w)) for w in ws]
    _, suffix = corpus.special_affixes(lm.tokenizer)
    last = mask.sum(1) - 1 - len(suffix)
    for j, w in enumerate(ws):
      out[w] = acts[j, last[j]]
      assert n_tok[j] >= 1
  return out


# ------------------------------------------------------------------ activations

def load_lm(config):
  from jaxcode.models.lm import load_pretrained, minilm_path
  path = minilm_path() if config.model == "minilm" else config.model
  return load_pretrained(path)


def dense_layout(cache, hookpoint: str, n_rows: int, body: int, offset: int):
  """[rows, body, D] activations of the kept tokens (the row's special prefix of `offset`
  tokens removed, so blocks start at the first text token) and their mask."""
  idx = np.arange(cache.n_tokens)
  info = cache.token_info(idx)
  col = info["col"] - offset
  x = np.zeros((n_rows, body, cache.width(hookpoint)), np.float32)
  x[info["row"], col] = cache.get(hookpoint, idx)
  valid = np.zeros((n_rows, body), bool)
  valid[info["row"], col] = True
  return x, valid


# ------------------------------------------------------------------ SAEs

def train_layer_sae(config, acts_ND: np.ndarray, workdir: str):
  """Trains the layer's TopK SAE through the SAE experiment; returns the exported SAE."""
  from jaxcode.experiments import train_sae
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "activations.npy")
  if not os.path.exists(path):
    tmp = path + ".tmp.npy"
    np.save(tmp, acts_ND.astype(np.float32))
    os.replace(tmp, path)
  t = ConfigDict(config.sae_train.to_dict())
  t.data.kind, t.data.path, t.data.seed = "array_npy", path, int(config.seed)
  t.seed = int(config.seed)
  t.lock()
  res = train_sae.run(t, workdir)
  sae = sae_io.load_saelens(os.path.join(workdir, "export", "sae"))
  return sae, {k: res[k] for k in ("l0", "explained_variance", "mse", "dead_fraction")
               if k in res}


# ------------------------------------------------------------------ run

def _summarise_lobes(res: dict) -> dict:
  out = {"n_features": res["n_features"], "n_active": res["n_active"], "blocks": res["blocks"],
         "cluster_counts": res["cluster_counts"], "affinities": {}}
  for name, per_k in res["affinities"].items():
    out["affinities"][name] = {}
    for k, r in per_k.items():
      rec = {"ami": r["ami"]["ami"], "ami_null_mean": r["ami"]["null_mean"],
             "ami_null_sd": r["ami"]["null_sd"], "ami_sigma": r["ami"]["sigma"],
             "balanced_accuracy": r["probe"]["balanced_accuracy"],
             "probe_null_mean": r["probe"]["null_mean"], "probe_null_sd": r["probe"]["null_sd"],
             "probe_sigma": r["probe"]["sigma"]}
      if "sources" in r:
        rec["sources"] = r["sources"]
      out["affinities"][name][str(k)] = rec
  return out


def run(config, workdir: str) -> dict:
  """Runs the experiment holding its workdir (jaxcode.workdir): a rerun of a finished run
  is a no-op, a differing config or a second process is refused in one line."""
  return workdir_lib.run_owned(workdir, config, "concept_geometry", lambda: _run(config, workdir))


def _run(config, workdir: str) -> dict:
  t0 = time.time()
  layers = validate(config, workdir)
  hooks = [f"blocks.{l}.{config.hook}" for l in layers]
  lm = load_lm(config)
  _check_layers(config, lm.n_layers)
  width = lm.hookpoint_width(hooks[0])
  prefix, suffix = corpus.special_affixes(lm.tokenizer)
  body = int(config.corpus.seq_len) - len(prefix) - len(suffix)
  cg.check_block_len(int(config.lobes.block_len), body)
  saes = {}
  for l, p in zip(layers, config.sae_paths):       # published SAEs: checked before compute
    saes[l] = load_external_sae(p)
    check_sae_width(saes[l], width, repr(p))
  from jaxcode.analysis.four_properties import load_relations
  if config.crystals.pairs_file:
    pairs, pair_counts = check_pairs(read_pairs(config.crystals.pairs_file), lm.tokenizer, True)
  else:
    pairs, pair_counts = check_pairs(load_relations(), lm.tokenizer, False)
  if len(pairs) < 2:
    raise ConfigError(f"crystals: {len(pairs)} relation(s) with two known pairs: expected >= 2")

  docs = corpus.load_corpus(config.corpus.spec)
  packed = corpus.pack(docs, lm.tokenizer, int(config.corpus.seq_len)).first_rows_per_source(
      int(config.corpus.max_rows_per_source))
  bs = int(config.corpus.batch_size)
  cache_dir = os.path.join(workdir, "cache")
  activations.extract(lm, packed, hooks, cache_dir, batch_size=bs,
                      rows_per_chunk=bs * 8, progress=False)
  cache = activations.ActivationCache.open(cache_dir)
  n_rows, seq_len = packed.input_ids.shape
  rng = np.random.default_rng(int(config.seed))
  sub = np.sort(rng.choice(cache.n_tokens, min(cache.n_tokens, int(config.sae_tokens)),
                           replace=False))
  sae_metrics = {}
  for l, h in zip(layers, hooks):
    if l not in saes:
      saes[l], sae_metrics[l] = train_layer_sae(
          config, np.asarray(cache.get(h, sub), np.float32),
          os.path.join(workdir, "sae", f"layer_{l}"))
  t_sae = time.time()

  # galaxy
  g = config.galaxy
  act_idx = np.sort(rng.choice(cache.n_tokens, min(cache.n_tokens, int(g.act_tokens)),
                               replace=False))
  galaxy, spectra = {}, {}
  for l, h in zip(layers, hooks):
    r = cg.galaxy_layer(saes[l].W_dec, np.asarray(cache.get(h, act_idx), np.float32),
                        int(g.lo), int(g.hi), int(g.n_sub), int(g.pca_dim), float(g.theta),
                        int(g.n_boot), int(g.n_boot_corrected), int(config.seed))
    spectra[l] = (r.pop("eigenvalues_decoder"), r.pop("eigenvalues_activations"))
    galaxy[str(l)] = r

  # lobes
  lc = config.lobes
  lobes, lobe_plots = {}, {}
  for l in [int(v) for v in lc.layers]:
    h = hooks[layers.index(l)]
    x, valid = dense_layout(cache, h, n_rows, body, len(prefix))
    sae = saes[l]
    c, t, fired, rows = cg.cooccurrence(lambda z, sae=sae: sae_io.encode(sae, z), x, valid,
                                        int(lc.block_len), float(lc.threshold),
                                        int(lc.batch_rows))
    if t == 0:
      raise ConfigError(f"lobes: no complete block of {lc.block_len} tokens in layer {l}'s "
                        f"sequences: expected block_len <= the documents' lengths")
    row_src = np.array(packed.sources + [""], dtype=object)[np.max(packed.doc_index, axis=1)]
    res = cg.lobes(c, t, sae.W_dec, lc.cluster_counts, tuple(lc.affinities),
                   int(lc.n_null_ami), int(lc.n_null_probe), fired, row_src[rows],
                   seed=42 + int(config.seed))
    lobes[str(l)] = _summarise_lobes(res)
    lobes[str(l)]["fired_fraction"] = float(np.mean(fired))
    lobe_plots[l] = res

  # crystals
  cl = int(config.crystals.layer)
  h = hooks[layers.index(cl)]
  words = sorted({w for ps in pairs.values() for p in ps for w in p})
  emb = word_embeddings(lm, words, h)
  if config.crystals.source == "sae":
    codes = np.asarray(sae_io.encode(saes[cl], np.stack([emb[w] for w in words])))
    emb = dict(zip(words, codes))
  diffs, labels, names, plist = cg.difference_vectors(emb, pairs)
  char_len = np.array([len(b) - len(a) for a, b in plist], float)
  tok_len = np.array([len(word_tokens(lm.tokenizer, b)) - len(word_tokens(lm.tokenizer, a))
                      for a, b in plist], float)
  dims = [int(d) for d in config.crystals.dims] or None
  crystals = cg.crystals(diffs, labels, char_len, dims)
  crystals["distractor_token_length"] = {
      k: v for k, v in cg.distractor(diffs, tok_len).items() if k != "direction"}
  crystals.update(layer=cl, source=config.crystals.source, relations=names, pairs=pair_counts)

  out = {"experiment": "concept_geometry", "variant": config.get("variant", ""),
         "model": config.model, "layers": layers, "hook": config.hook,
         "tokens": int(cache.n_tokens), "rows": int(n_rows),
         "sae": {str(l): sae_metrics.get(l, {"path": p}) for l, p in
                 zip(layers, list(config.sae_paths) or [None] * len(layers))},
         "crystals": crystals, "lobes": lobes, "galaxy": galaxy,
         "seconds": {"sae_and_cache": t_sae - t0, "total": time.time() - t0}}
  from jaxcode.report import concept_geometry as figs
  out["figures"] = figs.write_all(os.path.join(workdir, "figures"), diffs=diffs, labels=labels,
                                  relations=names, best_dim=crystals["best_dim"],
                                  lobes=lobes, lobe_plots=lobe_plots,
                                  w_dec={l: saes[l].W_dec for l in lobe_plots},
                                  galaxy=galaxy, spectra=spectra)
  out["seconds"]["total"] = time.time() - t0
  workdir_lib.write_json(os.path.join(workdir, "results.json"), out)
  return out
