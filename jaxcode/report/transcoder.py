"""Figures of a transcoder run (jaxcode.experiments.train_transcoder): FVU and L0 per layer,
CE recovered against L0.

`write_all(results, figdir)` reads only results.json's fields, so it redraws a finished run;
`plot_ce_vs_l0(runs, path)` compares several runs (e.g. per-layer transcoders against a CLT of
equal latents) from their results.json.
"""

from __future__ import annotations

import os

import numpy as np

from jaxcode.report.common import plt, save_figure


def _by_label(per_layer: list[dict]) -> dict:
  out: dict = {}
  for r in per_layer:
    out.setdefault(r["label"], []).append(r)
  return out


def plot_layers(results: dict, path: str) -> str:
  """FVU (held-out) and L0 per layer, one line per dictionary label of the run."""
  tc = results["transcoder"]
  single = (results.get("replacement") or {}).get("single_layer") or {}
  fig, axes = plt.subplots(1, 3 if single else 2, figsize=(13 if single else 9, 3.2))
  for label, recs in _by_label(tc["per_layer"]).items():
    layers = [r["layer"] for r in recs]
    axes[0].plot(layers, [r["fvu"] for r in recs], "o-", label=label)
    axes[1].plot(layers, [r["l0"] for r in recs], "o-", label=label)
  axes[0].set_ylabel("FVU (held out)")
  axes[1].set_ylabel("L0 (active latents / token)")
  if single:
    ls = sorted(single, key=int)
    for key, name in (("ce_recovered_zero", "vs zero"), ("ce_recovered_mean", "vs mean")):
      axes[2].plot([int(l) for l in ls], [single[l][key] for l in ls], "o-", label=name)
    axes[2].set_ylabel("CE recovered, this MLP replaced alone")
  for ax in axes:
    ax.set_xlabel("layer")
    ax.legend(fontsize=7)
  fig.suptitle(f"{results.get('kind', '')} {tc['architecture']} on {results.get('model', '')}",
               fontsize=9)
  return save_figure(fig, path)


def _point(results: dict) -> tuple[float, float, float] | None:
  rep = results.get("replacement")
  if not rep:
    return None
  tc = results["transcoder"]
  # total active latents per token over all covered layers: what a replacement model pays
  return (float(np.sum([r["l0"] for r in tc["per_layer"]])), rep["ce_recovered_zero"],
          rep["ce_recovered_mean"])


def plot_ce_vs_l0(runs: list[dict], path: str) -> str | None:
  """CE recovered (against zero- and mean-ablated MLPs) against the total L0 over layers, one
  point per run with a replacement model."""
  pts = [(r, _point(r)) for r in runs]
  pts = [(r, p) for r, p in pts if p is not None]
  if not pts:
    return None
  fig, ax = plt.subplots(figsize=(5, 3.4))
  for r, (l0, zero, mean) in pts:
    lab = f"{r.get('kind')} {r['transcoder']['architecture']}"
    ax.plot([l0], [zero], "o", label=f"{lab} vs zero")
    ax.plot([l0], [mean], "s", label=f"{lab} vs mean")
  ax.set_xscale("log")
  ax.set_xlabel("total L0 over covered layers (latents / token)")
  ax.set_ylabel("CE loss recovered")
  ax.legend(fontsize=7)
  return save_figure(fig, path)


def write_all(results: dict, figdir: str) -> list[str]:
  out = [plot_layers(results, os.path.join(figdir, "layers.png"))]
  ce = plot_ce_vs_l0([results], os.path.join(figdir, "ce_vs_l0.png"))
  return out + ([ce] if ce else [])
