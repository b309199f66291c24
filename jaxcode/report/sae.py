"""Figures of the SAE stage's results (jaxcode.pipeline.sae): feature density, L0 vs EV.

`write_all(results, figdir)` reads only results.json's fields (per SAE: label, l0,
explained_variance, dead_fraction, log10_density_hist), so it can redraw a finished run.
"""

from __future__ import annotations

import os

import numpy as np

from jaxcode.report.common import plt, save_figure


def plot_density_histogram(metrics_list: list[dict], labels: list[str], path: str) -> str:
  """Histogram of log10 feature density, one step curve per SAE (dead fraction in the
  legend)."""
  fig, ax = plt.subplots(figsize=(5, 3.2))
  for m, lab in zip(metrics_list, labels):
    h = m["log10_density_hist"]
    e = np.asarray(h["edges"])
    ax.step(0.5 * (e[1:] + e[:-1]), h["counts"], where="mid",
            label=f"{lab} (dead {m['dead_fraction']:.1%})")
  ax.set_xlabel("log10 feature density")
  ax.set_ylabel("latents")
  ax.legend(fontsize=7)
  return save_figure(fig, path)


def plot_l0_vs_ev(metrics_list: list[dict], labels: list[str], path: str) -> str:
  """Explained variance against L0 (log scale), one point per SAE of a sweep."""
  fig, ax = plt.subplots(figsize=(4.5, 3.2))
  l0 = [m["l0"] for m in metrics_list]
  ev = [m["explained_variance"] for m in metrics_list]
  ax.plot(l0, ev, "o-")
  for x, y, lab in zip(l0, ev, labels):
    ax.annotate(lab, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
  ax.set_xscale("log")
  ax.set_xlabel("L0 (active latents / token)")
  ax.set_ylabel("explained variance")
  return save_figure(fig, path)


def write_all(results: dict, figdir: str) -> list[str]:
  """The SAE figures of a results dict (its 'saes' list) under figdir; returns their paths."""
  saes = results["saes"]
  labels = [s["label"] for s in saes]
  return [plot_density_histogram(saes, labels, os.path.join(figdir, "density.png")),
          plot_l0_vs_ev(saes, labels, os.path.join(figdir, "l0_vs_ev.png"))]
