"""Feature-atlas metrics: the four properties of concept representations, plus SAE sparsity
and feature orthogonality, as functions of arrays.

Pass marks (seed report on DNN feature encoding):
- abstraction (high-dimensional): mean inter-class over mean intra-class pairwise Euclidean
  distance of concept representations, > 2.0;
- precision (low-dimensional): cross-validated accuracy of a linear probe (sklearn
  LogisticRegression) on an 8-dimensional projection (PCA fitted inside each training fold,
  or given columns such as the top SAE features), > 0.9;
- specificity: 1 - mean |cos| between class-mean directions (centred on the mean of all
  points by default, so a shared offset does not count as overlap), > 0.7;
- systematicity: 3CosAdd analogy accuracy over the evaluation vocabulary, the three query
  words excluded from the candidates, > 0.7.
Also: L0 sparsity (fraction of active latents) and orthogonality of decoder directions
(1 - mean |cos| over distinct pairs, blocked so an M x M matrix is never formed).

Concept data shipped with the package: resources/concepts/categories.json and
relations.json (`load_categories`, `load_relations`), filtered at run time to words that
are one token for the tokenizer in use (`filter_single_token`, counts kept).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcode.errors import ConfigError

PASS_MARKS = dict(abstraction=2.0, precision=0.9, specificity=0.7, systematicity=0.7)
TEMPLATE = "This is a sentence about {word}."


# ------------------------------------------------------------------ input checks

def _check_x(x, name: str = "x", min_n: int = 2) -> jax.Array:
  if not isinstance(x, jax.Array):
    x = np.asarray(x)
  if x.ndim != 2:
    raise ConfigError(f"{name} has shape {tuple(x.shape)}: expected a 2-D array (N, d)")
  if x.shape[0] < min_n:
    raise ConfigError(f"{name} has {x.shape[0]} rows: expected at least {min_n}")
  finite = np.isfinite(x).all() if isinstance(x, np.ndarray) else jnp.isfinite(x).all()
  if not bool(finite):
    raise ConfigError(f"{name} contains NaN or Inf: expected finite values")
  return jnp.asarray(x)


def _check_labels(labels, n: int, min_classes: int = 2) -> np.ndarray:
  lab = np.asarray(labels)
  if lab.shape != (n,):
    raise ConfigError(f"labels has shape {lab.shape}: expected ({n},), one per row")
  _, lab = np.unique(lab, return_inverse=True)
  n_cls = int(lab.max()) + 1 if n else 0
  if n_cls < min_classes:
    raise ConfigError(f"labels has {n_cls} classes: expected at least {min_classes}")
  return lab.astype(np.int32)


# ------------------------------------------------------------------ abstraction

@functools.partial(jax.jit, static_argnames=("block",))
def _pair_distance_sums(x_ND, lab_N, block: int):
  """(sum, count) of pairwise distances within and between classes, i != j, in row blocks."""
  n = x_ND.shape[0]
  nb = -(-n // block)
  xp = jnp.pad(x_ND, ((0, nb * block - n), (0, 0)))
  lp = jnp.pad(lab_N, (0, nb * block - n), constant_values=-1)
  sq = jnp.sum(x_ND * x_ND, axis=1)

  def one(b):
    xb = lax.dynamic_slice_in_dim(xp, b * block, block)
    lb = lax.dynamic_slice_in_dim(lp, b * block, block)
    ib = b * block + jnp.arange(block)
    d2 = jnp.sum(xb * xb, axis=1)[:, None] + sq[None, :] - 2.0 * xb @ x_ND.T
    dist = jnp.sqrt(jnp.maximum(d2, 0.0))
    valid = (lb[:, None] >= 0) & (ib[:, None] != jnp.arange(n)[None, :])
    same = (lb[:, None] == lab_N[None, :]) & valid
    diff = (lb[:, None] != lab_N[None, :]) & valid
    return (jnp.sum(jnp.where(same, dist, 0.0)), jnp.sum(same),
            jnp.sum(jnp.where(diff, dist, 0.0)), jnp.sum(diff))

  s_in, c_in, s_out, c_out = lax.map(one, jnp.arange(nb))
  return s_in.sum(), c_in.sum(), s_out.sum(), c_out.sum()


def abstraction_ratio(x, labels, block: int = 1024) -> float:
  """Mean inter-class over mean intra-class pairwise Euclidean distance (i != j)."""
  x = _check_x(x)
  lab = _check_labels(labels, x.shape[0])
  if np.bincount(lab).max() < 2:
    raise ConfigError("labels: every class has one point; the intra-class distance needs a "
                      "class with at least 2")
  x = x - jnp.mean(x, axis=0)
  s_in, c_in, s_out, c_out = _pair_distance_sums(x, jnp.asarray(lab), block)
  mean_in = float(s_in) / float(c_in)
  if mean_in == 0.0:
    raise ConfigError("x: every class collapses to one point; the abstraction ratio is "
                      "undefined")
  return (float(s_out) / float(c_out)) / mean_in


# ------------------------------------------------------------------ precision

def probe_precision(x, labels, dim: int = 8, projection: str | Sequence[int] = "pca",
                    folds: int = 5, seed: int = 0, max_iter: int = 1000) -> float:
  """Cross-validated accuracy of a logistic-regression probe on a dim-dimensional
  projection: 'pca' (fitted on each training fold only) or a list of `dim` column indices
  (e.g. the top SAE features). Stratified folds, shuffled with `seed`."""
  from sklearn.decomposition import PCA
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import StratifiedKFold, cross_val_score
  from sklearn.pipeline import make_pipeline

  xn = np.asarray(_check_x(x), dtype=np.float64)
  lab = _check_labels(labels, xn.shape[0])
  if np.bincount(lab).min() < folds:
    raise ConfigError(f"labels: the smallest class has {np.bincount(lab).min()} points: "
                      f"{folds}-fold cross-validation needs at least {folds} per class")
  if isinstance(projection, str):
    if projection != "pca":
      raise ConfigError(f"projection={projection!r}: expected 'pca' or a list of columns")
    if not 1 <= dim <= min(xn.shape[1], xn.shape[0] - xn.shape[0] // folds):
      raise ConfigError(f"dim={dim}: expected 1 <= dim <= min(d, training-fold size)")
    model = make_pipeline(PCA(n_components=dim), LogisticRegression(max_iter=max_iter))
  else:
    cols = np.asarray(projection, dtype=int)
    if cols.shape != (dim,) or cols.min() < 0 or cols.max() >= xn.shape[1]:
      raise ConfigError(f"projection has {cols.size} columns: expected {dim} indices in "
                        f"[0, {xn.shape[1]})")
    xn = xn[:, cols]
    model = LogisticRegression(max_iter=max_iter)
  cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
  return float(np.mean(cross_val_score(model, xn, lab, cv=cv)))


# ------------------------------------------------------------------ specificity

@jax.jit
def _mean_abs_cos(v_KD):
  u = v_KD / jnp.linalg.norm(v_KD, axis=1, keepdims=True)
  c = jnp.abs(u @ u.T)
  k = v_KD.shape[0]
  return (jnp.sum(c) - jnp.trace(c)) / (k * (k - 1))


def mean_abs_cos_offdiag(v_KD) -> float:
  """Mean |cos| over distinct pairs of rows (rows with zero norm are an error)."""
  v = jnp.asarray(v_KD)
  if bool(jnp.any(jnp.linalg.norm(v, axis=1) == 0)):
    raise ConfigError("a direction has zero norm: cosines are undefined")
  return float(_mean_abs_cos(v))


@functools.partial(jax.jit, static_argnames=("n_cls", "center"))
def _class_means(x_ND, lab_N, n_cls: int, center: bool):
  means = jax.ops.segment_sum(x_ND, lab_N, n_cls) / jnp.bincount(lab_N, length=n_cls)[:, None]
  return means - jnp.mean(x_ND, axis=0) if center else means


def specificity(x, labels, center: bool = True) -> float:
  """1 - mean |cos| between class-mean directions (centred on the mean of all points).

  Centred class means of K equal-sized classes sum to zero, so they cannot all be
  orthogonal: with K = 14 categories the best attainable value is about 1 - 1/(K - 1)."""
  x = _check_x(x)
  lab = _check_labels(labels, x.shape[0])
  means = _class_means(x, jnp.asarray(lab), int(lab.max()) + 1, center)
  return 1.0 - mean_abs_cos_offdiag(means)


# ------------------------------------------------------------------ systematicity

def analogy_quads(pairs_by_relation: dict[str, Sequence[tuple[str, str]]],
                  vocab: Sequence[str]) -> tuple[np.ndarray, list[str]]:
  """(Q, 4) vocabulary indices (a, b, c, d) for 'a is to b as c is to d' from every ordered
  pair of distinct pairs within each relation, and each quad's relation name."""
  index = {w: i for i, w in enumerate(vocab)}
  quads, names = [], []
  for rel, pairs in pairs_by_relation.items():
    pairs = [(a, b) for a, b in pairs if a in index and b in index]
    for i, (a, b) in enumerate(pairs):
      for j, (c, d) in enumerate(pairs):
        if i != j:
          quads.append((index[a], index[b], index[c], index[d]))
          names.append(rel)
  if not quads:
    raise ConfigError("analogy_quads: no relation has 2 pairs inside the vocabulary")
  return np.asarray(quads, dtype=np.int32), names


@functools.partial(jax.jit, static_argnames=("block",))
def _three_cos_add(e_VD, quads_Q4, block: int):
  u = e_VD / jnp.linalg.norm(e_VD, axis=1, keepdims=True)
  qn = quads_Q4.shape[0]
  nb = -(-qn // block)
  qp = jnp.pad(quads_Q4, ((0, nb * block - qn), (0, 0)))

  def one(b):
    qb = lax.dynamic_slice_in_dim(qp, b * block, block)
    target = u[qb[:, 1]] - u[qb[:, 0]] + u[qb[:, 2]]
    sims = target @ u.T
    v = jnp.arange(u.shape[0])[None, :]
    excluded = (v == qb[:, 0:1]) | (v == qb[:, 1:2]) | (v == qb[:, 2:3])
    return jnp.argmax(jnp.where(excluded, -jnp.inf, sims), axis=1)

  pred = lax.map(one, jnp.arange(nb)).reshape(-1)[:qn]
  return pred


def analogy_predictions(embeddings, quads, block: int = 512) -> np.ndarray:
  """3CosAdd: for each (a, b, c, d), argmax over the vocabulary, excluding a, b, c, of
  cos(w, b - a + c) with unit-normalised embeddings; returns the predicted indices."""
  e = _check_x(embeddings, "embeddings", min_n=4)
  q = np.asarray(quads)
  if q.ndim != 2 or q.shape[1] != 4 or q.shape[0] == 0:
    raise ConfigError(f"quads has shape {q.shape}: expected (Q >= 1, 4)")
  if q.min() < 0 or q.max() >= e.shape[0]:
    raise ConfigError(f"quads index out of range [0, {e.shape[0]})")
  if bool(jnp.any(jnp.linalg.norm(e, axis=1) == 0)):
    raise ConfigError("embeddings has a zero row: cosines are undefined")
  return np.asarray(_three_cos_add(e, jnp.asarray(q, jnp.int32), block))


def analogy_accuracy(embeddings, quads, block: int = 512) -> float:
  """Fraction of quads whose 3CosAdd prediction is d."""
  q = np.asarray(quads)
  return float(np.mean(analogy_predictions(embeddings, q, block) == q[:, 3]))


# ------------------------------------------------------------------ SAE codes and decoder

def l0_sparsity(codes, threshold: float = 0.0) -> float:
  """Fraction of active latents (|code| > threshold), averaged over rows."""
  c = _check_x(codes, "codes", min_n=1)
  return float(jnp.mean(jnp.abs(c) > threshold))


@functools.partial(jax.jit, static_argnames=("block",))
def _sum_abs_cos(u_MD, block: int):
  m = u_MD.shape[0]
  nb = -(-m // block)
  up = jnp.pad(u_MD, ((0, nb * block - m), (0, 0)))

  def one(b):
    ub = lax.dynamic_slice_in_dim(up, b * block, block)
    return jnp.sum(jnp.abs(ub @ u_MD.T))

  return jnp.sum(lax.map(one, jnp.arange(nb)))


def orthogonality(w_dec, block: int = 1024) -> float:
  """1 - mean |cos| over distinct pairs of decoder directions (rows of w_dec, (M, D)),
  summed in row blocks (memory block x M)."""
  w = _check_x(w_dec, "w_dec")
  norms = jnp.linalg.norm(w, axis=1, keepdims=True)
  if bool(jnp.any(norms == 0)):
    raise ConfigError("w_dec has a zero row: cosines are undefined")
  u = w / norms
  m = w.shape[0]
  total = _sum_abs_cos(u, min(block, m))
  diag = jnp.sum(jnp.abs(jnp.sum(u * u, axis=1)))
  return 1.0 - float((total - diag) / (m * (m - 1)))


# ------------------------------------------------------------------ table row

def passes(values: dict) -> dict:
  """{property: value > pass mark} for the four properties present in `values`."""
  return {k: bool(values[k] > v) for k, v in PASS_MARKS.items() if k in values}


def four_properties(x, labels, embeddings=None, quads=None, dim: int = 8,
                    folds: int = 5) -> dict:
  """The four properties of one layer's concept representations, with pass/fail.

  x, labels: concept representations and their category; embeddings (V, D) with quads
  (Q, 4) for systematicity (omitted when None)."""
  out = dict(abstraction=abstraction_ratio(x, labels),
             precision=probe_precision(x, labels, dim=dim, folds=folds),
             specificity=specificity(x, labels))
  if embeddings is not None and quads is not None:
    out["systematicity"] = analogy_accuracy(embeddings, quads)
  out["pass"] = passes(out)
  return out


# ------------------------------------------------------------------ concept data

CONCEPTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "resources", "concepts")


def _load(name: str) -> dict:
  # A path beside the package (package data in the wheel); importlib.resources fails on
  # some editable installs.
  with open(os.path.join(CONCEPTS_DIR, name), encoding="utf-8") as f:
    return json.load(f)


def load_categories() -> dict[str, list[str]]:
  """{category: words} shipped with jaxcode."""
  return _load("categories.json")["categories"]


def load_relations() -> dict[str, list[tuple[str, str]]]:
  """{relation: [(a, b), ...]} shipped with jaxcode."""
  return {k: [tuple(p) for p in v] for k, v in _load("relations.json")["relations"].items()}


def filter_single_token(words: Sequence[str], n_tokens: Callable[[str], int],
                        what: str = "concept list") -> tuple[list[str], dict]:
  """Keeps the words that are one token (n_tokens(word) == 1); returns them and the counts.

  n_tokens: the tokenizer in use, e.g. lambda w: len(tok(' ' + w)['input_ids']) for a GPT-2
  BPE (leading space) or a wordpiece count without special tokens for BERT."""
  kept = [w for w in words if n_tokens(w) == 1]
  if not kept:
    raise ConfigError(f"{what}: none of {len(words)} words is a single token for this "
                      f"tokenizer: expected at least one")
  return kept, dict(total=len(words), kept=len(kept), dropped=len(words) - len(kept))
