"""Figures of toy superposition runs (matplotlib, written as PNG)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from jaxcode.report.common import save_figure as _save  # noqa: E402

REFERENCE_DIMS = (1.0, 3 / 4, 2 / 3, 1 / 2, 2 / 5, 3 / 8, 1 / 3)
KINDS = ("linear", "relu", "hidden_relu")   # the toy model kinds, in plotting order
LABELS = {"linear": "linear", "relu": "ReLU output", "hidden_relu": "hidden ReLU (post)"}


def wtw_grid(records: list[dict], path: str) -> str:
  """Per sparsity (rows): W W^T heat map and norm bars, linear beside ReLU."""
  kinds = [k for k in KINDS if any(r["model"] == k for r in records)]
  sparsities = sorted({r["sparsity"] for r in records})
  fig, axes = plt.subplots(len(sparsities), 2 * len(kinds),
                           figsize=(4.2 * len(kinds) * 2, 2.8 * len(sparsities)), squeeze=False)
  for row, s in enumerate(sparsities):
    for col, kind in enumerate(kinds):
      rec = next((r for r in records if r["model"] == kind and r["sparsity"] == s), None)
      ax_h, ax_b = axes[row, 2 * col], axes[row, 2 * col + 1]
      if rec is None:
        ax_h.axis("off"); ax_b.axis("off")
        continue
      g = np.asarray(rec["wtw"])
      ax_h.imshow(g, cmap="RdBu_r", vmin=-1, vmax=1)
      ax_h.set_title(f"{kind}, S={s:.2f}: $WW^T$", fontsize=9)
      ax_h.set_xticks([]); ax_h.set_yticks([])
      norms = np.asarray(rec["feature_norms"])
      supv = np.asarray(rec["superposition"])
      colours = plt.cm.viridis(np.clip(supv / max(supv.max(), 1e-9), 0, 1))
      ax_b.barh(np.arange(len(norms)), norms, color=colours)
      ax_b.invert_yaxis()
      ax_b.set_xlim(0, max(1.2, norms.max() * 1.05))
      ax_b.set_title("$\\|W_i\\|$ (colour: superposition)", fontsize=9)
      ax_b.set_yticks([])
  fig.suptitle("Toy models of superposition: features stored per sparsity", fontsize=11)
  return _save(fig, path)


def dims_per_feature(records: list[dict], path: str) -> str:
  fig, ax = plt.subplots(figsize=(6, 4))
  for kind, marker in (("relu", "o"), ("linear", "s"), ("hidden_relu", "^")):
    rows = sorted((r for r in records if r["model"] == kind), key=lambda r: r["sparsity"])
    if rows:
      ax.plot([1 / r["density"] for r in rows], [r["dims_per_feature"] for r in rows],
              marker=marker, label=kind)
  for v in REFERENCE_DIMS:
    ax.axhline(v, color="grey", lw=0.6, ls="--")
    ax.text(1.0, v, f" {v:.3g}", va="bottom", fontsize=7, color="grey")
  ax.set_xscale("log")
  ax.set_xlabel("1 / (1 - S)")
  ax.set_ylabel("dimensions per feature  m / ||W||²_F")
  ax.legend()
  ax.set_title("Dimensions per feature against sparsity")
  return _save(fig, path)


def feature_dimensionality(records: list[dict], path: str) -> str:
  fig, ax = plt.subplots(figsize=(6, 4))
  for r in records:
    if r["model"] != "relu":
      continue
    d = np.asarray(r["feature_dimensionality"])
    x = np.full(d.shape, 1 / r["density"])
    ax.scatter(x, d, s=6, alpha=0.5, color="C0")
  for v in REFERENCE_DIMS:
    ax.axhline(v, color="grey", lw=0.6, ls="--")
  ax.set_xscale("log")
  ax.set_xlabel("1 / (1 - S)")
  ax.set_ylabel("feature dimensionality $D_i$")
  ax.set_title("Feature dimensionality (ReLU model)")
  return _save(fig, path)


def phase_diagram(phase: dict, path: str) -> str:
  """Trained (lowest expected loss over seeds) and theoretical phase per cell, side by side;
  cells where they disagree are crossed on the trained panel."""
  cells = phase["cells"]
  rel = sorted({c["relative_importance"] for c in cells})
  dens = sorted({c["density"] for c in cells})
  grids = {k: np.full((len(dens), len(rel)), np.nan) for k in ("phase", "phase_theory")}
  for c in cells:
    for k, g in grids.items():
      g[dens.index(c["density"]), rel.index(c["relative_importance"])] = c[k]
  cmap = matplotlib.colors.ListedColormap(["#dddddd", "#4c72b0", "#dd8452"])
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
  titles = {"phase": f"trained (best of {phase['seeds_per_cell']} seeds)",
            "phase_theory": "theory (minimum of the exact expected loss)"}
  for ax, (k, g) in zip(axes, grids.items()):
    ax.pcolormesh(rel, dens, g, cmap=cmap, vmin=-0.5, vmax=2.5, shading="nearest")
    ax.set_xscale("log"); ax.set_yscale("log")
    ax.set_xlabel("relative importance of feature 2")
    ax.set_title(titles[k], fontsize=9)
  bad = [(c["relative_importance"], c["density"]) for c in cells
         if c["phase"] != c["phase_theory"]]
  if bad:
    axes[0].scatter(*zip(*bad), marker="x", color="k", s=25, label="differs from theory")
  axes[0].set_ylabel("feature density 1 - S")
  handles = [matplotlib.patches.Patch(color=c, label=l) for c, l in
             zip(cmap.colors, ["feature 2 not represented", "feature 2 dedicated", "superposition"])]
  axes[1].legend(handles=handles, fontsize=7, loc="lower right")
  fig.suptitle(f"Two features in one dimension (n=2, m=1): "
               f"{phase['agreement']:.0%} of {phase['n_cells']} cells agree")
  return _save(fig, path)


def per_feature(records: list[dict], key: str, ylabel: str, path: str) -> str:
  """One panel per model kind: `key` (a per-feature list) against feature index, one line
  per sparsity (the post's bias and norm plots)."""
  kinds = [k for k in KINDS if any(r["model"] == k for r in records)]
  sparsities = sorted({r["sparsity"] for r in records})
  fig, axes = plt.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 3.4), sharey=True,
                           squeeze=False)
  for ax, kind in zip(axes[0], kinds):
    for i, s in enumerate(sparsities):
      rec = next((r for r in records if r["model"] == kind and r["sparsity"] == s), None)
      if rec is not None:
        v = np.asarray(rec[key])
        ax.plot(np.arange(len(v)), v, marker=".", ms=4, color=plt.cm.plasma(i / max(
            1, len(sparsities))), label=f"S={s:.2f}")
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_title(LABELS[kind], fontsize=9)
    ax.set_xlabel("feature i (importance decreasing)")
  axes[0, 0].set_ylabel(ylabel)
  axes[0, -1].legend(fontsize=7)
  return _save(fig, path)


def write_all(records: list[dict], figdir: str, phase: dict | None = None,
              post: dict | None = None) -> list[str]:
  """The figures of a run; `post` (the post summary) adds the post's per-feature plots."""
  if phase:
    return [phase_diagram(phase, os.path.join(figdir, "phase_diagram.png"))]
  out = [wtw_grid(records, os.path.join(figdir, "wtw_and_norms.png")),
         dims_per_feature(records, os.path.join(figdir, "dims_per_feature.png")),
         feature_dimensionality(records, os.path.join(figdir, "feature_dimensionality.png"))]
  if post:
    out += [per_feature(records, "bias", "bias $b_i$", os.path.join(figdir, "bias.png")),
            per_feature(records, "feature_norms", "$\\|W_i\\|$",
                        os.path.join(figdir, "feature_norms.png"))]
  return out
