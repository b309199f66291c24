"""The atlas report: results.json (numbers with definitions and units), figures/*.png and a
self-contained report.html (per-layer table, figures inline as base64 PNG, what the numbers
do and do not support)."""

from __future__ import annotations

import base64
import html
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from jaxcode import workdir as workdir_lib  # noqa: E402
from jaxcode.report import lobes_page  # noqa: E402
from jaxcode.report import seed_report  # noqa: E402
from jaxcode.report.common import save_figure  # noqa: E402

PROPERTIES = ("abstraction", "precision", "specificity", "systematicity")

# name: (definition, unit)
DEFINITIONS = {
    "twonn": ("TwoNN intrinsic dimension (Facco et al. 2017) of estimates.tokens residual-stream "
              "activations sampled from the cache; the largest twonn_discard of the ratios "
              "r2/r1 are dropped", "dimensions"),
    "mle": ("Levina-Bickel maximum-likelihood intrinsic dimension with mle_k neighbours, "
            "harmonic mean over points, same activations", "dimensions"),
    "sae_l0": ("mean number of SAE latents with a positive code per token, same "
               "activations", "latents per token"),
    "sae_l0_fraction": ("sae_l0 / d_sae", "fraction of latents"),
    "sae_orthogonality": ("1 - mean |cos| over distinct pairs of SAE decoder directions",
                          "1 (1 = orthogonal, 0 = all parallel)"),
    "sae_explained_variance": ("1 - residual variance / activation variance of the SAE "
                               "reconstruction on held-out sampled tokens (train_sae eval)",
                               "fraction of variance"),
    "sae_dead_fraction": ("fraction of latents that never fire on the held-out tokens",
                          "fraction of latents"),
    "act_slope": ("OLS slope of ln(eigenvalue) against ln(rank) of the activations' covariance "
                  "over ranks lo..hi (1-based, inclusive)", "ln units per ln rank"),
    "act_slope_r2": ("R^2 of that fit", "1"),
    "dec_slope": ("same fit for the covariance of the SAE decoder directions (rows of W_dec)",
                  "ln units per ln rank"),
    "dec_slope_r2": ("R^2 of that fit", "1"),
    "act_clustering_entropy": (
        "corrected clustering entropy of the activations: differential entropy (1-NN "
        "Kozachenko-Leonenko, after z-scoring and PCA to pca_dim) of a Gaussian with the same "
        "spectrum minus that of the data, mean over n_boot_corrected 80% subsamples; > 0 "
        "means more clustered than the Gaussian null", "nats"),
    "act_clustering_entropy_error": ("95% t-interval half-width of that mean", "nats"),
    "dec_clustering_entropy": ("same corrected clustering entropy of the SAE decoder "
                               "directions", "nats"),
    "dec_clustering_entropy_error": ("95% t-interval half-width of that mean", "nats"),
    "dec_clustering_entropy_notebook": (
        "the released galaxy notebook's clustering entropy of the decoder directions "
        "(bootstrap with replacement, ln(rho + theta)); kept to compare with its numbers",
        "nats"),
    "lobe_code_prose_separation": (
        "lobes (Li et al. 2024): SAE features clustered spectrally (first affinity, first "
        "cluster count) by co-occurrence in blocks of lobes.block_len tokens; each block is "
        "assigned the lobe with the largest fraction of its features firing; total-variation "
        "distance between the code blocks' and the prose blocks' lobe distributions (0: "
        "same lobes, 1: disjoint lobes)", "1"),
    "lobe_ami_sigma": ("adjusted mutual information between that co-occurrence clustering and "
                       "the decoder-angle clustering, in standard deviations of its "
                       "label-permutation null", "null standard deviations"),
    "lobe_probe_sigma": ("balanced accuracy of a logistic probe predicting the lobe from the "
                         "decoder direction, in standard deviations of its random-direction "
                         "null; null (undefined) when every null draw scores the same",
                         "null standard deviations"),
    "abstraction": ("concept words at this block's residual (template context): mean "
                    "inter-category over mean intra-category Euclidean distance; pass > 2.0",
                    "ratio"),
    "precision": ("cross-validated accuracy of a category probe on a PCA projection of the "
                  "concept representations; pass > 0.9", "accuracy"),
    "specificity": ("1 - mean |cos| between centred category-mean directions; pass > 0.7",
                    "1"),
    "systematicity": ("3CosAdd analogy accuracy over the concept vocabulary; pass > 0.7",
                      "accuracy"),
    "fp_sae_l0_fraction": ("fraction of SAE latents active on the concept representations",
                           "fraction of latents"),
    "spliced_score": ("the layer's SAE spliced into the model at every non-special position of "
                      "spliced.rows held-out rows: for a causal LM the CE loss recovered "
                      "(ce_zero - ce_sae) / (ce_zero - ce_clean) of next-token prediction "
                      "through the real LM head against zero ablation; for an encoder without "
                      "a head the sentence-embedding recovered (d_zero - d_sae) / d_zero, "
                      "d = 1 - cosine to the clean embedding", "1 (1 = no loss)"),
    "spliced_ce_clean": ("next-token cross-entropy of the unmodified model on those rows",
                         "nats per token"),
    "spliced_ce_sae": ("the same with the SAE reconstruction spliced in", "nats per token"),
    "spliced_ce_zero": ("the same with the layer's activation zero-ablated", "nats per token"),
    "spliced_kl": ("mean KL(p_clean || p_spliced) of the next-token distributions",
                   "nats per token"),
    "neuromfa_alpha0": ("NeuroMFA (Xiao et al. 2024): alpha at the maximum of f(alpha) of the "
                        "sampled neuron-interaction network of the weights (released one-hop "
                        "algorithm, S sampled neurons per layer)", "1 (Hoelder exponent)"),
    "neuromfa_width": ("alpha_max - alpha_min of the spectrum", "1 (Hoelder exponent)"),
    "neuromfa_null_alpha0": ("alpha0 of the same network with every weight matrix redrawn "
                             "i.i.d. Gaussian at its layer's std", "1"),
    "neuromfa_null_width": ("width of that null spectrum", "1"),
}

TABLE = (("layer", "block"), ("twonn", "TwoNN"), ("mle", "MLE"), ("sae_l0", "SAE L0"),
         ("sae_orthogonality", "SAE orth."), ("sae_explained_variance", "SAE EV"),
         ("spliced_score", "spliced rec."), ("spliced_kl", "spliced KL"),
         ("abstraction", "abstr."), ("precision", "prec."), ("specificity", "spec."),
         ("systematicity", "syst."), ("act_slope", "act. slope"), ("dec_slope", "dec. slope"),
         ("act_clustering_entropy", "act. CE"), ("dec_clustering_entropy", "dec. CE"),
         ("lobe_code_prose_separation", "code/prose lobes"), ("lobe_ami_sigma", "lobe AMI σ"),
         ("dashboards", "dashboards"))


# ------------------------------------------------------------------ results.json

def _lobe_pick(lobes: dict, config) -> dict:
  if not lobes["cluster_counts"]:  # skipped: too few active features (pipeline.lobes)
    return {}
  name = list(config.lobes.affinities)[0]
  k = str(int(lobes["cluster_counts"][0]))
  r = lobes["affinities"][name][k]
  return dict(lobe_code_prose_separation=r["code_prose_separation"],
              lobe_ami_sigma=r["ami_sigma"], lobe_probe_sigma=r["probe_sigma"],
              lobe_affinity=name, lobe_clusters=int(k))


def _spliced_row(r: dict | None) -> dict:
  if r is None:
    return {}
  if r["mode"] == "embedding":
    return {"spliced_score": r["embedding_recovered"]}
  return {"spliced_score": r["ce_recovered"], "spliced_kl": r["kl_sae"],
          "spliced_ce_clean": r["ce_clean"], "spliced_ce_sae": r["ce_sae"],
          "spliced_ce_zero": r["ce_zero"]}


def assemble(config, plan: dict, ext: dict, saes: dict, est: dict, fp: dict, nm,
             spliced: dict | None = None, dashboards: dict | None = None,
             evals: dict | None = None) -> dict:
  fp_rows = {r["hookpoint"]: r for r in fp["table"]["template"]}
  layers = []
  for l in plan["layers"]:
    e = dict(est[l])
    row = {k: e[k] for k in ("layer", "hookpoint", "tokens", "twonn", "mle", "sae_l0",
                             "sae_l0_fraction", "sae_orthogonality", "sae_explained_variance",
                             "sae_dead_fraction", "act_slope", "act_slope_r2", "dec_slope",
                             "dec_slope_r2", "act_clustering_entropy",
                             "act_clustering_entropy_error", "dec_clustering_entropy",
                             "dec_clustering_entropy_error", "dec_clustering_entropy_notebook")}
    row.update(_lobe_pick(e["lobes"], config))
    row.update(_spliced_row((spliced or {}).get("layers", {}).get(str(l))))
    f = fp_rows[e["hookpoint"]]
    for p in PROPERTIES:
      row[p] = f[p]
    row["pass"] = f["pass"]
    row["fp_sae_l0_fraction"] = f.get("l0_sparsity")
    row["lobes"] = e["lobes"]
    row["eigenvalues_activations"] = e["eigenvalues_activations"]
    row["eigenvalues_decoder"] = e["eigenvalues_decoder"]
    row["dashboards"] = (dashboards or {}).get(l, {}).get("index")
    layers.append(row)
  out = {"experiment": "atlas", "variant": config.variant, "model": plan["name"],
         "model_dir": plan["path"], "revision": config.revision or None,
         "model_type": fp.get("model_type"), "n_layers": plan["lm"].n_layers,
         "d_model": plan["lm"].d_model, "d_sae": plan["d_sae"], "layers_analysed": plan["layers"],
         "corpus": {"spec": config.extract.corpus, "tokens_cached": ext["n_tokens"],
                    "tokens_by_source": ext.get("tokens_by_source")},
         "config": config.to_dict(),
         "definitions": {k: {"definition": d, "unit": u} for k, (d, u) in DEFINITIONS.items()},
         "pass_marks": fp["pass_marks"], "concept_counts": fp.get("counts"),
         "layers": layers,
         "stages": {"extract": "extract/results.json", "sae": "sae/layer_<i>/results.json",
                    "estimates": "estimates/layer_<i>.json",
                    "four_properties": "four_properties/results.json",
                    "neuromfa": "neuromfa/results.json", "spliced": "spliced/results.json"}}
  out["sae_steps"] = {str(l): saes[l].get("steps") for l in plan["layers"]}
  if str(config.variant).startswith("seed_report"):   # its tables beside the published ones
    out["seed_report"] = seed_report.compare(out, seed_report.load_published())
  if spliced is not None:
    out["spliced"] = {k: spliced[k] for k in ("rows", "held_out", "tokens")}
  if evals is not None:         # SAEBench-compatible evals: their page and headline numbers
    out["evals"] = {k: evals[k] for k in ("evals", "page", "files", "summary")}
  if nm is not None:
    r = nm["checkpoints"][0]
    out["neuromfa"] = {"neuromfa_alpha0": r["alpha0"], "neuromfa_width": r["width"],
                       "neuromfa_null_alpha0": r["null_alpha0"],
                       "neuromfa_null_width": r["null_width"], "S": nm["S"],
                       "nodes": nm["nodes"], "edges": nm["edges"],
                       "alpha": r["alpha"], "f": r["f"], "null_alpha": r["null_alpha"],
                       "null_f": r["null_f"]}
  return out


def numbers(obj, path: str = ""):
  """Every (path, number) in a results tree (bools excluded)."""
  if isinstance(obj, dict):
    for k, v in obj.items():
      yield from numbers(v, f"{path}.{k}" if path else str(k))
  elif isinstance(obj, list):
    for i, v in enumerate(obj):
      yield from numbers(v, f"{path}[{i}]")
  elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
    yield path, obj


# ------------------------------------------------------------------ figures

def _save(fig, path: str) -> str:
  return save_figure(fig, path, dpi=100)


def _col(rows, k):
  return np.array([np.nan if r.get(k) is None else r[k] for r in rows], float)


def dimension_sae(results: dict, path: str) -> str:
  """Intrinsic dimension, SAE L0 and the SAE decoder/reconstruction numbers per block."""
  rows = results["layers"]
  L = _col(rows, "layer")
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  axes[0].plot(L, _col(rows, "twonn"), "o-", label="TwoNN")
  axes[0].plot(L, _col(rows, "mle"), "s-", label="MLE")
  axes[0].set(xlabel="block", ylabel="intrinsic dimension", title="Intrinsic dimension")
  axes[0].legend()
  axes[1].plot(L, _col(rows, "sae_l0"), "o-")
  axes[1].set(xlabel="block", ylabel="latents per token", title="SAE L0")
  axes[2].plot(L, _col(rows, "sae_orthogonality"), "o-", label="orthogonality")
  axes[2].plot(L, _col(rows, "sae_explained_variance"), "s-", label="explained variance")
  axes[2].set(xlabel="block", title="SAE decoder / reconstruction", ylim=(0, 1.05))
  axes[2].legend()
  return _save(fig, path)


def four_properties(results: dict, path: str) -> str:
  """Each of the four properties per block against its pass mark."""
  rows = results["layers"]
  L = _col(rows, "layer")
  fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
  for ax, p in zip(axes, PROPERTIES):
    ax.plot(L, _col(rows, p), "o-")
    ax.axhline(results["pass_marks"][p], color="r", ls="--", lw=1, label="pass mark")
    ax.set(xlabel="block", title=p)
  axes[0].legend()
  return _save(fig, path)


def spectra_entropy(results: dict, path: str) -> str:
  """Activation and decoder-direction eigenspectra per block; clustering entropies."""
  rows = results["layers"]
  fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
  cmap = plt.get_cmap("viridis")
  for i, r in enumerate(rows):
    c = cmap(i / max(len(rows) - 1, 1))
    for ax, key in ((axes[0], "eigenvalues_activations"), (axes[1], "eigenvalues_decoder")):
      lam = np.asarray(r[key], float)
      lam = lam[lam > 0]
      ax.loglog(np.arange(1, len(lam) + 1), lam, color=c, label=f"block {r['layer']}")
  axes[0].set(xlabel="rank", ylabel="eigenvalue", title="Activation covariance spectrum")
  axes[1].set(xlabel="rank", title="SAE decoder-direction spectrum")
  axes[0].legend(fontsize=7)
  L = _col(rows, "layer")
  axes[2].plot(L, _col(rows, "act_clustering_entropy"), "o-", label="activations")
  axes[2].plot(L, _col(rows, "dec_clustering_entropy"), "s-", label="SAE decoder")
  axes[2].axhline(0, color="k", lw=0.5)
  axes[2].set(xlabel="block", ylabel="nats", title="Clustering entropy vs Gaussian null")
  axes[2].legend()
  return _save(fig, path)


def lobes(results: dict, path: str) -> str:
  """Code vs prose lobe separation, and the lobes' AMI and probe against their nulls."""
  rows = results["layers"]
  L = _col(rows, "layer")
  fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
  ax[0].plot(L, _col(rows, "lobe_code_prose_separation"), "o-")
  ax[0].set(xlabel="block", ylabel="total variation", ylim=(0, 1.05),
            title="Code vs prose lobe separation")
  ax[1].plot(L, _col(rows, "lobe_ami_sigma"), "o-", label="AMI")
  ax[1].plot(L, _col(rows, "lobe_probe_sigma"), "s-", label="probe")
  ax[1].axhline(2, color="r", ls="--", lw=1)
  ax[1].set(xlabel="block", ylabel="null sd", title="Lobes vs their nulls")
  ax[1].legend()
  return _save(fig, path)


def neuromfa(results: dict, path: str) -> str:
  """The NeuroMFA spectrum of the weights against its Gaussian null."""
  nm = results["neuromfa"]
  fig, ax = plt.subplots(figsize=(5, 3.6))
  ax.plot(nm["alpha"], nm["f"], "o-", ms=3, label="weights")
  ax.plot(nm["null_alpha"], nm["null_f"], "s-", ms=3, label="Gaussian null")
  ax.set(xlabel="alpha", ylabel="f(alpha)", title="NeuroMFA spectrum")
  ax.legend()
  return _save(fig, path)


FIGURES = (("dimension_sae", dimension_sae), ("four_properties", four_properties),
           ("spectra_entropy", spectra_entropy), ("lobes", lobes))


def write_figures(results: dict, figdir: str) -> list[str]:
  """figdir/{dimension_sae, four_properties, spectra_entropy, lobes[, neuromfa]}.png."""
  paths = [fn(results, os.path.join(figdir, f"{name}.png")) for name, fn in FIGURES]
  if results.get("neuromfa"):
    paths.append(neuromfa(results, os.path.join(figdir, "neuromfa.png")))
  return paths


def write_all(results: dict, figdir: str) -> list[str]:
  """The report-module interface (write_all(results, figdir)); same as write_figures."""
  return write_figures(results, figdir)


# ------------------------------------------------------------------ report.html

def _fmt(v) -> str:
  if v is None:
    return "–"
  if isinstance(v, bool):
    return "yes" if v else "no"
  if isinstance(v, int):
    return str(v)
  if isinstance(v, float) and not math.isfinite(v):
    return "nan"
  return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def _cell(row: dict, key: str) -> str:
  if key == "dashboards":
    link = row.get(key)
    return (f'<td><a href="{html.escape(link)}">latents</a></td>' if link else "<td>–</td>")
  text = _fmt(row.get(key))
  if key in PROPERTIES:
    ok = row["pass"].get(key)
    cls = "pass" if ok else "fail"
    return f'<td class="{cls}">{text} {"✓" if ok else "✗"}</td>'
  return f"<td>{text}</td>"


def support_text(results: dict) -> list[str]:
  """Plain statements of what the numbers do and do not support."""
  rows = results["layers"]
  n = len(rows)
  out = []
  for p in PROPERTIES:
    k = sum(bool(r["pass"].get(p)) for r in rows)
    out.append(f"{p.capitalize()} passes its mark ({results['pass_marks'][p]}) at {k} of {n} "
               f"analysed blocks, on the concept-word lists shipped with jaxcode in a single "
               f"template sentence; other words, templates or contexts may differ.")
  tw, ml = _col(rows, "twonn"), _col(rows, "mle")
  out.append(f"Intrinsic dimension of the residual stream ranges {np.nanmin(tw):.1f}-"
             f"{np.nanmax(tw):.1f} (TwoNN) and {np.nanmin(ml):.1f}-{np.nanmax(ml):.1f} (MLE) "
             f"against a width of {results['d_model']}; both are estimates from "
             f"{rows[0]['tokens']} tokens and depend on sample size and scale, so they bound "
             f"the local dimension loosely, they do not measure the number of features.")
  out.append("SAE L0, orthogonality and explained variance describe these small SAEs "
             f"(d_sae = {results['d_sae']}, trained on {results['corpus']['tokens_cached']} "
             "tokens); they say nothing about features an SAE with more latents or data "
             "would find, and whether the latents are interpretable was not checked.")
  sp = results.get("spliced")
  if sp and any(r.get("spliced_score") is not None for r in rows):
    score = _col(rows, "spliced_score")
    what = ("CE loss recovered" if any(r.get("spliced_kl") is not None for r in rows)
            else "sentence-embedding recovered")
    out.append(f"Spliced into the model in place of the residual stream, the SAEs give "
               f"{what} {np.nanmin(score):.3f}-{np.nanmax(score):.3f} on {sp['tokens']} "
               f"{'held-out' if sp['held_out'] else 'in-sample (the corpus had no spare rows)'}"
               " tokens, against zero ablation; one layer at a time, so errors compounding "
               "over several spliced layers are not measured.")
  ce = _col(rows, "dec_clustering_entropy")
  out.append(f"Decoder clustering entropy is positive (more clustered than a Gaussian with the "
             f"same spectrum) at {int(np.sum(ce > 0))} of {n} blocks; the act/dec slopes are "
             "fits over a declared rank window, not evidence that the spectrum is a power law "
             "outside it (see the R^2 in results.json).")
  out.append(_lobes_finding(rows))
  nm = results.get("neuromfa")
  if nm:
    out.append(f"NeuroMFA of the weights: alpha0 {nm['neuromfa_alpha0']:.3f}, width "
               f"{nm['neuromfa_width']:.3f}, against the Gaussian null's "
               f"{nm['neuromfa_null_alpha0']:.3f}, {nm['neuromfa_null_width']:.3f}; one "
               f"sample of {nm['S']} neurons per layer, so the difference has no error bar here.")
  out.append("Nothing in this report tests a brain mechanism: the numbers describe geometry "
             "and statistics of one model's activations and weights on this corpus.")
  return out


def _lobes_finding(rows: list[dict]) -> str:
  sep = _col(rows, "lobe_code_prose_separation")
  skipped = [f"block {r['layer']} ({r['lobes']['skipped']})" for r in rows
             if (r.get("lobes") or {}).get("skipped")]
  tail = f" Lobes skipped at {'; '.join(skipped)}." if skipped else ""
  if not np.isfinite(sep).any():
    return "No block has a lobe clustering." + tail
  return (f"Code and prose blocks fall into different co-occurrence lobes with total-"
          f"variation distance {np.nanmin(sep):.2f}-{np.nanmax(sep):.2f}; this is one "
          "clustering of one small SAE per block on a small corpus, with AMI and probe "
          "compared to their nulls (sigma columns); it is not a causal claim." + tail)


def _table(rows: list[dict], pages: dict[int, str]) -> str:
  """The per-block table: the TABLE columns and a link to each layer's lobes page."""
  head = "".join(f"<th>{html.escape(t)}</th>" for _, t in TABLE) + "<th>lobes</th>"
  body = ""
  for r in rows:
    page = pages.get(int(r["layer"]))
    link = (f'<td><a class="lobes-page" href="{html.escape(page)}">lobe members</a></td>'
            if page else "<td>–</td>")
    body += "<tr>" + "".join(_cell(r, k) for k, _ in TABLE) + link + "</tr>"
  return f"<table><tr>{head}</tr>{body}</table>"


def _evals_html(ev: dict) -> str:
  """The evals section: a link to the comparison page and each layer's headline numbers."""
  cols = (("explained_variance", "EV"), ("l0", "L0"), ("ce_loss_score", "CE score"),
          ("sae_top_1_test_accuracy", "probe top-1"), ("sae_test_accuracy", "probe all"),
          ("mean_absorption_fraction_score", "absorption"))
  rows = "".join(f"<tr><td>{html.escape(name)}</td>"
                 + "".join(f"<td>{_fmt(r.get(k))}</td>" for k, _ in cols) + "</tr>"
                 for name, r in sorted(ev.get("summary", {}).items()))
  head = "".join(f"<th>{html.escape(t)}</th>" for _, t in cols)
  return (f'<h2>SAEBench-compatible evals</h2><p>{html.escape(", ".join(ev["evals"]))} on '
          f'every block\'s SAE, in SAEBench\'s JSON; <a class="evals-page" '
          f'href="{html.escape(ev["page"])}">the comparison page</a> sets them beside '
          f'SAEBench\'s published numbers.</p><table><tr><th>dictionary</th>{head}</tr>{rows}'
          "</table>")


def _extras(results: dict) -> str:
  """The optional sections after the per-block table: the seed report's tables, the evals."""
  out = seed_report.html_section(results["seed_report"]) if results.get("seed_report") else ""
  return out + (_evals_html(results["evals"]) if results.get("evals") else "")


def _figures_html(results: dict, workdir: str) -> str:
  """Every figure of the results inline, as a data: URI."""
  figs = ""
  for p in results.get("figures", []):
    full = p if os.path.isabs(p) else os.path.join(workdir, p)
    with open(full, "rb") as f:
      b64 = base64.b64encode(f.read()).decode()
    figs += (f'<figure><img alt="{html.escape(os.path.basename(p))}" '
             f'src="data:image/png;base64,{b64}"><figcaption>{html.escape(os.path.basename(p))}'
             f'</figcaption></figure>')
  return figs


def _neuromfa_html(nm: dict | None) -> str:
  if not nm:
    return ""
  return ("<h2>Weights: NeuroMFA</h2><table><tr><th></th><th>α₀</th><th>width</th></tr>"
          f"<tr><td>weights</td><td>{_fmt(nm['neuromfa_alpha0'])}</td>"
          f"<td>{_fmt(nm['neuromfa_width'])}</td></tr>"
          f"<tr><td>Gaussian null</td><td>{_fmt(nm['neuromfa_null_alpha0'])}</td>"
          f"<td>{_fmt(nm['neuromfa_null_width'])}</td></tr></table>")


def write_html(results: dict, workdir: str) -> str:
  """workdir/report.html, and each layer's lobes page (report.lobes_page) it links to."""
  table = _table(results["layers"], lobes_page.write_pages(results, workdir))
  defs = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(d['definition'])}</td>"
                 f"<td>{html.escape(d['unit'])}</td></tr>"
                 for k, d in results["definitions"].items())
  figs, nm_html = _figures_html(results, workdir), _neuromfa_html(results.get("neuromfa"))
  support = "".join(f"<li>{html.escape(s)}</li>" for s in support_text(results))
  seed = _extras(results)
  arch = results.get("config", {}).get("sae_train", {}).get("sae", {}).get("architecture",
                                                                            "topk")
  c = results["corpus"]
  page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Feature atlas: {html.escape(results['model'])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1350px; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 13px; }}
th, td {{ border: 1px solid #bbb; padding: 3px 7px; text-align: right; }}
th {{ background: #eee; }}
td.pass {{ background: #dff0d8; }} td.fail {{ background: #f8e0e0; }}
td.published {{ background: #f4f4fb; }} span.missing {{ color: #888; font-size: 11px; }}
table.defs td {{ text-align: left; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>Feature atlas of {html.escape(results['model'])}</h1>
<p>{results['n_layers']} blocks, width {results['d_model']}; blocks analysed
{results['layers_analysed']}; corpus <code>{html.escape(str(c['spec']))}</code> with
{c['tokens_cached']} tokens cached ({html.escape(str(c.get('tokens_by_source')))});
one {html.escape(str(arch))} SAE per block with {results['d_sae']} latents. The four properties use the concept
words in a template sentence (✓ pass, ✗ fail). The lobes column opens each block's lobes
page: every lobe of its co-occurrence and geometry clusterings with its member latents, linked
to their dashboards. Definitions and units are below and in results.json.</p>
<h2>Per-block table</h2>
{table}
{seed}
{nm_html}
<h2>What the numbers do and do not support</h2><ul>{support}</ul>
<h2>Figures</h2>{figs}
<h2>Definitions</h2><table class="defs"><tr><th>metric</th><th>definition</th><th>unit</th></tr>
{defs}</table>
</body></html>
"""
  return workdir_lib.write_text(os.path.join(workdir, "report.html"), page)
