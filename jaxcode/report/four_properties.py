"""Figures of the feature-atlas table (matplotlib, PNG): eigenspectra with their fitted
power laws, slope against layer, the four properties against layer with their pass marks."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from jaxcode.report.common import save_figure as _save  # noqa: E402

PROPERTIES = ("abstraction", "precision", "specificity", "systematicity")


def eigenspectra(results: dict, path: str) -> str:
  """Per context: covariance eigenvalue against rank (log-log), one line per layer, with the
  OLS power law over the rank window dashed."""
  table = results["table"]
  lo, hi = results["rank_window"]["lo"], results["rank_window"]["hi"]
  fig, axes = plt.subplots(1, len(table), figsize=(5.2 * len(table), 4), squeeze=False)
  for ax, (ctx, rows) in zip(axes[0], table.items()):
    colours = plt.cm.viridis(np.linspace(0, 1, len(rows)))
    for row, col in zip(rows, colours):
      lam = np.asarray(row["eigenvalues"], float)
      rank = np.arange(1, len(lam) + 1)
      pos = lam > 0
      ax.loglog(rank[pos], lam[pos], color=col, lw=1.2,
                label=f"L{row['layer']}: slope {row['slope']:.2f}")
      r = np.arange(lo, hi + 1)
      ax.loglog(r, np.exp(row["intercept"]) * r ** row["slope"], "--", color=col, lw=0.9)
    ax.axvspan(lo, hi, color="0.9", zorder=0)
    ax.set_xlabel("rank"); ax.set_ylabel("eigenvalue")
    ax.set_title(f"{ctx}: eigenspectra (fit over ranks {lo}-{hi})", fontsize=9)
    ax.legend(fontsize=7)
  return _save(fig, path)


def slope_vs_layer(results: dict, path: str) -> str:
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for i, (ctx, rows) in enumerate(results["table"].items()):
    layers = [r["layer"] for r in rows]
    ax.plot(layers, [r["slope"] for r in rows], "o-", color=f"C{i}", label=f"{ctx} (OLS)")
    ax.plot(layers, [r["slope_stringer"] for r in rows], "s:", color=f"C{i}",
            label=f"{ctx} (Stringer)")
  ax.axhline(-1.0, color="0.5", lw=0.8, ls="--", label="slope -1")
  ax.set_xlabel("layer (0 = embeddings)"); ax.set_ylabel("power-law slope")
  ax.set_title(f"{results['model']}: eigenspectrum slope against layer", fontsize=9)
  ax.legend(fontsize=7)
  return _save(fig, path)


def properties_vs_layer(results: dict, path: str) -> str:
  fig, axes = plt.subplots(2, 2, figsize=(9, 6.5))
  for ax, prop in zip(axes.ravel(), PROPERTIES):
    for ctx, rows in results["table"].items():
      ax.plot([r["layer"] for r in rows], [r[prop] for r in rows], "o-", label=ctx)
    ax.axhline(results["pass_marks"][prop], color="r", ls="--", lw=1, label="pass mark")
    ax.set_title(prop, fontsize=9); ax.set_xlabel("layer (0 = embeddings)")
    ax.legend(fontsize=7)
  fig.suptitle(f"{results['model']}: the four properties against layer", fontsize=10)
  fig.tight_layout()
  return _save(fig, path)


def write_all(results: dict, figdir: str) -> list[str]:
  return [eigenspectra(results, os.path.join(figdir, "eigenspectra.png")),
          slope_vs_layer(results, os.path.join(figdir, "slope_vs_layer.png")),
          properties_vs_layer(results, os.path.join(figdir, "properties_vs_layer.png"))]
