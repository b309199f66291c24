"""The geometry of SAE concepts (Li et al. 2024, arXiv 2410.19750): crystals, lobes, galaxy.

Crystals (atom scale): difference vectors of word pairs grouped by relation; silhouette of
the relation labels before and after projecting onto the first k linear-discriminant
directions (scikit-learn LDA), which removes "distractor" directions such as word length;
the dominant distractor (first principal component of the standardised differences) and
its correlation with length; parallelogram and trapezoid quality of the quadruples.

Lobes (brain scale): which features fire together in non-overlapping blocks of tokens
(co-occurrence counts accumulated on the device), affinities from the 2x2 contingency
table (simple matching, Jaccard, Dice, overlap, phi + 1), spectral clustering of each and
of the decoder directions' angular similarity, adjusted mutual information between the
functional and geometric clusterings, a logistic-regression probe of the lobe from the
decoder vector, and the two null models (permuted labels; random unit vectors).

Galaxy (large scale): covariance eigenvalues of decoder directions (and raw activations),
power-law slope over a rank window, log effective volume, and clustering entropy computed
two ways (docs/clustering_entropy.md): the released notebook's recipe (bootstrap WITH
replacement, ln(rho + theta), mean ln(lambda) as the volume term) and a corrected one
(subsamples without replacement, duplicates dropped, Kozachenko-Leonenko entropy compared
with the same estimator on a Gaussian null of the same spectrum).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special, stats

from jaxcode.estimators import entropy as ent
from jaxcode.estimators import knn as knn_lib
from jaxcode.estimators import spectrum
from jaxcode.errors import ConfigError, positive_int

AFFINITIES = ("smc", "jaccard", "dice", "overlap", "phi")
GEOMETRY = "geometry"   # the decoder-direction angular-similarity clustering


# ================================================================== crystals

def difference_vectors(emb: dict, pairs_by_relation: dict[str, Sequence[tuple[str, str]]]):
  """diff = emb(a) - emb(b) for every pair (a, b) (input minus output, as in the released
  code); returns (diffs_ND, labels_N int, relation names, pairs in order)."""
  names = sorted(pairs_by_relation)
  rows, labels, pairs = [], [], []
  for r, name in enumerate(names):
    for a, b in pairs_by_relation[name]:
      for w in (a, b):
        if w not in emb:
          raise ConfigError(f"word {w!r} of relation {name!r} has no embedding")
      rows.append(np.asarray(emb[a], np.float64) - np.asarray(emb[b], np.float64))
      labels.append(r)
      pairs.append((a, b))
  if len(set(labels)) < 2:
    raise ConfigError(f"crystals: {len(set(labels))} relation(s) with pairs: expected >= 2")
  return np.stack(rows), np.asarray(labels), names, pairs


def _silhouette(x, labels) -> float:
  from sklearn.metrics import silhouette_score
  return float(silhouette_score(x, labels))


def lda_dims(n_classes: int, d: int, dims: Sequence[int] | None) -> list[int]:
  top = min(n_classes - 1, d)
  if dims is None:
    return list(range(1, top + 1))
  bad = [k for k in dims if not 1 <= int(k) <= top]
  if bad:
    raise ConfigError(f"LDA dims {bad}: expected 1..{top} (classes - 1 = {n_classes - 1}, "
                      f"d = {d})")
  return [int(k) for k in dims]


def lda_project(diffs_ND, labels_N, k: int) -> np.ndarray:
  from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
  return LinearDiscriminantAnalysis(n_components=k).fit_transform(diffs_ND, labels_N)


def lda_silhouettes(diffs_ND, labels_N, dims: Sequence[int] | None = None) -> dict:
  """Silhouette of the relation labels on the raw differences and on k LDA components."""
  labels_N = np.asarray(labels_N)
  ks = lda_dims(len(np.unique(labels_N)), diffs_ND.shape[1], dims)
  return {"before": _silhouette(diffs_ND, labels_N),
          "after": {int(k): _silhouette(lda_project(diffs_ND, labels_N, k), labels_N)
                    for k in ks}}


def distractor(diffs_ND, lengths_N) -> dict:
  """First principal component of the standardised differences and the correlation of the
  projections onto it with `lengths_N` (e.g. length of b minus length of a)."""
  x = np.asarray(diffs_ND, np.float64)
  sd = x.std(axis=0)
  z = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
  _, s, vt = np.linalg.svd(z, full_matrices=False)
  pc1 = z @ vt[0]
  lengths = np.asarray(lengths_N, np.float64)
  r = float(np.corrcoef(pc1, lengths)[0, 1]) if lengths.std() > 0 else float("nan")
  return {"correlation": r, "explained_variance_ratio": float(s[0] ** 2 / np.sum(s ** 2)),
          "direction": vt[0]}


def parallelogram_quality(diffs_ND, labels_N) -> dict:
  """Over all quadruples (two pairs of one relation): the parallelogram error
  ||u - v|| / ((||u|| + ||v||) / 2) (0: a perfect parallelogram) and the trapezoid
  quality cos(u, v) (1: parallel sides), averaged."""
  x = np.asarray(diffs_ND, np.float64)
  labels_N = np.asarray(labels_N)
  err, cos = [], []
  for r in np.unique(labels_N):
    u = x[labels_N == r]
    if len(u) < 2:
      continue
    i, j = np.triu_indices(len(u), 1)
    n = np.linalg.norm(u, axis=1)
    err.append(np.linalg.norm(u[i] - u[j], axis=1) / np.maximum((n[i] + n[j]) / 2, 1e-12))
    cos.append(np.sum(u[i] * u[j], axis=1) / np.maximum(n[i] * n[j], 1e-12))
  if not err:
    raise ConfigError("parallelogram quality: no relation has two pairs")
  err, cos = np.concatenate(err), np.concatenate(cos)
  return {"parallelogram_error": float(err.mean()), "trapezoid_cos": float(cos.mean()),
          "n_quadruples": int(err.size)}


def crystals(diffs_ND, labels_N, lengths_N=None, dims: Sequence[int] | None = None) -> dict:
  """All crystal statistics: silhouettes before/after LDA per dimension, the distractor,
  parallelogram quality before and after LDA (at the best dimension)."""
  sil = lda_silhouettes(diffs_ND, labels_N, dims)
  best = max(sil["after"], key=sil["after"].get)
  proj = lda_project(diffs_ND, labels_N, best)
  out = {"silhouette_before": sil["before"], "silhouette_after": sil["after"],
         "best_dim": int(best),
         "parallelogram_before": parallelogram_quality(diffs_ND, labels_N),
         "parallelogram_after": parallelogram_quality(proj, labels_N),
         "n_pairs": int(len(labels_N)), "n_relations": int(len(np.unique(labels_N)))}
  if lengths_N is not None:
    d = distractor(diffs_ND, lengths_N)
    out["distractor"] = {k: v for k, v in d.items() if k != "direction"}
  return out


# ================================================================== lobes

def _block_view(x_RSD, valid_RS, block_len: int):
  r, s, d = x_RSD.shape
  nb = s // block_len
  xb = x_RSD[:, :nb * block_len].reshape(r * nb, block_len, d)
  vb = valid_RS[:, :nb * block_len].reshape(r * nb, block_len)
  return xb, vb


def check_block_len(block_len: int, seq_len: int, name: str = "block_len") -> int:
  """`block_len` as a positive int no longer than the sequences' `seq_len` tokens."""
  block_len = positive_int(name, block_len)
  if block_len > seq_len:
    raise ConfigError(f"{name}={block_len} is longer than the sequences ({seq_len} tokens): "
                      f"expected {name} <= {seq_len}")
  return block_len


def cooccurrence(encode: Callable, x_RSD, valid_RS, block_len: int = 256,
                 threshold: float = 1.0, batch_rows: int = 8):
  """Co-occurrence counts of features over non-overlapping blocks of `block_len` tokens.

  encode: jnp function [n, D] -> codes [n, M]. Rows of x_RSD are cut into blocks (the tail
  shorter than a block is ignored); only complete blocks (every token valid) count. A
  feature fires in a block when its code exceeds `threshold` at some token. C_MM[i, j] is
  the number of blocks where i and j both fire, accumulated on the device batch by batch.
  Returns (C_MM numpy float64, T blocks, fired_BM bool of the counted blocks, index of each
  counted block's row).
  """
  x_RSD = np.asarray(x_RSD)
  valid_RS = np.asarray(valid_RS, bool)
  r, s, d = x_RSD.shape
  check_block_len(block_len, s)
  nb = s // block_len
  m = int(jax.eval_shape(encode, jax.ShapeDtypeStruct((1, d), jnp.float32)).shape[-1])

  @jax.jit
  def step(c_MM, x_bSD, v_bS):
    xb, vb = _block_view(x_bSD, v_bS, block_len)
    codes = encode(xb.reshape(-1, d)).reshape(xb.shape[0], block_len, m)
    ok = jnp.all(vb, axis=1)
    fired = jnp.any(codes > threshold, axis=1) & ok[:, None]
    f = fired.astype(jnp.float32)
    return c_MM + f.T @ f, fired, ok

  c = jnp.zeros((m, m), jnp.float32)
  fired_all, ok_all = [], []
  for r0 in range(0, r, batch_rows):
    xb, vb = x_RSD[r0:r0 + batch_rows], valid_RS[r0:r0 + batch_rows]
    if xb.shape[0] < batch_rows:   # pad to one compiled shape; padded rows are invalid
      pad = batch_rows - xb.shape[0]
      xb = np.concatenate([xb, np.zeros((pad, s, d), xb.dtype)])
      vb = np.concatenate([vb, np.zeros((pad, s), bool)])
    c, fired, ok = step(c, jnp.asarray(xb, jnp.float32), jnp.asarray(vb))
    fired_all.append(fired)
    ok_all.append(ok)
  fired = np.concatenate([np.asarray(f) for f in fired_all])
  ok = np.concatenate([np.asarray(o) for o in ok_all])
  rows = np.repeat(np.arange(len(ok) // nb), nb)
  keep = ok & (rows < r)
  return np.asarray(c, np.float64), int(keep.sum()), fired[keep], rows[keep]


def affinities(c_MM, t: int, names: Sequence[str] = AFFINITIES) -> dict[str, np.ndarray]:
  """Affinity matrices from co-occurrence counts C (diagonal: blocks where each fires) and
  T blocks, through n11 = C_ij, n10 = C_ii - C_ij, n01 = C_jj - C_ij, n00 = T - C_ii - C_jj
  + C_ij. phi is shifted to phi + 1 (in [0, 2]); undefined ratios (0/0) are 0."""
  for n in names:
    if n not in AFFINITIES:
      raise ConfigError(f"affinity {n!r}: expected one of {AFFINITIES}")
  c = jnp.asarray(c_MM, jnp.float32)
  ci = jnp.diag(c)
  n11 = c
  n10 = ci[:, None] - c
  n01 = ci[None, :] - c
  n00 = t - ci[:, None] - ci[None, :] + c

  def ratio(a, b):
    return jnp.where(b > 0, a / jnp.where(b > 0, b, 1.0), 0.0)

  fns = {
      "smc": lambda: (n11 + n00) / t,
      "jaccard": lambda: ratio(n11, ci[:, None] + ci[None, :] - n11),
      "dice": lambda: ratio(2 * n11, ci[:, None] + ci[None, :]),
      "overlap": lambda: ratio(n11, jnp.minimum(ci[:, None], ci[None, :])),
      "phi": lambda: ratio(n11 * n00 - n10 * n01,
                           jnp.sqrt((n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00))) + 1,
  }
  return {n: np.asarray(fns[n](), np.float64) for n in names}


def angular_similarity(w_dec_MD) -> np.ndarray:
  """1 - arccos(cos) / pi between unit-normalised decoder rows."""
  w = jnp.asarray(w_dec_MD, jnp.float32)
  u = w / jnp.maximum(jnp.linalg.norm(w, axis=1, keepdims=True), 1e-12)
  return np.asarray(1.0 - jnp.arccos(jnp.clip(u @ u.T, -1.0, 1.0)) / jnp.pi, np.float64)


def spectral_labels(affinity_MM, n_clusters: int, seed: int = 42) -> np.ndarray:
  """sklearn SpectralClustering on a precomputed affinity, k-means label assignment."""
  import warnings
  from sklearn.cluster import SpectralClustering
  a = np.asarray(affinity_MM, np.float64)
  a = 0.5 * (a + a.T)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")   # "graph is not fully connected" on sparse affinities
    sc = SpectralClustering(n_clusters=int(n_clusters), affinity="precomputed",
                            assign_labels="kmeans", random_state=seed)
    return sc.fit_predict(a)


def _z(value, null) -> dict:
  null = np.asarray(null, np.float64)
  mu, sd = float(null.mean()), float(null.std(ddof=1)) if null.size > 1 else float("nan")
  # a null with (numerically) no spread: sigma is undefined (inf -> null in JSON)
  if not sd > 1e-9 * max(1.0, abs(mu)):
    return {"null_mean": mu, "null_sd": sd, "sigma": float("inf") if value != mu else 0.0}
  z = (value - mu) / sd
  return {"null_mean": mu, "null_sd": sd, "sigma": float(z)}


def ami_with_null(geometric, functional, n_null: int = 100, seed: int = 0) -> dict:
  """AMI(geometric, functional) and its null over permutations of the geometric labels."""
  from sklearn.metrics import adjusted_mutual_info_score as ami
  rng = np.random.default_rng(seed)
  value = float(ami(geometric, functional))
  null = [ami(rng.permutation(geometric), functional) for _ in range(int(n_null))]
  return {"ami": value, **_z(value, null)}


def _probe(x_MD, labels_M, train_frac: float) -> float:
  from sklearn.linear_model import LogisticRegression
  from sklearn.metrics import balanced_accuracy_score
  n = len(labels_M)
  cut = int(round(train_frac * n))
  ytr, yte = labels_M[:cut], labels_M[cut:]
  if len(np.unique(ytr)) < 2 or len(yte) == 0:
    return float("nan")
  clf = LogisticRegression(max_iter=1000).fit(x_MD[:cut], ytr)
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")   # a class absent from the test split
    return float(balanced_accuracy_score(yte, clf.predict(x_MD[cut:])))


def probe_with_null(w_dec_MD, labels_M, n_null: int = 10, train_frac: float = 0.8,
                    seed: int = 0) -> dict:
  """Logistic regression predicting the lobe from the decoder vector: first train_frac of
  the features train, the rest test (no shuffle, as released), balanced accuracy; null:
  the same probe on random unit Gaussian vectors of the same shape."""
  x = np.asarray(w_dec_MD, np.float64)
  labels_M = np.asarray(labels_M)
  value = _probe(x, labels_M, train_frac)
  rng = np.random.default_rng(seed)
  null = []
  for _ in range(int(n_null)):
    g = rng.standard_normal(x.shape)
    null.append(_probe(g / np.linalg.norm(g, axis=1, keepdims=True), labels_M, train_frac))
  return {"balanced_accuracy": value, **_z(value, null)}


def active_features(c_MM, min_blocks: int = 1) -> np.ndarray:
  """Indices of features that fire in at least `min_blocks` blocks."""
  return np.nonzero(np.diag(np.asarray(c_MM)) >= min_blocks)[0]


def check_clusters(n_features: int, cluster_counts: Sequence[int]) -> list[int]:
  counts = [int(k) for k in cluster_counts]
  if not counts or min(counts) < 2:
    raise ConfigError(f"cluster_counts={list(cluster_counts)}: expected integers >= 2")
  if max(counts) >= n_features:
    raise ConfigError(f"{n_features} co-occurring features are fewer than the "
                      f"{max(counts)} clusters requested: expected more features than "
                      f"clusters (lower cluster_counts or the firing threshold)")
  return counts


def block_winners(fired_BM, labels_M) -> np.ndarray:
  """[B] the lobe with the largest fraction of its features firing in each block (ties: the
  lowest lobe index)."""
  fired = np.asarray(fired_BM, np.float64)
  labels_M = np.asarray(labels_M)
  k = int(labels_M.max()) + 1
  size = np.bincount(labels_M, minlength=k).astype(np.float64)
  return np.argmax((fired @ np.eye(k)[labels_M]) / np.maximum(size, 1), axis=1)


def source_ami(block_source_B, winners_B, n_null: int = 100, seed: int = 0) -> dict:
  """How well the lobes separate any number of sources: the adjusted mutual information
  between each block's source and the lobe it is won by (`block_winners`), with its null over
  permutations of the block sources (ami_with_null)."""
  _, src = np.unique(np.asarray(block_source_B), return_inverse=True)
  return ami_with_null(src, np.asarray(winners_B), n_null, seed)


def lobe_sources(fired_BM, block_source_B, labels_M) -> dict:
  """Block -> lobe with the largest fraction of its features firing; per source, the share
  of its blocks each lobe wins and the winning lobe."""
  labels_M = np.asarray(labels_M)
  k = int(labels_M.max()) + 1
  win = block_winners(fired_BM, labels_M)
  out = {}
  for src in sorted(set(block_source_B)):
    sel = np.asarray(block_source_B) == src
    share = np.bincount(win[sel], minlength=k) / max(int(sel.sum()), 1)
    out[str(src)] = {"share": share.tolist(), "winner": int(np.argmax(share)),
                     "blocks": int(sel.sum())}
  return out


def lobes(c_MM, t: int, w_dec_MD, cluster_counts: Sequence[int] = (2, 4, 8),
          names: Sequence[str] = AFFINITIES, n_null_ami: int = 100, n_null_probe: int = 10,
          fired_BM=None, block_source_B=None, seed: int = 42) -> dict:
  """Functional (co-occurrence) vs geometric (decoder-angle) clusterings of the features
  that fire in at least one block. Returns per affinity and cluster count: AMI with the
  geometric clustering and its permutation null, probe balanced accuracy and its
  random-vector null; optionally (fired_BM and block_source_B given, any number of source
  labels) which sources each lobe wins and the AMI of block source with winning lobe."""
  w = np.asarray(w_dec_MD, np.float64)
  if w.shape[0] != np.shape(c_MM)[0]:
    raise ConfigError(f"W_dec has {w.shape[0]} rows but the co-occurrence matrix is "
                      f"{np.shape(c_MM)}: expected one row per feature")
  n_all = int(w.shape[0])
  active = active_features(c_MM)
  counts = check_clusters(len(active), cluster_counts)
  c = np.asarray(c_MM)[np.ix_(active, active)]
  w = w[active]
  aff = affinities(c, t, names)
  geo_aff = angular_similarity(w)
  out = {"n_features": n_all, "n_active": int(len(active)), "blocks": int(t),
         "cluster_counts": counts, "affinities": {}, "labels": {}}
  for k in counts:
    geo = spectral_labels(geo_aff, k, seed)
    out["labels"].setdefault(GEOMETRY, {})[k] = geo
    for n in names:
      func = spectral_labels(aff[n], k, seed)
      out["labels"].setdefault(n, {})[k] = func
      rec = {"ami": ami_with_null(geo, func, n_null_ami, seed),
             "probe": probe_with_null(w, func, n_null_probe, seed=seed)}
      if fired_BM is not None and block_source_B is not None:
        fired_act = np.asarray(fired_BM)[:, active]
        rec["sources"] = lobe_sources(fired_act, block_source_B, func)
        rec["source_ami"] = source_ami(block_source_B, block_winners(fired_act, func),
                                       n_null_ami, seed)
      out["affinities"].setdefault(n, {})[k] = rec
  out["active"] = active
  return out


# ================================================================== galaxy

def spectrum_fit(x_ND, lo: int = 11, hi: int = 150) -> dict:
  """Covariance eigenvalues (descending), OLS power-law fit over ranks lo..hi (1-based,
  inclusive; the notebook's slice [10:150]) and the log effective volume."""
  lam = np.asarray(spectrum.eigenvalues(jnp.asarray(x_ND, jnp.float32)), np.float64)
  fit = spectrum.powerlaw_fit(lam, lo, hi)
  return {"slope": fit["slope"], "alpha": fit["alpha"], "r2": fit["r2"],
          "log_volume": fit["log_volume"], "eigenvalues": lam}


def _pca_scores(x_ND, d: int) -> tuple[np.ndarray, np.ndarray]:
  """z-score the columns, project onto the top-d principal axes; (scores, eigenvalues)."""
  x = np.asarray(x_ND, np.float64)
  sd = x.std(axis=0, ddof=1)
  z = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
  cov = np.cov(z, rowvar=False)
  lam, vec = np.linalg.eigh(cov)
  order = np.argsort(lam)[::-1][:d]
  scores = z @ vec[:, order]
  return scores, np.cov(scores, rowvar=False).diagonal().copy()


def _check_galaxy(x_ND, n_sub: int, d: int) -> np.ndarray:
  x = knn_lib.check_points(np.asarray(x_ND), min_n=3)
  if d < 1 or d > x.shape[1]:
    raise ConfigError(f"pca_dim={d}: expected 1..{x.shape[1]} (the points' dimension)")
  if n_sub < 3:
    raise ConfigError(f"n_sub={n_sub}: expected at least 3 points")
  return x


def _subsample(x, n_sub: int, seed: int) -> np.ndarray:
  n = x.shape[0]
  if n <= n_sub:
    return np.asarray(x, np.float64)
  return np.asarray(x, np.float64)[np.random.RandomState(seed).choice(n, n_sub, replace=False)]


def notebook_clustering_entropy(x_ND, n_sub: int = 5000, d: int = 100, k: int = 1,
                                theta: float = 0.01, n_boot: int = 30, replace: bool = True,
                                seed: int = 0) -> dict:
  """The released galaxy notebook's clustering entropy, to reproduce its numbers.

  Subsample n_sub rows without replacement, z-score the columns, PCA to d dimensions;
  H_gauss = (d/2)(1 + ln 2 pi) + (1/2) sum ln lambda; per resample (n points drawn WITH
  replacement when `replace`, else the subsample itself once) H = d mean ln(rho_k + theta)
  + mean ln lambda + ln(n - 1) - psi(k); value = H_gauss - mean H, error = t_{.975} SE.
  With replacement ~63% of points have an exact duplicate (rho = 0, ln theta), which makes
  the value large and positive even for a Gaussian: see docs/clustering_entropy.md.
  """
  x = _check_galaxy(x_ND, n_sub, d)
  scores, lam = _pca_scores(_subsample(x, n_sub, seed), d)
  n = scores.shape[0]
  knn_lib.check_k(k, n)
  h_gauss = 0.5 * d * (1 + math.log(2 * math.pi)) + 0.5 * float(np.sum(np.log(lam)))
  mean_log_lam = float(np.mean(np.log(lam)))
  rng = np.random.RandomState(seed)
  reps = int(n_boot) if replace else 1
  hs, zero = [], []
  for _ in range(reps):
    s = scores[rng.randint(0, n, n)] if replace else scores
    rho = np.asarray(knn_lib.knn(jnp.asarray(s, jnp.float32), k).dist_NK[:, k - 1], np.float64)
    zero.append(float(np.mean(rho == 0)))
    hs.append(d * float(np.mean(np.log(rho + theta))) + mean_log_lam + math.log(n - 1)
              - float(special.digamma(k)))
  hs = np.asarray(hs)
  se = float(hs.std(ddof=1) / math.sqrt(len(hs))) if len(hs) > 1 else 0.0
  err = float(stats.t.ppf(0.975, len(hs) - 1) * se) if len(hs) > 1 else 0.0
  return {"value": h_gauss - float(hs.mean()), "error": err, "h_gauss": h_gauss,
          "h_knn": float(hs.mean()), "zero_distance_fraction": float(np.mean(zero)),
          "n": n, "d": d, "replace": bool(replace), "n_boot": reps}


def corrected_clustering_entropy(x_ND, n_sub: int = 5000, d: int = 100, k: int = 1,
                                 n_boot: int = 10, fraction: float = 0.8,
                                 seed: int = 0) -> dict:
  """Clustering entropy relative to a Gaussian null with the same spectrum.

  Same preprocessing as the notebook (subsample, z-score, PCA to d). Then n_boot subsamples
  of `fraction` of the points drawn WITHOUT replacement, duplicate rows dropped; for each,
  the standard Kozachenko-Leonenko entropy H_data and the same estimator H_null on as many
  points drawn from N(0, diag(lambda)). value = mean(H_null - H_data): the estimator's
  large bias at d ~ 100 cancels, so a Gaussian cloud gives ~0 and clustered data > 0.
  Also returned: the uncorrected H_gauss - H_data.
  """
  if not 0 < fraction <= 1:
    raise ConfigError(f"fraction={fraction}: expected a value in (0, 1]")
  x = _check_galaxy(x_ND, n_sub, d)
  scores, lam = _pca_scores(_subsample(x, n_sub, seed), d)
  scores, _ = knn_lib.drop_duplicates(scores)
  n = scores.shape[0]
  m = max(k + 2, int(fraction * n))
  h_gauss = ent.gaussian_entropy_from_cov(jnp.diag(jnp.asarray(lam)))
  rng = np.random.default_rng(seed)
  diffs, raw = [], []
  import warnings
  for _ in range(int(n_boot)):
    s = scores[rng.choice(n, m, replace=False)]
    g = rng.standard_normal((m, d)) * np.sqrt(lam)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      h_data = ent.knn_entropy(jnp.asarray(s, jnp.float32), k)
      h_null = ent.knn_entropy(jnp.asarray(g, jnp.float32), k)
    diffs.append(h_null - h_data)
    raw.append(h_gauss - h_data)
  diffs = np.asarray(diffs)
  se = float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else 0.0
  err = float(stats.t.ppf(0.975, len(diffs) - 1) * se) if len(diffs) > 1 else 0.0
  return {"value": float(diffs.mean()), "error": err,
          "uncorrected": float(np.mean(raw)), "h_gauss": float(h_gauss), "n": n, "m": m, "d": d,
          "n_boot": int(n_boot)}


def galaxy_layer(w_dec_MD, acts_ND=None, lo: int = 11, hi: int = 150, n_sub: int = 5000,
                 d: int = 100, theta: float = 0.01, n_boot: int = 30,
                 n_boot_corrected: int = 10, seed: int = 0) -> dict:
  """One layer's galaxy statistics of the decoder directions (and raw activations)."""
  dec = spectrum_fit(w_dec_MD, lo, hi)
  out = {"decoder": {k: v for k, v in dec.items() if k != "eigenvalues"},
         "clustering_entropy_notebook": notebook_clustering_entropy(
             w_dec_MD, n_sub, d, 1, theta, n_boot, True, seed),
         "clustering_entropy_notebook_no_bootstrap": notebook_clustering_entropy(
             w_dec_MD, n_sub, d, 1, theta, 1, False, seed),
         "clustering_entropy_corrected": corrected_clustering_entropy(
             w_dec_MD, n_sub, d, 1, n_boot_corrected, 0.8, seed),
         "eigenvalues_decoder": dec["eigenvalues"]}
  if acts_ND is not None:
    act = spectrum_fit(acts_ND, lo, hi)
    out["activations"] = {k: v for k, v in act.items() if k != "eigenvalues"}
    out["eigenvalues_activations"] = act["eigenvalues"]
  return out

