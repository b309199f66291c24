"""Figures of coding-scheme runs (matplotlib, written as PNG): per nonlinearity, the readout
weights, the most active neurons, the posterior-averaged and NNGP kernels and the codes.

write_all(results, figdir) takes {nonlinearity: figure data}, the figure data being what
jaxcode.experiments.coding_schemes.analyse returns beside its numbers (arrays that are not
kept in results.json), and writes figdir/<nonlinearity>_{readouts,activations,kernels,codes}.png.
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


FIGURES = (("readouts", readouts), ("activations", activations), ("kernels", kernels),
           ("codes", codes))


def write_all(results: dict[str, dict], figdir: str) -> list[str]:
  """Every figure of every nonlinearity in `results` ({nonlinearity: figure data})."""
  return [fn(nl, fig, os.path.join(figdir, f"{nl}_{name}.png"))
          for nl, fig in results.items() for name, fn in FIGURES]
