"""Figures of the ground-truth SAE benchmark (jaxcode.experiments.synth_bench)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from jaxcode.report.common import save_figure  # noqa: E402

METRICS = (("f1", "feature detection F1"), ("mcc", "MCC"), ("uniqueness", "uniqueness"),
           ("explained_variance", "explained variance"))


def metric_bars(results: dict, path: str) -> str:
  """One panel per metric: ours per architecture (solid) beside the published value of the
  corresponding architecture at L0 = 25 (hatched; absent where there is none)."""
  rows = results["table"]
  names = [r["architecture"] for r in rows]
  x = np.arange(len(rows))
  fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6), squeeze=False)
  for ax, (key, title) in zip(axes[0], METRICS):
    ours = [r[key] for r in rows]
    pub = [r["published"][key] if r.get("published") else np.nan for r in rows]
    ax.bar(x - 0.2, ours, 0.4, label=f"ours ({results['variant']}, L0 {results['target_l0']})",
           color="tab:blue")
    ax.bar(x + 0.2, pub, 0.4, label="published (16k, L0 25)", color="white",
           edgecolor="tab:orange", hatch="//")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=40, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=10)
  axes[0, 0].legend(fontsize=7, loc="lower left")
  return save_figure(fig, path)


def l0_tradeoff(results: dict, path: str) -> str:
  """F1 and MCC against the SAE's L0 for every trained SAE (sweeps included)."""
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), squeeze=False)
  for ax, key in zip(axes[0], ("f1", "mcc")):
    for r in results["table"]:
      runs = r.get("runs") or [r]
      ax.plot([u["sae_l0"] for u in runs], [u[key] for u in runs], "o-", ms=4,
              label=r["architecture"])
    ax.axvline(results["target_l0"], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("SAE L0 (eval)")
    ax.set_ylabel(key)
  axes[0, 0].legend(fontsize=7)
  return save_figure(fig, path)


def write_all(results: dict, figdir: str) -> list[str]:
  os.makedirs(figdir, exist_ok=True)
  return [metric_bars(results, os.path.join(figdir, "metrics_vs_published.png")),
          l0_tradeoff(results, os.path.join(figdir, "l0_tradeoff.png"))]
