"""Figures of the concept-geometry experiment (matplotlib, Agg): crystals before and after
LDA, lobes on a 2-D embedding of the decoder directions, AMI and balanced accuracy against
the number of clusters with the nulls, each source's blocks won per lobe, and slope /
clustering entropy against layer."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxcode.analysis import concept_geometry as cg  # noqa: E402
from jaxcode.report.common import save_figure as _save  # noqa: E402


def crystals_figure(diffs, labels, relations, best_dim: int, path: str) -> str:
  """Difference vectors on their top-2 principal components, and on the first two LDA
  components (or the one LDA component against the first PC)."""
  x = np.asarray(diffs, np.float64)
  xc = x - x.mean(0)
  pcs = xc @ np.linalg.svd(xc, full_matrices=False)[2][:2].T
  lda = cg.lda_project(x, labels, max(1, min(2, best_dim, len(relations) - 1)))
  if lda.shape[1] == 1:
    lda = np.concatenate([lda, pcs[:, :1]], axis=1)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
  for ax, pts, title in ((axes[0], pcs, "differences, top-2 PCs (before LDA)"),
                         (axes[1], lda, "after LDA (first two components)")):
    for r, name in enumerate(relations):
      sel = labels == r
      ax.scatter(pts[sel, 0], pts[sel, 1], s=14, label=name)
    ax.set_title(title)
  axes[1].legend(fontsize=7, loc="best")
  return _save(fig, path)


def _quad_text(q: dict) -> str:
  (a, b), (c, d) = q["pairs"]
  rel = f", {q['relation']}" if q.get("relation") else ""
  return f"{a}-{b} || {c}-{d} (err {q['error']:.2f}{rel})"


def unlabeled_crystals_figure(unlabeled: dict, path: str) -> str:
  """A table of the top clusters found without labels: size, score (median best-partner
  parallelogram error), mean cosine, the known relations among its pairs ('~': reversed),
  and its best two quadruples as word pairs."""
  rows = []
  for rank, c in enumerate(unlabeled["clusters"], 1):
    known = ", ".join(f"{k} {v}" for k, v in sorted(c["known"].items(),
                                                     key=lambda kv: -kv[1])[:2]) or "-"
    score = "-" if c["score"] is None else f"{c['score']:.2f}"
    cos = "-" if c["cos"] is None else f"{c['cos']:.2f}"
    quads = "; ".join(_quad_text(q) for q in c["top"][:2]) or "-"
    rows.append([str(rank), str(c["size"]), score, cos, known, quads])
  fig, ax = plt.subplots(figsize=(16, 0.45 * len(rows) + 1.4))
  ax.axis("off")
  table = ax.table(cellText=rows, colLabels=["#", "pairs", "score", "cos", "known relations",
                                             "best parallelograms"],
                   colWidths=[0.03, 0.05, 0.05, 0.05, 0.22, 0.6], loc="center",
                   cellLoc="left")
  table.auto_set_font_size(False)
  table.set_fontsize(7)
  ax.set_title(f"crystals found without labels: {unlabeled['n_words']} words, "
               f"{unlabeled['n_pairs']} ordered pairs, K = {unlabeled['n_clusters']}; ARI "
               f"with the known relations {unlabeled['ari']:.3f}; best quadruples that are known "
               f"parallelograms: {unlabeled['known_quadruple_fraction'] or 0:.2f}", fontsize=9)
  return _save(fig, path)


def lobes_embedding_figure(w_dec_MD, active_A, labels_A, layer: int, path: str) -> str:
  """Active features' decoder directions on a 2-D t-SNE, coloured by phi lobe."""
  from sklearn.manifold import TSNE
  w = np.asarray(w_dec_MD, np.float64)[active_A]
  w = w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
  perp = float(min(30, max(2, (len(w) - 1) // 3)))
  emb = TSNE(n_components=2, init="pca", random_state=0, perplexity=perp).fit_transform(w)
  fig, ax = plt.subplots(figsize=(5.5, 5))
  for k in np.unique(labels_A):
    sel = labels_A == k
    ax.scatter(emb[sel, 0], emb[sel, 1], s=4, label=f"lobe {k}")
  ax.set_title(f"layer {layer}: decoder directions (t-SNE), phi lobes")
  ax.legend(fontsize=7, markerscale=3)
  return _save(fig, path)


def lobes_curves_figure(lobes_layer: dict, layer: int, path: str) -> str:
  """AMI and probe balanced accuracy against #clusters for each affinity, with nulls."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for name, per_k in lobes_layer["affinities"].items():
    ks = sorted(int(k) for k in per_k)
    for ax, key, null in ((axes[0], "ami", "ami_null"), (axes[1], "balanced_accuracy",
                                                          "probe_null")):
      y = [per_k[str(k)][key] for k in ks]
      line, = ax.plot(ks, y, "o-", label=name)
      mu = np.array([per_k[str(k)][f"{null}_mean"] for k in ks], float)
      sd = np.array([per_k[str(k)][f"{null}_sd"] or 0.0 for k in ks], float)
      ax.fill_between(ks, mu - 2 * sd, mu + 2 * sd, color=line.get_color(), alpha=0.12)
  for ax, t in ((axes[0], "AMI (functional vs geometric)"),
                (axes[1], "probe balanced accuracy (test)")):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("clusters")
    ax.set_title(f"layer {layer}: {t}\nbands: null mean +- 2 sd", fontsize=9)
  axes[0].legend(fontsize=7)
  return _save(fig, path)


def lobes_sources_figure(lobes_layer: dict, layer: int, path: str) -> str | None:
  """Each source's share of blocks won by each lobe (stacked bars), for the phi lobes (else
  the first affinity) at the fewest clusters no fewer than the sources; None without sources."""
  per_k = lobes_layer["affinities"].get("phi") or next(iter(lobes_layer["affinities"].values()))
  ks = sorted(int(k) for k in per_k)
  srcs = per_k[str(ks[0])].get("sources") or {}
  if not srcs:
    return None
  k = next((k for k in ks if k >= len(srcs)), ks[-1])
  rec = per_k[str(k)]
  names = sorted(rec["sources"])
  share = np.array([rec["sources"][n]["share"] for n in names], float)
  fig, ax = plt.subplots(figsize=(6.5, 0.6 * len(names) + 1.8))
  left = np.zeros(len(names))
  for j in range(share.shape[1]):
    ax.barh(names, share[:, j], left=left, label=f"lobe {j}")
    left += share[:, j]
  ax.set_xlim(0, 1)
  ax.set_xlabel("share of the source's blocks won")
  sep, sa = rec.get("source_separation"), rec.get("source_ami")
  stats = "" if sep is None else f"\nmean pairwise TV {sep:.2f}"
  if sa is not None:
    stats += (f"; AMI(source, lobe) {sa:.2f} (null {rec['source_ami_null_mean']:.3f} "
              f"+- {rec['source_ami_null_sd'] or 0:.3f})")
  ax.set_title(f"layer {layer}: blocks won per lobe ({k} lobes){stats}", fontsize=9)
  ax.legend(fontsize=7, ncol=min(k, 4), loc="upper center", bbox_to_anchor=(0.5, -0.3))
  return _save(fig, path)


def galaxy_figure(galaxy: dict, spectra: dict, path: str) -> str:
  """Eigenvalue spectra, power-law slope and clustering entropies against layer."""
  layers = sorted(int(l) for l in galaxy)
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for l in layers:
    dec, act = spectra[l]
    r = np.arange(1, len(dec) + 1)
    axes[0].loglog(r, np.maximum(dec, 1e-30), label=f"L{l} decoder")
    axes[0].loglog(np.arange(1, len(act) + 1), np.maximum(act, 1e-30), ":", alpha=0.6)
  axes[0].set_title("covariance eigenvalues (solid: W_dec, dotted: activations)")
  axes[0].set_xlabel("rank")
  axes[0].legend(fontsize=6)
  g = [galaxy[str(l)] for l in layers]
  axes[1].plot(layers, [x["decoder"]["slope"] for x in g], "o-", label="decoder")
  if "activations" in g[0]:
    axes[1].plot(layers, [x["activations"]["slope"] for x in g], "s--", label="activations")
  axes[1].set_title("power-law slope over the rank window")
  axes[1].set_xlabel("layer")
  axes[1].legend()
  for key, lab in (("clustering_entropy_notebook", "notebook (bootstrap w/ replacement)"),
                   ("clustering_entropy_notebook_no_bootstrap", "notebook, no bootstrap"),
                   ("clustering_entropy_corrected", "corrected (vs Gaussian null)")):
    axes[2].errorbar(layers, [x[key]["value"] for x in g], [x[key]["error"] for x in g],
                     fmt="o-", label=lab, capsize=2)
  axes[2].axhline(0, color="k", lw=0.5)
  axes[2].set_title("clustering entropy (nats)")
  axes[2].set_xlabel("layer")
  axes[2].legend(fontsize=7)
  return _save(fig, path)


def write_all(out_dir: str, *, diffs, labels, relations, best_dim, lobes, clusters, w_dec,
              galaxy, spectra, unlabeled=None) -> list[str]:
  """Every figure; clusters[layer] is the lobes stage's 'clusters' (active features and
  labels by affinity and cluster count), w_dec[layer] that layer's decoder; unlabeled:
  results["crystals"]["unlabeled"] (the table of crystals found without labels)."""
  files = [crystals_figure(diffs, labels, relations, best_dim,
                           os.path.join(out_dir, "crystals.png"))]
  if unlabeled is not None:
    files.append(unlabeled_crystals_figure(unlabeled,
                                           os.path.join(out_dir, "crystals_unlabeled.png")))
  for l, cl in clusters.items():
    name = "phi" if "phi" in cl["labels"] else next(iter(cl["labels"]))
    k = min(cl["labels"][name], key=int)
    files.append(lobes_embedding_figure(w_dec[l], np.asarray(cl["active"]),
                                        np.asarray(cl["labels"][name][k]), l,
                                        os.path.join(out_dir, f"lobes_tsne_layer{l}.png")))
    files.append(lobes_curves_figure(lobes[str(l)], l,
                                     os.path.join(out_dir, f"lobes_vs_clusters_layer{l}.png")))
    shares = lobes_sources_figure(lobes[str(l)], l,
                                  os.path.join(out_dir, f"lobes_sources_layer{l}.png"))
    files += [shares] if shares else []
  files.append(galaxy_figure(galaxy, spectra, os.path.join(out_dir, "galaxy.png")))
  return files
