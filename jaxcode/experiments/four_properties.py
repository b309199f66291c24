"""The feature-atlas table: per residual-stream layer of a language model, intrinsic
dimension, eigenspectrum power law and the four properties of concept representations.

run(config, workdir) writes workdir/{config.json, results.json, figures/*.png}. Each concept
word (single-token for the tokenizer in use, counts reported) is represented at every layer's
residual stream (embed, then blocks.i.resid_post) in two contexts: inside a short template
sentence and in isolation (the word alone, with the tokenizer's special tokens); the table
is reported for both. Optional SAELens exports per layer add L0 sparsity and decoder
orthogonality; without one those columns are reported absent (None).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from jaxcode.analysis import four_properties as fp
from jaxcode.estimators import intrinsic_dim, spectrum
from jaxcode import workdir as workdir_lib
from jaxcode.errors import ConfigError

CONTEXTS = ("template", "isolated")

DEFINITIONS = dict(
    layer="index into the residual stream: 0 = token embeddings (hookpoint 'embed'), "
          "i >= 1 = output of block i-1 (hookpoint blocks.{i-1}.resid_post)",
    hookpoint="the model hookpoint the representations are read from",
    n_points="concept words (single-token, all categories) represented at this layer",
    twonn="TwoNN intrinsic dimension (Facco et al. 2017): least squares through the origin "
          "of -ln(1 - i/N) on sorted ln(r2/r1), largest discard_fraction of ratios dropped",
    mle="Levina-Bickel MLE intrinsic dimension with k neighbours, harmonic mean over points "
        "(MacKay-Ghahramani)",
    participation_ratio="(sum lambda)^2 / sum lambda^2 of the covariance eigenvalues",
    slope="OLS slope of ln(eigenvalue) against ln(rank) over the declared rank window "
          "(1-based, inclusive)",
    slope_r2="R^2 of that OLS fit",
    slope_stringer="Stringer et al. 2019 fit over the same window: weights 1/rank, "
                   "eigenvalues normalised by their sum",
    slope_stringer_r2="weighted R^2 of the Stringer fit",
    log_volume="sum of ln(eigenvalue) over the rank window",
    abstraction="mean inter-category over mean intra-category pairwise Euclidean distance "
                "(pass > 2.0)",
    precision="cross-validated accuracy of a logistic-regression category probe on an "
              "8-dimensional PCA projection fitted in each training fold (pass > 0.9)",
    specificity="1 - mean |cos| between centred category-mean directions (pass > 0.7)",
    systematicity="3CosAdd analogy accuracy over the evaluation vocabulary (category and "
                  "relation words), the three query words excluded (pass > 0.7)",
    systematicity_by_relation="3CosAdd accuracy per relation",
    pass_="per property: value > pass mark",
    l0_sparsity="fraction of active SAE latents on the concept representations (None: no "
                "SAE given for this layer)",
    sae_orthogonality="1 - mean |cos| between SAE decoder directions (None: no SAE given)",
)


# ------------------------------------------------------------------ validation

def _pos_int(name: str, v, low: int = 1) -> int:
  if int(v) != v or v < low:
    raise ConfigError(f"{name}={v}: expected an integer >= {low}")
  return int(v)


def validate(config, workdir: str) -> None:
  """Checks that need nothing loaded."""
  if "{word}" not in config.template:
    raise ConfigError(f"template={config.template!r}: expected a string containing {{word}}")
  for f in ("categories_file", "relations_file"):
    path = getattr(config, f)
    if path and not os.path.isfile(path):
      raise ConfigError(f"{f}={path!r} does not exist")
  _pos_int("spectrum.lo", config.spectrum.lo)
  if config.spectrum.hi <= config.spectrum.lo:
    raise ConfigError(f"rank window lo={config.spectrum.lo}, hi={config.spectrum.hi}: "
                      f"expected lo < hi")
  _pos_int("mle_k", config.mle_k, 2)
  _pos_int("probe.dim", config.probe.dim)
  _pos_int("probe.folds", config.probe.folds, 2)
  _pos_int("batch", config.batch)
  if not 0.0 <= config.twonn_discard < 1.0:
    raise ConfigError(f"twonn_discard={config.twonn_discard}: expected 0 <= value < 1")
  workdir_lib.check_workdir(workdir)


def _read(path: str, key: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      d = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ConfigError(f"concept file {path!r}: not readable JSON ({e})") from None
  d = d.get(key, d) if isinstance(d, dict) else None
  if not isinstance(d, dict):
    raise ConfigError(f"concept file {path!r}: expected {{{key!r}: {{name: [...]}}}}")
  return d


def load_concepts(config) -> tuple[dict, dict]:
  cats = (_read(config.categories_file, "categories") if config.categories_file
          else fp.load_categories())
  rels = (_read(config.relations_file, "relations") if config.relations_file
          else fp.load_relations())
  cats = {str(k): [str(w) for w in v] for k, v in cats.items()}
  rels = {str(k): [(str(a), str(b)) for a, b in v] for k, v in rels.items()}
  return cats, rels


def model_path(config) -> str:
  if config.model == "minilm":
    from jaxcode.models.lm import minilm_path
    return minilm_path()
  return config.model


# ------------------------------------------------------------------ tokens

def _encode(tokenizer, text: str, special: bool):
  enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
  return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def word_position(tokenizer, text: str, start: int, end: int, special: bool):
  """(ids, index of the one token covering text[start:end]) or None if the word spans
  several tokens or is the unknown token."""
  ids, offs = _encode(tokenizer, text, special)
  hit = [i for i, (a, b) in enumerate(offs) if a < end and b > start and b > a]
  if len(hit) != 1:
    return None
  i = hit[0]
  if tokenizer.unk_token_id is not None and ids[i] == tokenizer.unk_token_id:
    return None
  a, b = offs[i]
  if a > start or b < end:     # the token is larger than the word (merged with a neighbour)
    return None
  return ids, i


def contexts_for(word: str, template: str) -> dict[str, tuple[str, int, int]]:
  """{context: (text, word start, word end)}; isolated = the word after one space (how it
  appears in the template for byte-level BPE; wordpiece tokenizers strip the space)."""
  s = template.index("{word}")
  text = template.replace("{word}", word, 1)
  return dict(template=(text, s, s + len(word)), isolated=(" " + word, 1, 1 + len(word)))


def encode_words(tokenizer, words, template: str) -> tuple[dict, list[str]]:
  """{context: (ids list, positions)} for the words that are one known token in both
  contexts, and the kept words."""
  kept, enc = [], {c: ([], []) for c in CONTEXTS}
  for w in dict.fromkeys(words):
    got = {c: word_position(tokenizer, t, s, e, True)
           for c, (t, s, e) in contexts_for(w, template).items()}
    bare = _encode(tokenizer, " " + w, False)[0]
    if any(v is None for v in got.values()) or len(bare) != 1:
      continue
    kept.append(w)
    for c, (ids, i) in got.items():
      enc[c][0].append(ids)
      enc[c][1].append(i)
  return enc, kept


def filter_concepts(tokenizer, cats: dict, rels: dict, template: str):
  """Single-token filtering of categories and relations, with counts; ConfigError when
  nothing (or fewer than 2 categories / no relation with 2 pairs) is left."""
  all_words = [w for ws in cats.values() for w in ws]
  all_words += [w for ps in rels.values() for p in ps for w in p]
  _, ok = encode_words(tokenizer, all_words, template)
  ok = set(ok)
  one = lambda w: 1 if w in ok else 0
  fp.filter_single_token(all_words, one, "concept list")   # one line if nothing is left
  counts = dict(categories={}, relations={})
  cats_kept = {}
  for name, ws in cats.items():
    kept = list(dict.fromkeys(w for w in ws if w in ok))
    counts["categories"][name] = dict(total=len(ws), kept=len(kept), dropped=len(ws) - len(kept))
    if len(kept) >= 2:
      cats_kept[name] = kept
  if len(cats_kept) < 2:
    raise ConfigError(f"concept list: {len(cats_kept)} categories keep >= 2 single-token "
                      f"words for this tokenizer: expected at least 2 categories")
  rels_kept = {}
  for name, ps in rels.items():
    kept = [p for p in ps if p[0] in ok and p[1] in ok]
    counts["relations"][name] = dict(total=len(ps), kept=len(kept), dropped=len(ps) - len(kept))
    if len(kept) >= 2:
      rels_kept[name] = kept
  if not rels_kept:
    raise ConfigError("relation list: no relation keeps 2 pairs of single-token words for "
                      "this tokenizer: expected at least one")
  return cats_kept, rels_kept, counts


def check_sizes(config, n_points: int, d_model: int, min_class: int) -> None:
  """Checks that need the filtered concept counts, before any forward pass."""
  rank = min(d_model, n_points - 1)
  lo, hi = int(config.spectrum.lo), int(config.spectrum.hi)
  if hi > rank:
    raise ConfigError(f"rank window lo={lo}, hi={hi}: the spectrum of {n_points} points in "
                      f"{d_model} dimensions has {rank} nonzero eigenvalues: expected hi <= {rank}")
  if config.mle_k >= n_points:
    raise ConfigError(f"mle_k={config.mle_k}: expected < {n_points} (the concept words kept)")
  if min_class < config.probe.folds:
    raise ConfigError(f"probe.folds={config.probe.folds}: the smallest category keeps "
                      f"{min_class} words: expected folds <= {min_class}")
  if config.probe.dim > min(d_model, n_points - n_points // config.probe.folds):
    raise ConfigError(f"probe.dim={config.probe.dim}: expected <= min(d_model={d_model}, "
                      f"training-fold size)")


# ------------------------------------------------------------------ activations

def hookpoints(n_layers: int) -> list[str]:
  return ["embed"] + [f"blocks.{i}.resid_post" for i in range(n_layers)]


def represent(lm, ids_list, positions, hooks, batch: int, length: int) -> dict[str, np.ndarray]:
  """{hookpoint: (N, D)} activation at each sequence's word position. Every forward pass has
  the same shape (batch, length), right-padded, so the model compiles once."""
  pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
  n = len(ids_list)
  batch = min(batch, n)
  out = {h: [] for h in hooks}
  for s in range(0, n, batch):
    idx = np.arange(s, min(s + batch, n))
    ids = np.full((batch, length), pad, np.int32)
    mask = np.zeros((batch, length), np.int32)
    mask[len(idx):, 0] = 1                      # padding rows: one visible token, discarded
    for r, i in enumerate(idx):
      ids[r, :len(ids_list[i])] = ids_list[i]
      mask[r, :len(ids_list[i])] = 1
    acts = lm.apply(ids, mask, hooks)
    pos = np.asarray([positions[i] for i in idx])
    for h in hooks:
      out[h].append(np.asarray(acts[h])[np.arange(len(idx)), pos])
  return {h: np.concatenate(parts).astype(np.float32) for h, parts in out.items()}


# ------------------------------------------------------------------ SAEs

def load_saes(config, n_hooks: int, d_model: int) -> list:
  paths = list(config.sae_paths)
  if not paths:
    return [None] * n_hooks
  if len(paths) != n_hooks:
    raise ConfigError(f"sae_paths has {len(paths)} entries: expected one per residual layer "
                      f"({n_hooks}: embed and each block), '' for none")
  from jaxcode.models import sae_io
  saes = []
  for i, p in enumerate(paths):
    if not p:
      saes.append(None)
      continue
    if not os.path.isdir(p):
      raise ConfigError(f"sae_paths[{i}]={p!r} is not a directory: expected a SAELens export")
    sae = sae_io.load_saelens(p)
    if sae.d_in != d_model:
      raise ConfigError(f"sae_paths[{i}]={p!r} has d_in={sae.d_in}: expected the model width "
                        f"{d_model}")
    saes.append(sae)
  return saes


# ------------------------------------------------------------------ one layer

def layer_row(config, x_ND, labels_N, vocab_VD, quads, quad_rel, sae) -> dict:
  lo, hi = int(config.spectrum.lo), int(config.spectrum.hi)
  lam = np.asarray(spectrum.eigenvalues(x_ND))
  ols = spectrum.powerlaw_fit(lam, lo, hi, "ols")
  rank = spectrum.powerlaw_fit(lam, lo, hi, "rank")
  row = dict(
      n_points=int(x_ND.shape[0]),
      twonn=intrinsic_dim.twonn(x_ND, discard_fraction=config.twonn_discard),
      mle=intrinsic_dim.mle(x_ND, k=int(config.mle_k)),
      participation_ratio=intrinsic_dim.participation_ratio(x_ND),
      slope=ols["slope"], slope_r2=ols["r2"], intercept=ols["intercept"],
      slope_stringer=rank["slope"], slope_stringer_r2=rank["r2"],
      log_volume=ols["log_volume"],
      abstraction=fp.abstraction_ratio(x_ND, labels_N),
      precision=fp.probe_precision(x_ND, labels_N, dim=int(config.probe.dim),
                                   folds=int(config.probe.folds), seed=int(config.seed)),
      specificity=fp.specificity(x_ND, labels_N),
  )
  pred = fp.analogy_predictions(vocab_VD, quads)
  hit = pred == quads[:, 3]
  row["systematicity"] = float(np.mean(hit))
  names = np.asarray(quad_rel)
  row["systematicity_by_relation"] = {r: float(np.mean(hit[names == r]))
                                      for r in dict.fromkeys(quad_rel)}
  row["pass"] = fp.passes(row)
  if sae is None:
    row["l0_sparsity"] = row["sae_orthogonality"] = None
  else:
    from jaxcode.models import sae_io
    row["l0_sparsity"] = fp.l0_sparsity(np.asarray(sae_io.encode(sae, x_ND)))
    row["sae_orthogonality"] = fp.orthogonality(sae.W_dec)
  row["eigenvalues"] = lam[:min(len(lam), x_ND.shape[0] - 1)].tolist()   # the nonzero ranks
  return row


# ------------------------------------------------------------------ run

def run(config, workdir: str) -> dict:
  """Runs the experiment holding its workdir (jaxcode.workdir): a rerun of a finished run
  is a no-op, a differing config or a second process is refused in one line."""
  return workdir_lib.run_owned(workdir, config, "four_properties", lambda: _run(config, workdir))


def _run(config, workdir: str) -> dict:
  validate(config, workdir)
  cats, rels = load_concepts(config)
  from jaxcode.models.lm import load_pretrained
  lm = load_pretrained(model_path(config), revision=config.revision or None)
  hooks = hookpoints(lm.n_layers)
  saes = load_saes(config, len(hooks), lm.d_model)
  cats, rels, counts = filter_concepts(lm.tokenizer, cats, rels, config.template)
  cat_words = [w for ws in cats.values() for w in ws]
  labels = np.asarray([i for i, ws in enumerate(cats.values()) for _ in ws], np.int32)
  check_sizes(config, len(cat_words), lm.d_model, min(len(v) for v in cats.values()))
  vocab = list(dict.fromkeys(cat_words + [w for ps in rels.values() for p in ps for w in p]))
  quads, quad_rel = fp.analogy_quads(rels, vocab)

  t0 = time.time()
  enc, kept = encode_words(lm.tokenizer, vocab, config.template)
  assert kept == vocab
  at = {w: i for i, w in enumerate(vocab)}
  cat_idx = np.asarray([at[w] for w in cat_words])
  length = max(len(ids) for ctx in CONTEXTS for ids in enc[ctx][0])
  table = {}
  for ctx in CONTEXTS:
    acts = represent(lm, enc[ctx][0], enc[ctx][1], hooks, int(config.batch), length)
    rows = []
    for li, h in enumerate(hooks):
      v = acts[h]
      row = dict(layer=li, hookpoint=h)
      row.update(layer_row(config, v[cat_idx], labels, v, quads, quad_rel, saes[li]))
      rows.append(row)
      print(f"{ctx} layer {li}: twonn {row['twonn']:.2f} mle {row['mle']:.2f} slope "
            f"{row['slope']:.3f} (R2 {row['slope_r2']:.3f}) abs {row['abstraction']:.2f} "
            f"prec {row['precision']:.3f} spec {row['specificity']:.3f} sys "
            f"{row['systematicity']:.3f}", flush=True)
    table[ctx] = rows
  seconds = time.time() - t0

  counts.update(category_words=len(cat_words), vocabulary=len(vocab), quads=int(len(quads)),
                categories_used=len(cats), relations_used=len(rels))
  results = dict(
      model=config.model, model_dir=lm.model_dir, model_type=lm.model_type,
      n_layers=lm.n_layers, d_model=lm.d_model, template=config.template,
      contexts={"template": f"the word inside {config.template!r}, read at its token",
                "isolated": "the word alone (' ' + word) with the tokenizer's special tokens"},
      rank_window=dict(lo=int(config.spectrum.lo), hi=int(config.spectrum.hi)),
      pass_marks=fp.PASS_MARKS, definitions=DEFINITIONS, counts=counts,
      sae=[bool(s) for s in config.sae_paths] if config.sae_paths else "absent",
      seconds=seconds, table=table)
  from jaxcode.report import four_properties as report
  results["figures"] = report.write_all(results, os.path.join(workdir, "figures"))
  workdir_lib.write_json(os.path.join(workdir, "results.json"), results)
  return results
