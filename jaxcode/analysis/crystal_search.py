"""Crystals found without labels (Li et al. 2024, arXiv 2410.19750, Sec. 3).

The labelled crystal statistics (jaxcode.analysis.concept_geometry.crystals) group word
pairs by a known relation. Here no relation is given: every ordered pair (a, b) of distinct
words of a set gives a difference vector x_a - x_b; the difference vectors, optionally with
their top principal components projected out (a label-free stand-in for the paper's
distractor removal: its PC1 is word length, notes B.1) and scaled to unit length, are
clustered with scikit-learn's K-means. A relation shows up as a cluster of parallel
differences; two of its pairs with four distinct words are the sides of a parallelogram
(equal differences) or trapezoid (parallel, unequal lengths). Per cluster: every such
quadruple's cosine cos(u, v), relative length mismatch |(|u| - |v|)| / ((|u| + |v|) / 2)
and parallelogram error |u - v| / ((|u| + |v|) / 2) (0: a perfect parallelogram), on the
unprojected differences. Clusters are ranked by their mean parallelogram error.

Both orientations of each pair are clustered, so a relation r and its reverse come out as
two clusters; each cluster names its `mirror` (the cluster holding most of its reversed
pairs) and the ranked list keeps one of each mirrored couple.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxcode.errors import ConfigError, positive_int

MIN_WORDS = 4   # one quadruple needs four distinct words


def check_inputs(x_WD, n_clusters: int, remove_pcs: int = 0) -> np.ndarray:
  """x_WD as a finite float array of >= 4 word vectors; n_clusters in 2 .. ordered pairs;
  remove_pcs below the width."""
  x = np.asarray(x_WD, np.float64)
  if x.ndim != 2:
    raise ConfigError(f"crystal search: word vectors of shape {x.shape}: expected [words, dim]")
  w, d = x.shape
  if w < MIN_WORDS:
    raise ConfigError(f"crystal search: {w} words: expected >= {MIN_WORDS} (a parallelogram "
                      f"needs four distinct words)")
  if not np.all(np.isfinite(x)):
    raise ConfigError("crystal search: word vectors contain NaN or inf: expected finite values")
  n_pairs = w * (w - 1)
  n_clusters = positive_int("unlabeled.n_clusters", n_clusters)
  if not 2 <= n_clusters <= n_pairs:
    raise ConfigError(f"unlabeled.n_clusters={n_clusters}: expected 2 .. {n_pairs} (the "
                      f"ordered pairs of {w} words)")
  remove_pcs = positive_int("unlabeled.remove_pcs", remove_pcs, low=0)
  if remove_pcs >= d:
    raise ConfigError(f"unlabeled.remove_pcs={remove_pcs}: expected 0 .. {d - 1} (width {d})")
  return x


def ordered_pairs(n_words: int) -> tuple[np.ndarray, np.ndarray]:
  """(a_P, b_P): every ordered pair of distinct word indices, (a, b) then (b, a) halves:
  pair p and p + P/2 are each other's reverse."""
  i, j = np.triu_indices(n_words, 1)
  return np.concatenate([i, j]), np.concatenate([j, i])


@partial(jax.jit, static_argnames="remove_pcs")
def unit_differences(x_WD, a_P, b_P, remove_pcs: int = 0):
  """(differences x_a - x_b, unit vectors of the differences after projecting out their
  top `remove_pcs` principal components)."""
  d_PD = x_WD[a_P] - x_WD[b_P]
  u_PD = d_PD
  if remove_pcs:
    # differences of ordered pairs have mean 0; PCs from the word vectors' covariance,
    # which spans the same directions (sum over pairs of d d^T = 2W * centred scatter)
    xc = x_WD - x_WD.mean(0)
    _, _, vt = jnp.linalg.svd(xc, full_matrices=False)
    v_KD = vt[:remove_pcs]
    u_PD = d_PD - (d_PD @ v_KD.T) @ v_KD
  n = jnp.linalg.norm(u_PD, axis=1, keepdims=True)
  return d_PD, u_PD / jnp.maximum(n, 1e-12)


def quadruples(d_ND, a_N, b_N) -> dict:
  """Every two pairs (p < q) with four distinct words: cosine, relative length mismatch and
  parallelogram error of their differences d_p, d_q (from the Gram matrix, so memory is
  O(N^2), not O(N^2 D)); indices into the N pairs."""
  d = np.asarray(d_ND, np.float64)
  a_N, b_N = np.asarray(a_N), np.asarray(b_N)
  p, q = np.triu_indices(len(d), 1)
  keep = ((a_N[p] != a_N[q]) & (a_N[p] != b_N[q]) & (b_N[p] != a_N[q]) & (b_N[p] != b_N[q]))
  p, q = p[keep], q[keep]
  g = (d @ d.T)[p, q]
  n = np.linalg.norm(d, axis=1)
  mean_n = np.maximum((n[p] + n[q]) / 2, 1e-12)
  sq = np.maximum(n[p] ** 2 + n[q] ** 2 - 2 * g, 0.0)
  return {"p": p, "q": q, "cos": g / np.maximum(n[p] * n[q], 1e-12),
          "mismatch": np.abs(n[p] - n[q]) / mean_n, "error": np.sqrt(sq) / mean_n}


def _cluster_summary(c: int, size: int, members, d_PD, a_P, b_P, mirror: int,
                     top: int) -> dict:
  """One cluster of `size` pairs, scored on `members` (all of them, or a subsample): its
  mirror, quadruple statistics, score (median over members of the parallelogram error with
  the best partner) and its `top` best quadruples."""
  quad = quadruples(d_PD[members], a_P[members], b_P[members])
  out = {"cluster": int(c), "size": int(size), "scored": int(len(members)),
         "mirror": int(mirror), "n_quadruples": int(quad["p"].size)}
  if not quad["p"].size:
    return {**out, "score": None, "error": None, "cos": None, "mismatch": None,
            "top": []}
  best = np.argsort(quad["error"], kind="stable")[:top]
  partner = np.full(len(members), np.inf)       # each member's best parallelogram partner
  np.minimum.at(partner, quad["p"], quad["error"])
  np.minimum.at(partner, quad["q"], quad["error"])
  pair = lambda k: [int(a_P[members[k]]), int(b_P[members[k]])]
  return {**out, "score": float(np.median(partner)), "error": float(quad["error"].mean()),
          "cos": float(quad["cos"].mean()), "mismatch": float(quad["mismatch"].mean()),
          "top": [{"pairs": [pair(quad["p"][t]), pair(quad["q"][t])],
                   "cos": float(quad["cos"][t]), "mismatch": float(quad["mismatch"][t]),
                   "error": float(quad["error"][t])} for t in best]}


def _mirrors(labels_P, n_clusters: int) -> np.ndarray:
  """For each cluster, the cluster holding most of its members' reversed pairs."""
  half = len(labels_P) // 2
  rev = np.concatenate([labels_P[half:], labels_P[:half]])
  counts = np.zeros((n_clusters, n_clusters), int)
  np.add.at(counts, (labels_P, rev), 1)
  return counts.argmax(1)


def rank_clusters(summaries: list[dict]) -> list[dict]:
  """Clusters with a quadruple by score (best first; ties: larger first), then the rest;
  of two mirrored clusters only the first listed is kept."""
  order = sorted(summaries, key=lambda s: (s["score"] is None, s["score"] or 0.0,
                                           -s["size"]))
  seen, out = set(), []
  for s in order:
    if s["cluster"] in seen:
      continue
    seen.update((s["cluster"], s["mirror"]))
    out.append(s)
  return out


def search(x_WD, n_clusters: int, *, remove_pcs: int = 0, seed: int = 0, n_init: int = 2,
           top: int = 5, max_members: int = 3000) -> dict:
  """The unlabeled crystal search on the word vectors x_WD (module docstring). A cluster
  of more than `max_members` pairs is scored on a seeded subsample of that many (the
  quadruples of one cluster take O(members^2) memory).

  Returns {"a", "b": the ordered pairs' word indices, "labels": each pair's cluster,
  "clusters": ranked summaries (cluster, size, mirror, n_quadruples, mean error / cos /
  mismatch, the `top` best quadruples as pairs of word-index pairs)}."""
  from sklearn.cluster import KMeans
  x = check_inputs(x_WD, n_clusters, remove_pcs)
  a_P, b_P = ordered_pairs(len(x))
  d_PD, u_PD = unit_differences(jnp.asarray(x, jnp.float32), jnp.asarray(a_P),
                                jnp.asarray(b_P), remove_pcs=int(remove_pcs))
  d_PD, u_PD = np.asarray(d_PD, np.float64), np.asarray(u_PD, np.float32)
  labels = KMeans(n_clusters, n_init=n_init, random_state=seed).fit_predict(u_PD)
  mirror = _mirrors(labels, n_clusters)
  rng = np.random.default_rng(seed)
  summaries = []
  for c in range(n_clusters):
    members = np.flatnonzero(labels == c)
    scored = (members if len(members) <= max_members
              else np.sort(rng.choice(members, max_members, replace=False)))
    summaries.append(_cluster_summary(c, len(members), scored, d_PD, a_P, b_P, mirror[c],
                                      top))
  return {"a": a_P, "b": b_P, "labels": labels, "clusters": rank_clusters(summaries)}


def agreement(result: dict, known: list[tuple[int, int, int]]) -> dict:
  """Adjusted Rand index between the clusters of the known pairs and their relations.

  known: (a, b, relation) word indices. Both orientations count: (a, b) is labelled
  (relation, forward) and (b, a) (relation, reverse), since a cluster is directional."""
  from sklearn.metrics import adjusted_rand_score
  if not known:
    raise ConfigError("crystal search agreement: no known pairs: expected >= 1")
  w = int(max(result["a"].max(), result["b"].max())) + 1
  index = np.full((w, w), -1)
  index[result["a"], result["b"]] = np.arange(len(result["a"]))
  truth, found = [], []
  for a, b, r in known:
    for (s, t), sign in (((a, b), 0), ((b, a), 1)):
      truth.append(2 * int(r) + sign)
      found.append(int(result["labels"][index[s, t]]))
  return {"ari": float(adjusted_rand_score(truth, found)), "n_known_pairs": len(known)}
