"""The four-properties stage: per residual-stream layer of a language model, intrinsic
dimension, eigenspectrum power law and the four properties of concept representations.

`run(model, saes, block, folder)` writes folder/results.json (the stage contract,
jaxcode.pipeline.stage). Each concept word (single-token for the tokenizer in use, counts
reported) is represented at every analysed layer: the residual stream at the token
embeddings (layer 0, hookpoint 'embed') and after each block i (layer i + 1,
blocks.i.resid_post), in two contexts: inside a short template sentence and in isolation
(the word alone, with the tokenizer's special tokens); the table is reported for both.

`saes` is one SAE per analysed layer, in layer order, None for none (or None for no SAE at
all): each given one adds L0 sparsity and decoder orthogonality; without one those columns
are None. `saes_from_paths` loads them from SAELens exports given the same way ('' for none).

The block (configs/four_properties.py:stage_block, passed as it is; other fields are
ignored): template, categories_file, relations_file, batch, seed, twonn_discard, mle_k,
probe.dim, probe.folds, spectrum.lo, spectrum.hi.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable

import numpy as np

from jaxcode.analysis import four_properties as fp
from jaxcode.errors import ConfigError, positive_int
from jaxcode.estimators import intrinsic_dim, spectrum
from jaxcode.pipeline import model as model_lib
from jaxcode.pipeline import stage

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

def validate(block) -> None:
  """The block's checks that need nothing loaded (fields named as in the block)."""
  if "{word}" not in block.template:
    raise ConfigError(f"template={block.template!r}: expected a string containing {{word}}")
  for f in ("categories_file", "relations_file"):
    path = getattr(block, f)
    if path and not os.path.isfile(path):
      raise ConfigError(f"{f}={path!r} does not exist")
  positive_int("spectrum.lo", block.spectrum.lo)
  if block.spectrum.hi <= block.spectrum.lo:
    raise ConfigError(f"rank window lo={block.spectrum.lo}, hi={block.spectrum.hi}: "
                      f"expected lo < hi")
  positive_int("mle_k", block.mle_k, 2)
  positive_int("probe.dim", block.probe.dim)
  positive_int("probe.folds", block.probe.folds, 2)
  positive_int("batch", block.batch)
  if not 0.0 <= block.twonn_discard < 1.0:
    raise ConfigError(f"twonn_discard={block.twonn_discard}: expected 0 <= value < 1")


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


def load_concepts(block) -> tuple[dict, dict]:
  """({category: words}, {relation: [(a, b)]}) from the block's files or the shipped ones."""
  cats = (_read(block.categories_file, "categories") if block.categories_file
          else fp.load_categories())
  rels = (_read(block.relations_file, "relations") if block.relations_file
          else fp.load_relations())
  cats = {str(k): [str(w) for w in v] for k, v in cats.items()}
  rels = {str(k): [(str(a), str(b)) for a, b in v] for k, v in rels.items()}
  return cats, rels


def check_sizes(block, n_points: int, d_model: int, min_class: int) -> None:
  """Checks that need the filtered concept counts, before any forward pass."""
  rank = min(d_model, n_points - 1)
  lo, hi = int(block.spectrum.lo), int(block.spectrum.hi)
  if hi > rank:
    raise ConfigError(f"rank window lo={lo}, hi={hi}: the spectrum of {n_points} points in "
                      f"{d_model} dimensions has {rank} nonzero eigenvalues: expected hi <= {rank}")
  if block.mle_k >= n_points:
    raise ConfigError(f"mle_k={block.mle_k}: expected < {n_points} (the concept words kept)")
  if min_class < block.probe.folds:
    raise ConfigError(f"probe.folds={block.probe.folds}: the smallest category keeps "
                      f"{min_class} words: expected folds <= {min_class}")
  if block.probe.dim > min(d_model, n_points - n_points // block.probe.folds):
    raise ConfigError(f"probe.dim={block.probe.dim}: expected <= min(d_model={d_model}, "
                      f"training-fold size)")


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


def _kept(groups: dict, ok: set, counts: dict, keep: Callable) -> dict:
  """The groups with >= 2 kept members; counts[name] = total/kept/dropped."""
  out = {}
  for name, items in groups.items():
    kept = keep(items, ok)
    counts[name] = dict(total=len(items), kept=len(kept), dropped=len(items) - len(kept))
    if len(kept) >= 2:
      out[name] = kept
  return out


def filter_concepts(tokenizer, cats: dict, rels: dict, template: str):
  """Single-token filtering of categories and relations, with counts; ConfigError when
  nothing (or fewer than 2 categories / no relation with 2 pairs) is left."""
  all_words = [w for ws in cats.values() for w in ws]
  all_words += [w for ps in rels.values() for p in ps for w in p]
  _, ok = encode_words(tokenizer, all_words, template)
  ok = set(ok)
  fp.filter_single_token(all_words, lambda w: 1 if w in ok else 0, "concept list")
  counts = dict(categories={}, relations={})
  cats_kept = _kept(cats, ok, counts["categories"],
                    lambda ws, ok: list(dict.fromkeys(w for w in ws if w in ok)))
  if len(cats_kept) < 2:
    raise ConfigError(f"concept list: {len(cats_kept)} categories keep >= 2 single-token "
                      f"words for this tokenizer: expected at least 2 categories")
  rels_kept = _kept(rels, ok, counts["relations"],
                    lambda ps, ok: [p for p in ps if p[0] in ok and p[1] in ok])
  if not rels_kept:
    raise ConfigError("relation list: no relation keeps 2 pairs of single-token words for "
                      "this tokenizer: expected at least one")
  return cats_kept, rels_kept, counts


# ------------------------------------------------------------------ activations

def hookpoints(n_layers: int) -> list[str]:
  """The analysed layers' hookpoints, in layer order: embed, then each block's output."""
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
    ids_BT = np.full((batch, length), pad, np.int32)
    mask_BT = np.zeros((batch, length), np.int32)
    mask_BT[len(idx):, 0] = 1                   # padding rows: one visible token, discarded
    for r, i in enumerate(idx):
      ids_BT[r, :len(ids_list[i])] = ids_list[i]
      mask_BT[r, :len(ids_list[i])] = 1
    acts = lm.apply(ids_BT, mask_BT, hooks)
    pos = np.asarray([positions[i] for i in idx])
    for h in hooks:
      out[h].append(np.asarray(acts[h])[np.arange(len(idx)), pos])
  return {h: np.concatenate(parts).astype(np.float32) for h, parts in out.items()}


# ------------------------------------------------------------------ SAEs

def saes_from_paths(paths, n_layers: int, d_model: int) -> list | None:
  """Dictionaries (SAELens exports or any layout jaxcode.models.sae_formats reads), one per
  analysed layer in layer order ('' for none), loaded (None for '', and None for no paths at
  all); n_layers counts the analysed layers (embed included)."""
  paths = list(paths)
  if not paths:
    return None
  if len(paths) != n_layers:
    raise ConfigError(f"sae_paths has {len(paths)} entries: expected one per analysed layer "
                      f"({n_layers}: embed and each block), '' for none")
  from jaxcode.models import sae_formats, sae_io
  saes = []
  for i, p in enumerate(paths):
    if not p:
      saes.append(None)
      continue
    sae = sae_formats.load_dictionary(p)          # any published layout
    sae_io.check_width(sae, d_model, "embed" if i == 0 else f"blocks.{i - 1}.resid_post")
    saes.append(sae)
  return saes


# ------------------------------------------------------------------ one layer

def _sae_columns(sae, x_ND) -> dict:
  if sae is None:
    return dict(l0_sparsity=None, sae_orthogonality=None)
  from jaxcode.models import sae_io
  return dict(l0_sparsity=fp.l0_sparsity(np.asarray(sae_io.encode(sae, x_ND))),
              sae_orthogonality=fp.orthogonality(sae.W_dec))


def layer_row(block, x_ND, labels_N, vocab_VD, quads_Q4, quad_rel, sae) -> dict:
  """One layer's table row: intrinsic dimension, spectrum, the four properties, SAE columns."""
  lo, hi = int(block.spectrum.lo), int(block.spectrum.hi)
  lam_K = np.asarray(spectrum.eigenvalues(x_ND))
  ols = spectrum.powerlaw_fit(lam_K, lo, hi, "ols")
  rank = spectrum.powerlaw_fit(lam_K, lo, hi, "rank")
  row = dict(
      n_points=int(x_ND.shape[0]),
      twonn=intrinsic_dim.twonn(x_ND, discard_fraction=block.twonn_discard),
      mle=intrinsic_dim.mle(x_ND, k=int(block.mle_k)),
      participation_ratio=intrinsic_dim.participation_ratio(x_ND),
      slope=ols["slope"], slope_r2=ols["r2"], intercept=ols["intercept"],
      slope_stringer=rank["slope"], slope_stringer_r2=rank["r2"],
      log_volume=ols["log_volume"],
      abstraction=fp.abstraction_ratio(x_ND, labels_N),
      precision=fp.probe_precision(x_ND, labels_N, dim=int(block.probe.dim),
                                   folds=int(block.probe.folds), seed=int(block.seed)),
      specificity=fp.specificity(x_ND, labels_N),
  )
  hit_Q = fp.analogy_predictions(vocab_VD, quads_Q4) == quads_Q4[:, 3]
  row["systematicity"] = float(np.mean(hit_Q))
  names = np.asarray(quad_rel)
  row["systematicity_by_relation"] = {r: float(np.mean(hit_Q[names == r]))
                                      for r in dict.fromkeys(quad_rel)}
  row["pass"] = fp.passes(row)
  row.update(_sae_columns(sae, x_ND))
  row["eigenvalues"] = lam_K[:min(len(lam_K), x_ND.shape[0] - 1)].tolist()   # nonzero ranks
  return row


# ------------------------------------------------------------------ the table

def concept_set(block, lm, cats: dict, rels: dict) -> dict:
  """The filtered concepts, their labels, vocabulary, analogy quads and encodings; every
  size check passes before this returns (nothing has run through the model yet)."""
  cats, rels, counts = filter_concepts(lm.tokenizer, cats, rels, block.template)
  cat_words = [w for ws in cats.values() for w in ws]
  labels_N = np.asarray([i for i, ws in enumerate(cats.values()) for _ in ws], np.int32)
  check_sizes(block, len(cat_words), lm.d_model, min(len(v) for v in cats.values()))
  vocab = list(dict.fromkeys(cat_words + [w for ps in rels.values() for p in ps for w in p]))
  quads_Q4, quad_rel = fp.analogy_quads(rels, vocab)
  enc, kept = encode_words(lm.tokenizer, vocab, block.template)
  assert kept == vocab
  at = {w: i for i, w in enumerate(vocab)}
  counts.update(category_words=len(cat_words), vocabulary=len(vocab), quads=int(len(quads_Q4)),
                categories_used=len(cats), relations_used=len(rels))
  return dict(labels_N=labels_N, quads_Q4=quads_Q4, quad_rel=quad_rel, enc=enc, counts=counts,
              cat_idx=np.asarray([at[w] for w in cat_words]))


def _log_row(ctx: str, row: dict) -> None:
  print(f"{ctx} layer {row['layer']}: twonn {row['twonn']:.2f} mle {row['mle']:.2f} slope "
        f"{row['slope']:.3f} (R2 {row['slope_r2']:.3f}) abs {row['abstraction']:.2f} "
        f"prec {row['precision']:.3f} spec {row['specificity']:.3f} sys "
        f"{row['systematicity']:.3f}", flush=True)


def table(block, lm, concepts: dict, saes: list) -> dict:
  """{context: [row per analysed layer]}."""
  hooks = hookpoints(lm.n_layers)
  enc = concepts["enc"]
  length = max(len(ids) for ctx in CONTEXTS for ids in enc[ctx][0])
  out = {}
  for ctx in CONTEXTS:
    acts = represent(lm, enc[ctx][0], enc[ctx][1], hooks, int(block.batch), length)
    rows = []
    for li, h in enumerate(hooks):
      v_VD = acts[h]
      row = dict(layer=li, hookpoint=h)
      row.update(layer_row(block, v_VD[concepts["cat_idx"]], concepts["labels_N"], v_VD,
                           concepts["quads_Q4"], concepts["quad_rel"], saes[li]))
      rows.append(row)
      _log_row(ctx, row)
    out[ctx] = rows
  return out


# ------------------------------------------------------------------ the stage

def _results(block, lm, name: str, saes, counts: dict, rows: dict, seconds: float) -> dict:
  return dict(
      model=name, model_dir=lm.model_dir, model_type=lm.model_type,
      n_layers=lm.n_layers, d_model=lm.d_model, template=block.template,
      contexts={"template": f"the word inside {block.template!r}, read at its token",
                "isolated": "the word alone (' ' + word) with the tokenizer's special tokens"},
      rank_window=dict(lo=int(block.spectrum.lo), hi=int(block.spectrum.hi)),
      pass_marks=fp.PASS_MARKS, definitions=DEFINITIONS, counts=counts,
      sae=[s is not None for s in saes] if saes is not None else "absent",
      seconds=seconds, table=rows)


def compute(lm, saes: list | None, block, name: str, cats: dict, rels: dict) -> dict:
  """The stage's results (no files written): the table with its definitions and counts."""
  hooks = hookpoints(lm.n_layers)
  if saes is not None and len(saes) != len(hooks):
    raise ConfigError(f"saes has {len(saes)} entries: expected one per analysed layer "
                      f"({len(hooks)}: embed and each block), None for none")
  concepts = concept_set(block, lm, cats, rels)
  t0 = time.time()
  rows = table(block, lm, concepts, saes if saes is not None else [None] * len(hooks))
  return _results(block, lm, name, saes, concepts["counts"], rows, time.time() - t0)


def run(model, saes: list | None, block, folder: str, name: str | None = None,
        figures: Callable[[dict, str], list[str]] | None = None, log: bool = True) -> dict:
  """The stage: folder/results.json (reused when complete). `model` is a loaded PretrainedLM
  or a ModelSpec (loaded here, after the block's checks); `name` is what results record as
  the model (default: the spec as given, or the loaded model's directory); `figures(results,
  figdir)`, when given, writes folder/figures before results.json and returns their paths."""
  def work() -> dict:
    validate(block)
    cats, rels = load_concepts(block)
    lm = model_lib.load(model) if isinstance(model, model_lib.ModelSpec) else model
    label = name or (model.spec if isinstance(model, model_lib.ModelSpec) else lm.model_dir)
    out = compute(lm, saes, block, label, cats, rels)
    if figures is not None:
      out["figures"] = figures(out, os.path.join(folder, "figures"))
    return out
  return stage.run_stage("four_properties", folder, work, log=log)
