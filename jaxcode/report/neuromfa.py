"""Figures of NeuroMFA runs: f(alpha) spectra with their Gaussian nulls, E(t) over training.

write_all(results, figdir) draws the results.json of launch.neuromfa or launch.emergence
(whose records also carry train_loss and eval_loss, drawn beside E(t)).
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from jaxcode.report.common import save_figure as _save  # noqa: E402


def _arr(rec: dict, key: str) -> np.ndarray:
  return np.array([np.nan if v is None else v for v in rec[key]], np.float64)


def spectra(records: list[dict], labels: list[str], path: str) -> str:
  """f(alpha) of every checkpoint (solid) with its matched null (dashed, same colour)."""
  fig, ax = plt.subplots(figsize=(5.5, 4.0))
  colours = plt.cm.viridis(np.linspace(0, 0.9, max(len(records), 1)))
  for rec, lab, c in zip(records, labels, colours):
    ax.plot(_arr(rec, "alpha"), _arr(rec, "f"), "-", color=c, lw=1.5, label=lab)
    ax.plot(_arr(rec, "null_alpha"), _arr(rec, "null_f"), "--", color=c, lw=1.0)
  ax.set_xlabel(r"$\alpha$")
  ax.set_ylabel(r"$f(\alpha)$")
  ax.set_title("NeuroMFA spectrum (dashed: i.i.d. Gaussian null)", fontsize=9)
  ax.legend(fontsize=7, loc="best")
  return _save(fig, path)


def series(steps, records: list[dict], path: str, losses=None, xlabel: str = "checkpoint") -> str:
  """alpha0, width and E(t) per checkpoint beside the null; loss curves ({name: values}) if given."""
  steps = np.asarray(steps, np.float64)
  panels = [("alpha0", r"$\alpha_0$"), ("width", "width $w$"), ("emergence", "E(t)")]
  n = len(panels) + (losses is not None)
  fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2))
  x = np.where(steps > 0, steps, np.nan) if xlabel == "step" else steps
  for ax, (key, name) in zip(axes, panels):
    val = [np.nan if r[key] is None else r[key] for r in records]
    nul = [np.nan if r[f"null_{key}"] is None else r[f"null_{key}"] for r in records]
    ax.plot(steps, val, "o-", label="trained")
    ax.plot(steps, nul, "s--", label="null")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel(xlabel)
  if xlabel == "step" and np.nanmax(x) / max(np.nanmin(x), 1) > 20:
    for ax in axes:
      ax.set_xscale("symlog", linthresh=1.0)
  axes[0].legend(fontsize=7)
  if losses is not None:
    ax = axes[-1]
    curves = losses if isinstance(losses, dict) else {"loss": losses}
    for (name, vals), style in zip(curves.items(), ("o-", "s--", "^:")):
      ax.plot(steps, [np.nan if v is None else v for v in vals], style, label=name)
    ax.set_title("loss (nats/token)", fontsize=9)
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=7)
  fig.tight_layout()
  return _save(fig, path)


def _losses(records: list[dict]) -> dict | None:
  """{curve: values} of the records' losses (launch.emergence), or None."""
  if not records or "eval_loss" not in records[0]:
    return None
  return {"train (last batch)": [r.get("train_loss") for r in records],
          "held-out": [r["eval_loss"] for r in records]}


def write_all(results: dict, figdir: str) -> list[str]:
  """spectra.png, and series.png for a series (or when the records carry losses); the x
  axis is the training step when every checkpoint names a distinct one."""
  recs = results["checkpoints"]
  paths = [spectra(recs, [r["label"] for r in recs], os.path.join(figdir, "spectra.png"))]
  steps = [r["step"] for r in recs]
  use_steps = all(np.isfinite(steps)) and len(set(steps)) == len(steps)
  losses = _losses(recs)
  if len(recs) > 1 or losses is not None:
    x = steps if use_steps else list(range(len(recs)))
    paths.append(series(x, recs, os.path.join(figdir, "series.png"), losses=losses,
                        xlabel="step" if use_steps else "checkpoint"))
  return paths
