"""The seed report's two tables, ours beside its published GPT-2 numbers.

The seed report on DNN feature encoding trained one ReLU/L1 SAE per block of GPT-2 small and
tabulated, per block, (1) intrinsic dimension, L0 fraction and orthogonality, (2) abstraction,
precision, specificity and systematicity. `compare(results, published)` lines an atlas run's
rows up with the report's: block for block where the recipe names the same block (0, 3, 6, 9),
and last block with last block; `html_section` renders both tables with one line per column on
why the numbers may differ. The published numbers live in resources/seed_report_gpt2.json
(`load_published`), typed in by hand with their source; a value the sources do not give is
None and shows as "not in our sources".
"""

from __future__ import annotations

import html
import json
import math
import os

from jaxcode.errors import ConfigError

RESOURCE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "resources",
                        "seed_report_gpt2.json")
RECIPE_BLOCKS = (0, 3, 6, 9)     # and the last block
# (key in our layer rows, header): the report's two tables
GEOMETRY = (("intrinsic_dimension", "intrinsic dimension"), ("l0_fraction", "L0 fraction"),
            ("orthogonality", "orthogonality"))
PROPERTIES = (("abstraction", "abstraction"), ("precision", "precision"),
              ("specificity", "specificity"), ("systematicity", "systematicity"))
OURS = dict(intrinsic_dimension="twonn", l0_fraction="sae_l0_fraction",
            orthogonality="sae_orthogonality", abstraction="abstraction",
            precision="precision", specificity="specificity", systematicity="systematicity")
# column: why our number may differ from the report's (model, corpus, definition)
REASONS = dict(
    intrinsic_dimension="Model and corpus: another residual stream (width and depth differ "
    "from GPT-2's 768 x 12) on our offline code-and-prose corpus; ours is TwoNN (MLE in "
    "results.json) on sampled tokens, and the report's estimator and sample size are not in "
    "our sources; both estimators grow with sample size.",
    l0_fraction="L0 definition and scale: both are the fraction of latents with a positive "
    "code per token, but our L1 is 0.05 x sum_i |f_i| on activations scaled to E||x||^2 = 1 "
    "with unit-norm decoder rows; a penalty on mean_i |f_i| or on raw activations (GPT-2's "
    "residual norms are large) is far weaker and leaves most latents on, as the report's 0.78 "
    "suggests; its normalisation is not in our sources. Measured on MiniLM block 3 with "
    "this recipe: L1 0.05 gives 0.058 per token, 0.005 gives 0.415, 0.0005 gives 0.677, with "
    "no dead latent at any (configs/atlas.py).",
    orthogonality="Model and training: 1 - mean |cos| over decoder-direction pairs depends on "
    "d_sae / width (8/3 in both), on how far training went and on the decoder constraint "
    "(ours unit-norm); our corpus is ~16k tokens, far smaller than the report's.",
    abstraction="Corpus and vocabulary: our concept categories (jaxcode's lists, kept where a "
    "word is one token for this tokenizer) in one template sentence; GPT-2's BPE keeps a "
    "different subset, and the report's concept sets are not in our sources.",
    precision="Classes and projection: cross-validated probe accuracy on an 8-dimensional "
    "PCA projection; chance level and difficulty change with the number of categories and "
    "words kept for each tokenizer.",
    specificity="Classes: 1 - mean |cos| between centred class-mean directions falls as more "
    "categories share the space; our category count differs from the report's.",
    systematicity="Vocabulary: 3CosAdd accuracy over the single-token vocabulary of each "
    "tokenizer (GPT-2 50k BPE, Gemma 3 262k SentencePiece, MiniLM 30k WordPiece), so the "
    "candidate sets and the relations kept differ.")


def load_published(path: str = RESOURCE) -> dict:
  """The report's recipe and numbers; a file missing a field is refused in one line."""
  with open(path, encoding="utf-8") as f:
    pub = json.load(f)
  for key in ("source", "model", "n_layers", "recipe", "l0_fraction", "pass_marks", "layers"):
    if key not in pub:
      raise ConfigError(f"{path}: no field {key!r}: expected the seed-report resource's fields")
  return pub


def partner(block: int, n_layers: int, their_n_layers: int) -> int | None:
  """The report's block in the same role as our `block`: the same recipe block, or the last."""
  if block == n_layers - 1:
    return their_n_layers - 1
  return block if block in RECIPE_BLOCKS and block < their_n_layers else None


def _published(pub: dict, block: int | None, key: str):
  if block is None:
    return None
  value = pub["layers"].get(str(block), {}).get(key)
  if value is None and key == "l0_fraction":
    return pub["l0_fraction"]        # the report's one value, its blocks not stated
  return value


def compare(results: dict, pub: dict) -> dict:
  """Both tables as rows {block, gpt2_block, <column>: {ours, published}}, with the reasons."""
  rows = []
  for r in results["layers"]:
    theirs = partner(int(r["layer"]), int(results["n_layers"]), int(pub["n_layers"]))
    row = {"block": int(r["layer"]), "gpt2_block": theirs}
    for key, _ in GEOMETRY + PROPERTIES:
      row[key] = {"ours": r.get(OURS[key]), "published": _published(pub, theirs, key)}
    row["intrinsic_dimension"]["ours_mle"] = r.get("mle")
    dead = r.get("sae_dead_fraction")   # the other reading of "fraction of active latents":
    row["l0_fraction"]["ours_alive"] = None if dead is None else 1.0 - float(dead)  # ever fire
    rows.append(row)
  return {"model": results["model"], "published_model": pub["model"],
          "source": pub["source"], "recipe": pub["recipe"],
          "l0_fraction_published": pub["l0_fraction"],
          "l0_fraction_definition": pub["l0_fraction_definition"],
          "pass_marks": pub["pass_marks"], "rows": rows,
          "reasons": {k: REASONS[k] for k, _ in GEOMETRY + PROPERTIES}}


def _fmt(v) -> str:
  if v is None:
    return '<span class="missing">not in our sources</span>'
  if isinstance(v, float) and not math.isfinite(v):
    return "nan"
  return f"{v:.3g}"


EXTRAS = (("ours_alive", "alive"), ("ours_mle", "MLE"))   # second readings shown in a cell


def _extra(cell: dict) -> str:
  return "".join(f'<br><small class="{k}">{t} {_fmt(cell[k])}</small>' for k, t in EXTRAS
                 if cell.get(k) is not None)


def _table(cmp: dict, columns, title: str) -> str:
  head = "<th>block (ours)</th><th>GPT-2 block</th>" + "".join(
      f'<th colspan="2">{html.escape(t)}</th>' for _, t in columns)
  sub = "<th></th><th></th>" + "<th>ours</th><th>GPT-2</th>" * len(columns)
  body = ""
  for r in cmp["rows"]:
    gb = "–" if r["gpt2_block"] is None else str(r["gpt2_block"])
    cells = "".join(f'<td class="ours">{_fmt(r[k]["ours"])}{_extra(r[k])}</td>'
                    f'<td class="published">{_fmt(r[k]["published"])}</td>' for k, _ in columns)
    body += f"<tr><td>{r['block']}</td><td>{gb}</td>{cells}</tr>"
  reasons = "".join(f'<li class="reason"><b>{html.escape(t)}</b>: '
                    f'{html.escape(cmp["reasons"][k])}</li>' for k, t in columns)
  return (f'<h3>{html.escape(title)}</h3><table class="seed-report"><tr>{head}</tr>'
          f"<tr>{sub}</tr>{body}</table><ul>{reasons}</ul>")


def html_section(cmp: dict) -> str:
  """The section the atlas report shows: both tables, the reasons, the source."""
  rec = cmp["recipe"]
  intro = (f"<p>The seed report's recipe ({html.escape(rec['sae'])}, L1 "
           f"{rec['l1_coefficient']}, {rec['d_sae']} latents for GPT-2's 768, {rec['passes']} "
           f"passes, blocks {rec['blocks']}) on {html.escape(cmp['model'])}, beside the "
           f"report's published {html.escape(cmp['published_model'])} numbers. Blocks pair by "
           "role: the same recipe block, or last with last. L0 fraction: "
           f"{html.escape(cmp['l0_fraction_definition'])} (published "
           f"{cmp['l0_fraction_published']}); under it, ours as the fraction of latents that "
           "fire at least once on the held-out tokens (alive), the other reading of 'fraction "
           "of active latents'. Intrinsic dimension (ours): TwoNN, with MLE under it.</p>")
  return ('<section id="seed-report"><h2>The seed report\'s tables beside its GPT-2 numbers'
          f"</h2>{intro}"
          + _table(cmp, GEOMETRY, "Per block: intrinsic dimension, L0 fraction, orthogonality")
          + _table(cmp, PROPERTIES, "Per block: the four properties")
          + f"<p>Source of the published numbers: {html.escape(cmp['source'])}</p></section>")
