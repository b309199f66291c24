"""Per-layer lobe pages of the atlas report: workdir/lobes/layer_<l>.html.

A page lists, for one layer's lobes summary (pipeline.lobes.summarise, the report row's
"lobes"), the headline clustering (the row's lobe_affinity and lobe_clusters: the report's
first affinity and first cluster count) and, folded in <details>, every other affinity and
cluster count and the decoder-geometry clustering. For each lobe: its number of member
latents, the share of each source's blocks it wins (the record's "sources", marked where the
lobe is that source's winner) and every member latent, linked to its dashboard page
(../dashboards/layer_<l>/latent.html#<i>, the forwarder of report.dashboards) when the row
has dashboards, plain text otherwise.

Static HTML without script: it opens from file:// and fetches nothing. Written under a
temporary name, then renamed.
"""

from __future__ import annotations

import html
import os
import posixpath

from jaxcode import workdir as workdir_lib
from jaxcode.errors import ConfigError

GEOMETRY = "geometry"        # the decoder-direction clustering's key in clusters["labels"]
FOLDER = "lobes"             # the pages' folder under the workdir

_CSS = """
body { font-family: sans-serif; margin: 1em 2em; color: #222; font-size: 14px; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin: 1em 0 0.3em; }
.meta { font-size: 13px; color: #444; margin: 0.3em 0; }
table { border-collapse: collapse; margin: 0.4em 0 1em; }
th, td { padding: 2px 8px; text-align: left; border-bottom: 1px solid #ddd; font-size: 13px;
  vertical-align: top; }
th { background: #f3f3f3; }
td.win { font-weight: bold; background: #dff0d8; }
td.members { font-family: monospace; font-size: 12px; line-height: 1.6; }
.member { margin-right: 0.5em; }
details { margin: 0.4em 0; } summary { cursor: pointer; font-weight: bold; }
"""


def lobe_members(active, labels, k: int | None = None) -> list[list[int]]:
  """members[j]: the active features (ascending) whose label is j, for j in 0..k-1 (k: the
  cluster count; default the largest label + 1). `labels` holds one label per entry of
  `active` (clusters["active"] and clusters["labels"][name][k] of pipeline.lobes.summarise),
  so every active feature is in exactly one lobe; a lobe may be empty."""
  active, labels = [int(a) for a in active], [int(x) for x in labels]
  if len(active) != len(labels):
    raise ConfigError(f"{len(labels)} labels for {len(active)} active features: expected one "
                      "label per active feature")
  if len(set(active)) != len(active):
    raise ConfigError("active repeats a feature: expected each active feature once")
  n = max(labels, default=-1) + 1 if k is None else int(k)
  bad = sorted({x for x in labels if not 0 <= x < n})
  if bad:
    raise ConfigError(f"labels {bad[:5]} outside 0..{n - 1}: expected lobe labels below k={n}")
  out = [[] for _ in range(n)]
  for a, x in sorted(zip(active, labels)):
    out[x].append(a)
  return out


def page_path(layer) -> str:
  """The page of `layer`, relative to the workdir."""
  return f"{FOLDER}/layer_{int(layer)}.html"


def dashboard_base(dashboards_index: str | None) -> str | None:
  """The dashboard forwarder (latent.html, whose #<i> opens latent i) relative to the lobe
  pages' folder, from the row's dashboards index (relative to the workdir); None without."""
  if not dashboards_index:
    return None
  target = posixpath.join(posixpath.dirname(dashboards_index), "latent.html")
  return posixpath.relpath(target, FOLDER)


def _headline(row: dict) -> tuple[str, str]:
  lobes = row["lobes"]
  name = row.get("lobe_affinity") or next(iter(lobes["affinities"]))
  k = row.get("lobe_clusters") or lobes["cluster_counts"][0]
  return str(name), str(int(k))


def clusterings(row: dict) -> list[tuple[str, str, dict | None, bool]]:
  """(name, k, record or None, is_headline) of every clustering in the row's lobes summary:
  the headline first, then the other affinities, then the decoder geometry."""
  lobes = row["lobes"]
  labels = lobes["clusters"]["labels"]
  head = _headline(row)
  names = [n for n in labels if n != GEOMETRY] + ([GEOMETRY] if GEOMETRY in labels else [])
  out = []
  for name in names:
    for k in labels[name]:
      rec = lobes.get("affinities", {}).get(name, {}).get(k)
      out.append((name, k, rec, (name, k) == head))
  return sorted(out, key=lambda c: not c[3])     # stable: the headline first


def _pct(x: float) -> str:
  return f"{100 * float(x):.0f}%"


def _member(i: int, base: str | None, tag: str) -> str:
  if base is None:
    return f'<span class="member" data-clustering="{tag}">{i}</span>'
  return f'<a class="member" data-clustering="{tag}" href="{html.escape(base)}#{i}">{i}</a>'


def _lobe_table(name: str, k: str, rec: dict | None, members: list[list[int]],
                base: str | None) -> str:
  tag = html.escape(f"{name}/{k}")
  sources = (rec or {}).get("sources") or {}
  head = "".join(f"<th>{html.escape(s)} blocks won (of {int(v['blocks'])})</th>"
                 for s, v in sources.items())
  rows = []
  for j, m in enumerate(members):
    cells = "".join(
        f'<td class="{"win" if int(v["winner"]) == j else ""}">{_pct(v["share"][j])}</td>'
        if j < len(v["share"]) else "<td>–</td>" for v in sources.values())
    links = " ".join(_member(i, base, tag) for i in m)
    rows.append(f'<tr class="lobe" data-clustering="{tag}" data-lobe="{j}"><td>{j}</td>'
                f'<td>{len(m)}</td>{cells}<td class="members">{links}</td></tr>')
  return (f"<table><tr><th>lobe</th><th>latents</th>{head}<th>member latents</th></tr>"
          f"{''.join(rows)}</table>")


def _stats(rec: dict | None) -> str:
  if not rec:
    return ("decoder-angle clustering of the active features' decoder directions; no "
            "source shares")

  def f(v):
    return "–" if v is None else f"{v:.3g}"
  pairs = rec.get("pair_separations") or {}
  sep = (f"source separation {f(rec.get('source_separation'))} (pairs: "
         + ", ".join(f"{k} {f(v)}" for k, v in pairs.items()) + ")" if len(pairs) > 1 else
         f"code/prose separation {f(rec.get('code_prose_separation'))}")
  return (f"AMI with the geometry clustering {f(rec.get('ami'))} ({f(rec.get('ami_sigma'))} "
          f"null sd); probe balanced accuracy {f(rec.get('balanced_accuracy'))} "
          f"({f(rec.get('probe_sigma'))} null sd); {sep}")


def _section(row: dict, name: str, k: str, rec: dict | None, headline: bool,
             base: str | None) -> str:
  clusters = row["lobes"]["clusters"]
  members = lobe_members(clusters["active"], clusters["labels"][name][k], int(k))
  kind = "decoder geometry" if name == GEOMETRY else f"co-occurrence affinity {name}"
  title = f"{html.escape(kind)}, {k} lobes"
  inner = (f'<div class="meta">{html.escape(_stats(rec))}</div>'
           f"{_lobe_table(name, k, rec, members, base)}")
  attrs = (f'class="clustering{" headline" if headline else ""}" '
           f'data-affinity="{html.escape(name)}" data-k="{html.escape(k)}"')
  if headline:
    return f"<section {attrs}><h2>{title} (headline)</h2>{inner}</section>"
  return f"<details {attrs}><summary>{title}</summary>{inner}</details>"


def page_html(row: dict, *, title: str = "") -> str:
  """The page of one report row (module doc); links are relative to the lobes folder."""
  lobes, layer = row["lobes"], int(row["layer"])
  base = dashboard_base(row.get("dashboards"))
  name = title or f"layer {layer}"
  n_feat, n_act = int(lobes["n_features"]), int(lobes["n_active"])
  dash = (f' · <a href="{html.escape(posixpath.relpath(row["dashboards"], FOLDER))}">'
          "dashboards index</a>" if base else " · no dashboards for this layer")
  sections = "".join(_section(row, n, k, rec, h, base) for n, k, rec, h in clusterings(row))
  body = (f"<h1>Lobes of {html.escape(name)}</h1>\n"
          f'<div class="meta"><a href="../report.html">report</a>{dash}</div>\n'
          f'<div class="meta">{n_act} of {n_feat} latents fired in some block of '
          f"{int(lobes['blocks'])} and are clustered; the other {n_feat - n_act} are in no "
          "lobe. Shares: of each source's blocks, the fraction this lobe wins (the lobe with "
          "the largest fraction of its latents firing in the block); bold: the source's "
          "winner.</div>\n" + sections)
  return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\n<title>Lobes of "
          f"{html.escape(name)}</title>\n<style>{_CSS}</style></head><body>\n{body}\n"
          "</body></html>\n")


def write_page(row: dict, workdir: str, *, title: str = "") -> str | None:
  """Writes workdir/lobes/layer_<l>.html for a row whose lobes hold clusters; returns its
  path relative to the workdir (None for a row without)."""
  if not (row.get("lobes") or {}).get("clusters"):
    return None
  rel = page_path(row["layer"])
  workdir_lib.write_text(os.path.join(workdir, rel), page_html(row, title=title))
  return rel


def write_pages(results: dict, workdir: str) -> dict[int, str]:
  """{layer: page path relative to the workdir} for every row of the atlas results that has
  lobes with clusters."""
  out = {}
  for row in results["layers"]:
    title = " ".join(str(x) for x in (results.get("model"), row.get("hookpoint")) if x)
    rel = write_page(row, workdir, title=title)
    if rel is not None:
      out[int(row["layer"])] = rel
  return out
