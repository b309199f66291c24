"""Figures of coding-scheme runs (matplotlib, written as PNG): per nonlinearity, the readout
weights, the most active neurons, the posterior-averaged and NNGP kernels, the codes, the
readouts against the single-neuron theory (linear, erf), codes by layer, drift.

write_all(results, figdir) takes {nonlinearity: figure data}, the figure data being what
jaxcode.experiments.coding_schemes.analyse returns beside its numbers (arrays that are not
kept in results.json), and writes figdir/<nonlinearity>_{readouts,activations,kernels,codes,theory,layers,drift}.png.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from jaxcode.report.common import save_figure  # noqa: E402

DPI = 90


def readouts(nl: str, fig: dict, path: str) -> str:
  """Histograms of the readout weights a_ik of the first 10 classes, all samples."""
  a = fig["a_all"].reshape(-1, fig["a_all"].shape[-1])
  cols = min(a.shape[1], 10)
  f, axes = plt.subplots(1, cols, figsize=(2.2 * cols, 2.2), squeeze=False)
  for k in range(cols):
    axes[0, k].hist(a[:, k], bins=60, color="C0", log=True)   # log counts: outliers visible
    axes[0, k].set_title(f"class {k}: a_ik", fontsize=8)
  f.suptitle(f"{nl}: readout weights, all posterior samples", y=1.08)
  return save_figure(f, path, dpi=DPI)


def activations(nl: str, fig: dict, path: str) -> str:
  """The 20 neurons with the largest activation x readout norm, inputs sorted by class."""
  order = np.argsort(fig["labels"], kind="stable")
  feat = fig["feat_last"][order]
  top = np.argsort(-np.sqrt((feat ** 2).mean(0)) * np.linalg.norm(fig["a_last"], axis=1))[:20]
  f, ax = plt.subplots(figsize=(6, 3))
  ax.imshow(feat[:, top].T, aspect="auto", cmap="RdBu_r" if nl != "relu" else "viridis")
  ax.set_xlabel("training input (sorted by class)")
  ax.set_ylabel("neuron (top 20)")
  ax.set_title(f"{nl}: activations of the most active neurons (one sample)")
  return save_figure(f, path, dpi=DPI)


def kernels(nl: str, fig: dict, path: str) -> str:
  """Posterior-averaged feature kernel beside the NNGP (lazy) kernel, inputs sorted by class."""
  order = np.argsort(fig["labels"], kind="stable")
  f, axes = plt.subplots(1, 2, figsize=(8, 3.6))
  for ax, k, t in ((axes[0], fig["kernel"], "posterior-averaged kernel"),
                   (axes[1], fig["kernel_gp"], "NNGP kernel (lazy)")):
    im = ax.imshow(k[np.ix_(order, order)], cmap="viridis")
    ax.set_title(f"{nl}: {t}", fontsize=9)
    plt.colorbar(im, ax=ax, fraction=0.046)
  return save_figure(f, path, dpi=DPI)


def codes(nl: str, fig: dict, path: str) -> str:
  """Neurons per binary code (the 16 most frequent), summed over samples."""
  items = list(fig["codes"].items())[:16]
  f, ax = plt.subplots(figsize=(6, 2.8))
  ax.bar(range(len(items)), [v for _, v in items])
  ax.set_xticks(range(len(items)), [c for c, _ in items], rotation=90, fontsize=7)
  ax.set_ylabel("neurons (summed over samples)")
  ax.set_title(f"{nl}: coding scheme")
  return save_figure(f, path, dpi=DPI)


def theory(nl: str, fig: dict, path: str) -> str:
  """Readouts of class 0 and 1: sampled posterior (bars) against the single-neuron theory
  (points, the paper's theory points), as densities."""
  a = fig["a_all"].reshape(-1, fig["a_all"].shape[-1])
  at = np.asarray(fig["a_theory"])
  cols = min(a.shape[1], 2)
  f, axes = plt.subplots(1, cols, figsize=(3.4 * cols, 2.6), squeeze=False)
  for k in range(cols):
    lo, hi = np.percentile(np.concatenate([a[:, k], at[:, k]]), [0.5, 99.5])
    bins = np.linspace(lo, hi, 41)
    axes[0, k].hist(a[:, k], bins=bins, density=True, color="C0", alpha=0.6, label="sampled")
    h, e = np.histogram(at[:, k], bins=bins, density=True)
    axes[0, k].plot((e[1:] + e[:-1]) / 2, h, "o", ms=3, color="C3", label="theory")
    axes[0, k].set_title(f"class {k}: a_ik", fontsize=8)
  axes[0, 0].legend(fontsize=7)
  f.suptitle(f"{nl}: readouts, samples vs self-consistent theory", y=1.04)
  return save_figure(f, path, dpi=DPI)


def layers(nl: str, fig: dict, path: str) -> str:
  """Per hidden layer: kernel-label alignment, coding fraction and NC1 (sharpening)."""
  rows = fig["layers"]
  x = [r["layer"] for r in rows]
  f, axes = plt.subplots(1, 3, figsize=(9, 2.6))
  for ax, key in zip(axes, ("kernel_alignment", "coding_fraction", "nc1")):
    ax.plot(x, [r[key] for r in rows], "o-")
    ax.set_xticks(x)
    ax.set_xlabel("hidden layer")
    ax.set_title(key, fontsize=9)
  f.suptitle(f"{nl}: codes by layer", y=1.04)
  return save_figure(f, path, dpi=DPI)


def drift(nl: str, fig: dict, path: str) -> str:
  """Identity-matched readout correlation and code agreement within a chain against lag,
  with the between-chain and permuted-neuron levels."""
  d = fig["drift"]
  lags = [r["lag"] for r in d["within_chain_by_lag"]]
  f, axes = plt.subplots(1, 2, figsize=(7, 2.6))
  for ax, key in zip(axes, ("readout_corr", "code_agreement")):
    ax.plot(lags, [r[key] for r in d["within_chain_by_lag"]], "o-", label="within chain")
    ax.axhline(d["between_chains"][key], color="C1", ls="--", label="between chains")
    if key in d["permuted_null"]:
      ax.axhline(d["permuted_null"][key], color="0.5", ls=":", label="permuted neurons")
    ax.set_xlabel("lag (stored samples)")
    ax.set_title(key, fontsize=9)
  axes[0].legend(fontsize=7)
  f.suptitle(f"{nl}: drift and symmetry breaking", y=1.04)
  return save_figure(f, path, dpi=DPI)


FIGURES = (("readouts", readouts), ("activations", activations), ("kernels", kernels),
           ("codes", codes), ("theory", theory), ("layers", layers), ("drift", drift))


def write_all(results: dict[str, dict], figdir: str) -> list[str]:
  """Every figure of every nonlinearity in `results` ({nonlinearity: figure data}); the
  theory figure only where the theory was computed, the layer and drift figures only when
  the figure data has them."""
  out = []
  for nl, fig in results.items():
    for name, fn in FIGURES:
      if (name == "theory" and fig.get("a_theory") is None) or (
          name in ("layers", "drift") and name not in fig):
        continue
      out.append(fn(nl, fig, os.path.join(figdir, f"{nl}_{name}.png")))
  return out
