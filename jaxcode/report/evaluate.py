"""The comparison page of SAEBench results: DIR/evals.html.

`write_page(workdir)` reads every `*_eval_results.json` under workdir/<eval_type_id>/ (ours, or
SAEBench's own files copied there) and writes one HTML table: a row per dictionary, columns the
headline metrics of core, absorption_first_letter and sparse_probing, with SAEBench's published
reference rows beside ours (shared/notes/evals.md 1.12: acceptance fixtures of SAEBench at
reduced settings, other models and datasets, so a guide to scale, not a like-for-like
comparison), and the evals not offered offline with their reasons. Opens from the file system.
"""

from __future__ import annotations

import glob
import html
import json
import os

from jaxcode import workdir as workdir_lib
from jaxcode.analysis import saebench

# (eval_type_id, category, key, column label)
COLUMNS = (
    ("core", "sparsity", "l0", "L0"),
    ("core", "reconstruction_quality", "explained_variance", "EV"),
    ("core", "reconstruction_quality", "explained_variance_legacy", "EV legacy"),
    ("core", "reconstruction_quality", "cossim", "cos"),
    ("core", "model_performance_preservation", "ce_loss_score", "CE score"),
    ("core", "model_behavior_preservation", "kl_div_score", "KL score"),
    ("core", "misc_metrics", "frac_alive", "alive"),
    ("absorption_first_letter", "mean", "mean_absorption_fraction_score", "absorption"),
    ("absorption_first_letter", "mean", "mean_full_absorption_score", "full absorption"),
    ("absorption_first_letter", "mean", "mean_num_split_features", "split latents"),
    ("sparse_probing", "llm", "llm_test_accuracy", "LLM probe"),
    ("sparse_probing", "llm", "llm_top_1_test_accuracy", "LLM top-1"),
    ("sparse_probing", "sae", "sae_test_accuracy", "SAE probe"),
    ("sparse_probing", "sae", "sae_top_1_test_accuracy", "SAE top-1"),
    ("sparse_probing", "sae", "sae_top_5_test_accuracy", "SAE top-5"),
)
# SAEBench's published numbers (acceptance fixtures, tests/acceptance/test_data at 8042bb38)
REFERENCES = (
    ("SAEBench: Pythia-70M L4 TopK 16k (trainer_10), 1 probing dataset",
     {"mean_absorption_fraction_score": 0.263, "mean_full_absorption_score": 0.250,
      "mean_num_split_features": 1.31, "llm_test_accuracy": 0.952,
      "llm_top_1_test_accuracy": 0.760, "sae_test_accuracy": 0.954,
      "sae_top_1_test_accuracy": 0.774, "sae_top_5_test_accuracy": 0.879}),
    ("SAEBench: Pythia-70M L3 gated (trainer_5); its EV is the about-zero formula",
     {"l0": 377, "ce_loss_score": 0.9976, "explained_variance": 0.986}),
)


def load_results(workdir: str) -> list[dict]:
  out = []
  for path in sorted(glob.glob(os.path.join(workdir, "*", "*_eval_results.json"))):
    try:
      with open(path) as f:
        d = json.load(f)
    except (OSError, ValueError):
      continue
    if isinstance(d, dict) and "eval_type_id" in d:
      out.append(d)
  return out


def summary_rows(workdir: str) -> dict:
  """{dictionary: {column key: value}} over every result file in the workdir."""
  rows: dict = {}
  for d in load_results(workdir):
    name = f"{d.get('sae_lens_release_id')}/{d.get('sae_lens_id')}"
    row = rows.setdefault(name, {})
    m = d.get("eval_result_metrics") or {}
    for type_id, cat, key, _ in COLUMNS:
      if d["eval_type_id"] == type_id and key in m.get(cat, {}):
        row[key] = m[cat][key]
    status = (d.get("eval_result_unstructured") or {})
    if isinstance(status, dict) and str(status.get("status", "ok")).startswith("aborted"):
      row["absorption_status"] = status["status"]
  return rows


def _cell(v, missing: str = "n/a") -> str:
  if v is None:
    return f"<td class=na>{missing}</td>"
  if isinstance(v, float):
    return f"<td>{v:.4g}</td>"
  return f"<td>{html.escape(str(v))}</td>"


def write_page(workdir: str) -> str:
  rows = summary_rows(workdir)
  head = "".join(f"<th>{html.escape(c[3])}</th>" for c in COLUMNS)
  body = []
  for name, row in sorted(rows.items()):
    note = f" <small>({html.escape(row['absorption_status'])})</small>" \
        if "absorption_status" in row else ""
    body.append(f"<tr><th>{html.escape(name)}{note}</th>"
                + "".join(_cell(row.get(c[2])) for c in COLUMNS) + "</tr>")
  for name, ref in REFERENCES:
    body.append(f"<tr class=ref><th>{html.escape(name)}</th>"
                + "".join(_cell(ref.get(c[2]), "") for c in COLUMNS) + "</tr>")
  missing = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
                    for k, v in (saebench.NOT_OFFERED | saebench.NOT_IMPLEMENTED).items())
  page = f"""<!doctype html><html><head><meta charset="utf-8"><title>SAEBench evals</title>
<style>body{{font-family:sans-serif;margin:1em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}}th{{text-align:left}}
tr.ref{{background:#f3f3f3;font-style:italic}}td.na{{color:#999}}</style></head><body>
<h1>SAEBench-compatible evaluations</h1>
<p>One row per dictionary evaluated in this folder (files under
<code>&lt;eval_type_id&gt;/</code>, SAEBench's JSON). Grey rows: SAEBench's published
acceptance numbers ({saebench.SAEBENCH_COMMIT}; other models, datasets and reduced settings,
a guide to scale only). Our EV is variance about the mean; EV legacy is the per-token value
SAEBench's paper reports. Sparse probing here runs offline tasks (corpus source, concept
categories, first letters), not SAEBench's HF datasets.</p>
<table id=evals><tr><th>dictionary</th>{head}</tr>
{chr(10).join(body)}
</table>
<h2>Not offered offline, or not implemented yet</h2><ul>{missing}</ul>
</body></html>
"""
  return workdir_lib.write_text(os.path.join(workdir, "evals.html"), page)
