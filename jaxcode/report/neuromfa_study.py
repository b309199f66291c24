"""Figures and the HTML page of launch.neuromfa_study.

write_all(results, figdir) draws, in the seed's style (f(alpha) spectra over checkpoints,
E(t) beside accuracy(t), E against size): claim1_spectra.png, claim1_series.png,
claim2_E_accuracy.png, claim3_E_size.png, claim5.png, real_spectra.png (those whose data
the results hold). write_page(results, path) writes one self-contained HTML page (figures
inlined): each claim with the seed's reported direction, our number with its error bar,
the verdict and its reason; the wall times.
"""

from __future__ import annotations

import base64
import html
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from jaxcode import workdir as workdir_lib  # noqa: E402
from jaxcode.report.common import save_figure as _save  # noqa: E402

_COL = plt.cm.plasma


def _ms(per_seed_KT):
  a = np.asarray(per_seed_KT, np.float64)
  se = a.std(0, ddof=1) / np.sqrt(len(a)) if len(a) > 1 else np.zeros(a.shape[1])
  return a.mean(0), se


def _x(pt) -> np.ndarray:
  """Checkpoint steps with step 0 drawn at 0.5 (log axis)."""
  return np.array([0.5 if s in (0, None) else s for s in pt["steps"]], np.float64)


def claim1_spectra(family, path) -> str:
  fig, axes = plt.subplots(1, len(family), figsize=(3.3 * len(family), 3.0), squeeze=False)
  for ax, pt in zip(axes[0], family):
    cols = plt.cm.viridis(np.linspace(0, 0.9, len(pt["spectra"])))
    for sp, c, s in zip(pt["spectra"], cols, pt["steps"]):
      ax.plot(sp["alpha"], sp["f"], "-", color=c, lw=1.2, label=f"step {s}")
    for sp in (pt["spectra"][0], pt["spectra"][-1]):
      ax.plot(sp["null_alpha"], sp["null_f"], "--", color="grey", lw=0.8)
    ax.set_title(f"{pt['name']} ({pt['params_nonembed']:,} params)", fontsize=8)
    ax.set_xlabel(r"$\alpha$")
  axes[0][0].set_ylabel(r"$f(\alpha)$ (dashed: null, first/last)")
  axes[0][-1].legend(fontsize=5, loc="lower right")
  fig.tight_layout()
  return _save(fig, path)


def claim1_series(family, path) -> str:
  fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
  cols = _COL(np.linspace(0, 0.85, len(family)))
  for pt, c in zip(family, cols):
    for ax, key in zip(axes, ("alpha0", "width")):
      m, se = _ms(pt["per_seed"][key])
      ax.errorbar(_x(pt), m, se, fmt="o-", color=c, ms=3, lw=1.2, label=pt["name"])
      ax.plot(_x(pt), _ms(pt["per_seed"][f"null_{key}"])[0], "--", color=c, lw=0.8)
  for ax, name in zip(axes, (r"$\alpha_0$", "width")):
    ax.set_xscale("log")
    ax.set_xlabel("step (0 at 0.5)")
    ax.set_title(f"{name} (dashed: matched i.i.d. null)", fontsize=9)
  axes[0].legend(fontsize=6)
  fig.tight_layout()
  return _save(fig, path)


def claim2_e_accuracy(family, path) -> str:
  fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
  cols = _COL(np.linspace(0, 0.85, len(family)))
  for pt, c in zip(family, cols):
    m, se = _ms(pt["per_seed"]["emergence"])
    axes[0].errorbar(_x(pt), m, se, fmt="o-", color=c, ms=3, label=pt["name"])
    axes[0].plot(_x(pt), _ms(pt["per_seed"]["null_emergence"])[0], "--", color=c, lw=0.8)
    axes[1].plot(_x(pt), pt["eval"]["task_acc"], "o-", color=c, ms=3)
    axes[1].plot(_x(pt), pt["eval"]["acc"], ":", color=c, lw=0.8)
    axes[2].scatter(pt["eval"]["task_acc"], m, color=c, s=12)
  axes[0].set_title("E(t) (dashed: null)", fontsize=9)
  axes[1].set_title("cloze accuracy (dotted: next-token)", fontsize=9)
  for ax in axes[:2]:
    ax.set_xscale("log")
    ax.set_xlabel("step (0 at 0.5)")
  axes[2].set_xlabel("cloze accuracy")
  axes[2].set_ylabel("E")
  axes[0].legend(fontsize=6)
  fig.tight_layout()
  return _save(fig, path)


def claim3_e_size(family, claim, path) -> str:
  fig, ax = plt.subplots(figsize=(4.5, 3.4))
  n = np.array([pt["params_nonembed"] for pt in family], np.float64)
  for key, style, lab in (("emergence", "o", "trained"), ("null_emergence", "s", "null")):
    vals = [np.asarray(pt["per_seed"][key])[:, -1] for pt in family]
    se = [v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0 for v in vals]
    ax.errorbar(n, [v.mean() for v in vals], se, fmt=style, label=lab, capsize=3)
  fit = claim["number"]["fit"]
  xx = np.geomspace(n.min(), n.max(), 50)
  ax.plot(xx, fit["intercept"] + fit["slope"] * np.log(xx), "-", lw=1,
          label=f"fit slope {fit['slope']:.3g}")
  ax.set_xscale("log")
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())   # 2x10^4 .. 9x10^5 overlap
  ax.set_xlabel("non-embedding parameters")
  ax.set_ylabel("E at the last checkpoint")
  ax.legend(fontsize=7)
  return _save(fig, path)


def claim5_figure(clean, claim, path) -> str:
  dup, ft = claim["duplicated"], claim["finetune"]
  fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.2))
  for pt, lab, st in ((clean, "corpus as is", "o-"), (dup, "duplicated", "s--")):
    m, se = _ms(pt["per_seed"]["emergence"])
    axes[0].errorbar(_x(pt), m, se, fmt=st, ms=3, label=lab)
  axes[0].set_xscale("log")
  axes[0].set_xlabel("step (0 at 0.5)")
  axes[0].set_title("E(t): corpus as is vs duplicated", fontsize=9)
  axes[0].legend(fontsize=7)
  x = np.arange(len(ft["labels"]))
  m, se = _ms(ft["per_seed"]["emergence"])
  axes[1].errorbar(x, m, se, fmt="o-", ms=3, label="E")
  ax2 = axes[1].twinx()
  ax2.plot(x, ft["eval"]["task_acc"], "s--", color="C3", ms=3, label="cloze accuracy")
  ax2.set_ylabel("cloze accuracy", color="C3")
  axes[1].set_xticks(x, ft["labels"], rotation=60, fontsize=6)
  axes[1].set_title("contaminated (token-shuffled) fine-tune", fontsize=9)
  axes[1].set_ylabel("E")
  fig.tight_layout()
  return _save(fig, path)


def real_spectra(real, family, path) -> str:
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
  rows = [(m["label"], m["spectra"][0], m["per_seed"]) for m in real["models"]]
  rows += [(pt["name"], pt["spectra"][-1], {k: np.asarray(v)[:, -1:] for k, v in
                                            pt["per_seed"].items()}) for pt in family]
  cols = plt.cm.tab10(np.arange(len(rows)) % 10)
  for (lab, sp, ps), c in zip(rows, cols):
    axes[0].plot(sp["alpha"], sp["f"], "-", color=c, lw=1.2, label=lab)
    axes[0].plot(sp["null_alpha"], sp["null_f"], "--", color=c, lw=0.8)
    for key, mk in (("", "o"), ("null_", "x")):
      a, w = np.asarray(ps[f"{key}alpha0"])[:, -1], np.asarray(ps[f"{key}width"])[:, -1]
      axes[1].scatter(a.mean(), w.mean(), color=c, marker=mk, s=30)
  axes[0].set_xlabel(r"$\alpha$")
  axes[0].set_ylabel(r"$f(\alpha)$")
  axes[0].set_title("real checkpoints and the family's last (dashed: null)", fontsize=8)
  axes[0].legend(fontsize=6)
  axes[1].set_xlabel(r"$\alpha_0$")
  axes[1].set_ylabel("width")
  axes[1].set_title("o trained, x null (means over samples)", fontsize=8)
  fig.tight_layout()
  return _save(fig, path)


def write_all(results: dict, figdir: str) -> list[str]:
  fam, claims = results.get("family", []), results.get("claims", {})
  p = lambda name: os.path.join(figdir, name)
  out = []
  if "claim1" in claims:
    out += [claim1_spectra(fam, p("claim1_spectra.png")), claim1_series(fam, p("claim1_series.png"))]
  if "claim2" in claims:
    out.append(claim2_e_accuracy(fam, p("claim2_E_accuracy.png")))
  if "claim3" in claims:
    out.append(claim3_e_size(fam, claims["claim3"], p("claim3_E_size.png")))
  if "claim5" in claims:
    name = claims["claim5"]["finetune"]["name"]
    clean = next((pt for pt in fam if pt["name"] == name), None) or fam[0]
    out.append(claim5_figure(clean, claims["claim5"], p("claim5.png")))
  if results.get("real"):
    out.append(real_spectra(results["real"], fam, p("real_spectra.png")))
  return out


def _pm(v) -> str:
  m, se = v
  return f"{m:.3g} &plusmn; {se:.2g}" if np.isfinite(se) else f"{m:.3g} (no error bar)"


def headline(name: str, c: dict) -> str:
  """Our number with its error bar (SE over network samples, or a 95% bootstrap CI)."""
  n = c.get("number", {})
  ci = lambda v: f"[{v[0]:.2f}, {v[1]:.2f}]"
  if name == "claim1":
    return (f"largest: left shift beyond null {_pm(n['largest_left_shift'])}, widening "
            f"{_pm(n['largest_widening'])}; smallest: {_pm(n['smallest_left_shift'])}, "
            f"{_pm(n['smallest_widening'])}")
  if name == "claim2":
    pl = n["pooled"]
    sizes = ", ".join(f"{p['rho']:.2f}" for p in n["per_size"])
    return (f"pooled Spearman &rho;(E, cloze acc.) = {pl['rho']:.2f}, 95% CI {ci(pl['ci'])}; "
            f"null E: {pl.get('rho_null', float('nan')):.2f}; per size (small to large): {sizes}")
  if name == "claim3":
    f = n["fit"]
    return f"dE/dln N = {f['slope']:.3g}, 95% CI {ci(f['ci'])}, R&sup2; {f['r2']:.2f}"
  if name == "claim4":
    parts = [f"{k}: {n[k]['delta']:+.3f}, {100 * n['level']:.0f}% CI [{n[k]['lo']:+.3f}, "
             f"{n[k]['hi']:+.3f}]" for k in ("cnn", "denoiser") if "delta" in n.get(k, {})]
    return html.escape(f"{n.get('metric', 'E')}, transformer minus model: " + "; ".join(parts))
  if name == "claim5":
    return (f"E(as is) &minus; E(duplicated) = {_pm(n['dedup_minus_dup_E'])}; fine-tune "
            f"&Delta;E = {_pm(n['finetune_dE'])}, &Delta;acc = {n['finetune_dacc']:+.3f}")
  return html.escape(str(c.get("headline", n)))[:400]


def _img(path: str) -> str:
  with open(path, "rb") as f:
    data = base64.b64encode(f.read()).decode()
  return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{border:1px solid #ccc;"
        "padding:4px;vertical-align:top;font-size:13px}table{border-collapse:collapse}"
        ".supported{color:#070}.not{color:#a00}.inconclusive{color:#a60}")


def _claim_rows(results) -> list[str]:
  rows = []
  for name, c in results.get("claims", {}).items():
    cls = {"supported": "supported", "not supported": "not"}.get(c["verdict"], "inconclusive")
    rows.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(c.get('direction', ''))}</td>"
                f"<td>{headline(name, c)}</td><td class='{cls}'><b>{html.escape(c['verdict'])}"
                f"</b><br>{html.escape(c.get('reason', ''))}</td></tr>")
  return rows


def write_page(results: dict, path: str) -> str:
  """The self-contained HTML page (atomic write; figures of results['figures'] and any a
  claim lists under its own 'figures'); returns its path."""
  fam = results.get("family", [])
  parts = [f"<html><head><meta charset='utf-8'><title>NeuroMFA study</title><style>{_CSS}"
           "</style></head><body><h1>NeuroMFA's claims, tested in miniature offline</h1>",
           f"<p>Variant <b>{html.escape(str(results.get('variant')))}</b>. Family: "
           + ", ".join(f"{html.escape(pt['name'])} ({pt['params_nonembed']:,} non-embedding, "
                       f"{pt['params_total']:,} total parameters)" for pt in fam)
           + f". Training tokens {results.get('train_tokens', 0):,}, vocabulary "
           f"{results.get('vocab', 0):,}. Error bars: SE over network samples (seeds); "
           "correlations and the size fit: 95% bootstrap intervals.</p>",
           "<table><tr><th>claim</th><th>seed's reported direction</th><th>our number</th>"
           "<th>verdict</th></tr>", *_claim_rows(results), "</table>"]
  claim_figs = [f for c in results.get("claims", {}).values() for f in c.get("figures", [])]
  for fig in list(results.get("figures", [])) + claim_figs:    # a claim may bring its own
    if os.path.exists(fig):
      parts.append(f"<h3>{html.escape(os.path.basename(fig))}</h3>{_img(fig)}")
  if results.get("real"):
    parts.append("<h2>Real checkpoints (last row of each: means over samples)</h2><table><tr>"
                 "<th>model</th><th>&alpha;0</th><th>width</th><th>null &alpha;0</th>"
                 "<th>null width</th></tr>")
    for m in results["real"]["models"]:
      ps = m["per_seed"]
      cell = lambda k: f"{np.mean(np.asarray(ps[k])[:, -1]):.3f}"
      parts.append(f"<tr><td>{html.escape(m['label'])}</td>" + "".join(
          f"<td>{cell(k)}</td>" for k in ("alpha0", "width", "null_alpha0", "null_width"))
          + "</tr>")
    parts.append("</table>")
  parts.append("<h2>Wall times (s, this machine)</h2><table>" + "".join(
      f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>"
      for k, v in results.get("wall_s", {}).items()) + "</table></body></html>")
  return workdir_lib.write_text(path, "\n".join(parts))
