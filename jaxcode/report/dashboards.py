"""Static HTML dashboards for every latent of a dictionary (records of
analysis.dashboard_data.latent_records).

    directory/index.html               one row per latent: index (a link to its section),
                                       layer, density, max and mean activation, count, the
                                       qualifying tokens of its top contexts and its top
                                       context; columns sort by clicking their header; filters
                                       on density and max ranges; a search box matching tokens
                                       of the top contexts (qualifying tokens and the first
                                       context's window); dead latents listed, marked dead.
                                       A fragment sets them: index.html#sort=-max&search=x
                                       (also density-min, density-max, max-min, max-max)
    directory/latents/page_{n}.html    `per_page` latents (by index), each a
                                       <section id="latent-{i}">: stats, top contexts and
                                       interval samples (highest interval first, "CONTAINS x%")
                                       with tokens highlighted (background alpha = value / the
                                       latent's max, qualifying token outlined, special tokens
                                       grey), the activation histogram (log10 bins) and the
                                       logit histogram as inline SVG bars, top/bottom logit
                                       tables, decoder-cosine and co-activation neighbours
                                       linking to those latents' sections
    directory/latent.html              latent.html#{i} forwards to latents/page_{n}.html#latent-{i}
                                       (the target of dashboard_url_template)

Every page is self-contained and opens from file://: its data sit in a <script
type="application/json"> block and inline JavaScript draws the rows and sections (so a
browser's DOM shows tr.latent-row, span.tok.hl, svg.hist); links are relative; nothing is
fetched. Files are written under a temporary name and renamed, index.html last.
"""

from __future__ import annotations

import html
import os
import re

from jaxcode import workdir as workdir_lib
from jaxcode.errors import ConfigError, positive_int
from jaxcode.report.graph_html import _embed

_CSS = """
body { font-family: sans-serif; margin: 1em 2em; color: #222; font-size: 14px; }
h1 { font-size: 1.3em; margin: 0.2em 0; }
.meta { font-size: 13px; color: #444; margin: 0.3em 0 0.8em; }
.filters input { width: 7em; margin-right: 0.8em; }
.filters #search { width: 14em; }
table { border-collapse: collapse; }
th, td { padding: 2px 8px; text-align: left; border-bottom: 1px solid #eee; font-size: 13px; }
th[data-key] { cursor: pointer; background: #f3f3f3; user-select: none; }
th.asc::after { content: " \\25B2"; } th.desc::after { content: " \\25BC"; }
tr.dead td { color: #999; }
.badge { background: #c33; color: #fff; border-radius: 3px; padding: 0 4px; font-size: 11px; }
section.latent { border-top: 2px solid #888; padding: 0.6em 0 1.2em; }
section.latent h2 { font-size: 1.15em; margin: 0.2em 0; }
.grid { display: grid; grid-template-columns: 360px 1fr; gap: 1.5em; }
h3 { font-size: 1em; margin: 0.8em 0 0.3em; } h4 { font-size: 12px; margin: 0.6em 0 0.2em;
  color: #555; font-weight: normal; }
.ctx { font-family: monospace; font-size: 12.5px; margin: 2px 0; line-height: 1.7; }
.tok { white-space: pre; padding: 1px 0; border-radius: 2px; }
.tok.q { outline: 1.5px solid #000; }
.tok.sp { color: #aaa; }
svg.hist rect.bar { fill: #4a7ab5; } svg.hist.logit rect.bar { fill: #7a9a4a; }
svg.hist text { font-size: 10px; fill: #444; }
.nav a { margin-right: 1em; }
"""

_INDEX_JS = r"""
(function () {
  var rows = JSON.parse(document.getElementById("index-data").textContent);
  var body = document.getElementById("rows"), key = "i", dir = 1;
  function num(id) { var v = document.getElementById(id).value.trim();
    return v === "" || isNaN(Number(v)) ? null : Number(v); }
  function keep(r) {
    var lo = num("density-min"), hi = num("density-max"), mlo = num("max-min"),
        mhi = num("max-max"), q = document.getElementById("search").value.toLowerCase();
    if ((lo !== null && r.density < lo) || (hi !== null && r.density > hi)) return false;
    if ((mlo !== null && r.max < mlo) || (mhi !== null && r.max > mhi)) return false;
    return !q || r.search.some(function (t) { return t.toLowerCase().indexOf(q) >= 0; }); }
  function fmt(x) { return x === 0 ? "0" : Number(x).toPrecision(3); }
  function td(tr, text) { var c = document.createElement("td"); c.textContent = text;
    tr.appendChild(c); return c; }
  function draw() {
    var list = rows.filter(keep).sort(function (a, b) { var x = a[key], y = b[key];
      return (x < y ? -1 : x > y ? 1 : a.i - b.i) * dir; });
    body.textContent = "";
    list.forEach(function (r) {
      var tr = document.createElement("tr"), a = document.createElement("a");
      tr.className = "latent-row" + (r.dead ? " dead" : "");
      a.href = r.href; a.textContent = String(r.i); td(tr, "").appendChild(a);
      if (r.dead) { var b = document.createElement("span"); b.className = "badge";
        b.textContent = "dead"; tr.firstChild.appendChild(document.createTextNode(" "));
        tr.firstChild.appendChild(b); }
      td(tr, r.layer); td(tr, fmt(r.density)); td(tr, fmt(r.max)); td(tr, fmt(r.mean));
      td(tr, String(r.count)); td(tr, r.top.map(function (t) { return JSON.stringify(t); })
        .join(" ")); td(tr, r.ctx).className = "ctx";
      body.appendChild(tr); });
    document.getElementById("shown").textContent = list.length + " of " + rows.length;
    Array.prototype.forEach.call(document.querySelectorAll("th[data-key]"), function (th) {
      th.className = th.getAttribute("data-key") === key ? (dir > 0 ? "asc" : "desc") : ""; }); }
  Array.prototype.forEach.call(document.querySelectorAll("th[data-key]"), function (th) {
    th.addEventListener("click", function () { var k = th.getAttribute("data-key");
      if (k === key) dir = -dir; else { key = k; dir = (k === "i" || k === "layer" ||
        k === "first") ? 1 : -1; } draw(); }); });
  var ids = ["density-min", "density-max", "max-min", "max-max", "search"];
  location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
    var p = kv.split("="), k = decodeURIComponent(p[0]), v = decodeURIComponent(p[1] || "");
    if (ids.indexOf(k) >= 0) document.getElementById(k).value = v;
    if (k === "sort") { key = v.replace(/^-/, ""); dir = v.charAt(0) === "-" ? -1 : 1; } });
  ids.forEach(function (id) { document.getElementById(id).addEventListener("input", draw); });
  draw();
})();
"""

_PAGE_JS = r"""
(function () {
  var NS = "http://www.w3.org/2000/svg";
  var recs = JSON.parse(document.getElementById("latent-data").textContent);
  var links = JSON.parse(document.getElementById("latent-links").textContent);
  var main = document.getElementById("latents");
  function h(tag, attrs, parent, text) { var e = document.createElement(tag);
    for (var a in attrs) e.setAttribute(a, attrs[a]);
    if (text !== undefined) e.textContent = text; if (parent) parent.appendChild(e); return e; }
  function s(tag, attrs, parent, text) { var e = document.createElementNS(NS, tag);
    for (var a in attrs) e.setAttribute(a, attrs[a]);
    if (text !== undefined) e.textContent = text; parent.appendChild(e); return e; }
  function fmt(x) { return x === 0 ? "0" : Number(x).toPrecision(3); }
  function pct(x) { return (100 * x).toPrecision(3) + "%"; }
  function context(parent, c, max) {
    var d = h("div", {"class": "ctx"}, parent);
    c.tokens.forEach(function (t, j) { var v = c.values[j], cls = "tok";
      var sp = h("span", {}, d, t.replace(/\n/g, "\u21b5"));
      if (c.special[j]) cls += " sp";
      else if (v > 0) { cls += " hl";
        sp.style.background = "rgba(255,120,0," + Math.min(1, v / (max || v)).toFixed(3) + ")"; }
      if (j === c.qualifying_token_index) cls += " q";
      sp.className = cls; sp.title = fmt(v); }); }
  function bars(parent, title, edges, counts, cls, label) {
    h("h3", {}, parent, title);
    var W = 340, H = 90, n = counts.length, top = Math.max.apply(null, counts.concat([1]));
    var g = s("svg", {"class": "hist " + cls, width: W, height: H + 16}, parent);
    counts.forEach(function (c, j) { var bh = H * c / top;
      s("rect", {"class": "bar", x: (W * j / n).toFixed(1), y: (H - bh).toFixed(1),
        width: Math.max(W / n - 1, 0.5).toFixed(1), height: bh.toFixed(1)}, g)
        .appendChild(document.createElementNS(NS, "title")).textContent = c; });
    if (edges.length) { s("text", {x: 0, y: H + 12}, g, label(edges[0]));
      s("text", {x: W, y: H + 12, "text-anchor": "end"}, g, label(edges[edges.length - 1])); } }
  function table(parent, title, head, rows) {
    if (!rows || !rows.length) return;
    h("h3", {}, parent, title);
    var t = h("table", {"class": "small"}, parent), tr = h("tr", {}, t);
    head.forEach(function (x) { h("th", {}, tr, x); });
    rows.forEach(function (r) { var tr = h("tr", {}, t);
      r.forEach(function (x) { var c = h("td", {}, tr);
        if (typeof x === "object") { if (links[x.link]) h("a", {href: links[x.link]}, c,
          String(x.link)); else c.textContent = String(x.link); }
        else c.textContent = x; }); }); }
  function left(col, r) {
    bars(col, "Activation density " + pct(r.density), r.act_hist.log10_edges,
      r.act_hist.counts, "act", function (e) { return fmt(Math.pow(10, e)); });
    if (r.logits) {
      bars(col, "Logit effects (W_dec W_U)", r.logits.hist_edges, r.logits.hist_counts,
        "logit", fmt);
      var tk = function (t) { return [JSON.stringify(t.token), fmt(t.value)]; };
      table(col, "Positive logits", ["token", "value"], r.logits.top.map(tk));
      table(col, "Negative logits", ["token", "value"], r.logits.bottom.map(tk)); }
    table(col, "Decoder neighbours", ["latent", "cosine"], (r.neighbours || []).map(
      function (n) { return [{link: n.index}, fmt(n.cosine)]; }));
    table(col, "Co-activating latents", ["latent", "count", "share"], (r.coact || []).map(
      function (n) { return [{link: n.index}, String(n.count), pct(n.frac)]; })); }
  function right(col, r) {
    if (r.top.length) { h("h3", {}, col, "TOP ACTIVATIONS (max " + fmt(r.max) + ")");
      r.top.forEach(function (c) { context(col, c, r.max); }); }
    r.intervals.slice().reverse().forEach(function (iv) { if (!iv.samples.length) return;
      h("h4", {}, col, "INTERVAL " + fmt(iv.bin_min) + " - " + fmt(iv.bin_max) +
        " \u00b7 CONTAINS " + pct(iv.bin_contains));
      iv.samples.forEach(function (c) { context(col, c, r.max); }); }); }
  recs.forEach(function (r) {
    var sec = h("section", {id: "latent-" + r.index, "class": "latent" + (r.dead ? " dead" : "")},
      main);
    var t = h("h2", {}, sec, "Latent " + r.index + (r.layer ? "  \u00b7  " + r.layer : ""));
    if (r.dead) { t.appendChild(document.createTextNode(" ")); h("span", {"class": "badge"}, t,
      "dead"); }
    h("div", {"class": "meta"}, sec, "density " + fmt(r.density) + " \u00b7 max " + fmt(r.max) +
      " \u00b7 mean active " + fmt(r.mean_active) + " \u00b7 count " + r.count);
    if (r.dead) return;
    var grid = h("div", {"class": "grid"}, sec);
    left(h("div", {}, grid), r); right(h("div", {}, grid), r); });
  document.getElementById("latent-count").textContent = String(recs.length);
  var want = location.hash ? document.getElementById(location.hash.slice(1)) : null;
  if (want) want.scrollIntoView();
})();
"""

_FORWARD_JS = r"""
(function () {
  var pages = JSON.parse(document.getElementById("page-ranges").textContent);
  var m = location.hash.match(/^#(?:latent-)?(\d+)$/), i = m ? Number(m[1]) : -1;
  for (var n = 0; n < pages.length; n++) if (pages[n][0] <= i && i <= pages[n][1]) {
    location.replace("latents/page_" + n + ".html#latent-" + i); return; }
  document.getElementById("msg").textContent = "No latent " + (m ? i : "given") + " here.";
})();
"""


def _page(title: str, body: str, data: dict[str, object], js: str) -> str:
  blocks = "".join(f"<script type=\"application/json\" id=\"{k}\">{_embed(v)}</script>\n"
                   for k, v in data.items())
  return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\n<title>{html.escape(title)}"
          f"</title>\n<style>{_CSS}</style></head><body>\n{body}\n{blocks}"
          f"<script>{js}</script>\n</body></html>\n")


def _check_records(records) -> list[dict]:
  need = ("index", "dead", "density", "max", "mean_active", "count", "top", "intervals",
          "act_hist")
  out = sorted(records, key=lambda r: int(r["index"]) if "index" in r else -1)
  for r in out:
    missing = [k for k in need if k not in r]
    if missing:
      raise ConfigError(f"dashboard record {r.get('index', '?')} has no {missing}: expected "
                        "dashboard_data.latent_records' dicts")
  idx = [int(r["index"]) for r in out]
  if len(set(idx)) != len(idx):
    raise ConfigError("records repeat a latent index: expected one record per latent")
  return out


def _index_row(r: dict, page: int) -> dict:
  quals = []
  for c in r["top"]:
    t = c["tokens"][c["qualifying_token_index"]]
    if t not in quals:
      quals.append(t)
  first = r["top"][0] if r["top"] else {"tokens": []}
  ctx = "".join(first["tokens"]).replace("\n", "\u21b5")
  return {"i": int(r["index"]), "layer": str(r.get("layer", "")), "density": r["density"],
          "max": r["max"], "mean": r["mean_active"], "count": r["count"],
          "dead": bool(r["dead"]), "href": f"latents/page_{page}.html#latent-{int(r['index'])}",
          "top": quals[:8], "first": quals[0] if quals else "", "ctx": ctx,
          "search": quals + list(first["tokens"])}


def _index_html(records: list[dict], per_page: int, title: str, layer_label: str) -> str:
  rows = [_index_row(r, n // per_page) for n, r in enumerate(records)]
  n_dead = sum(r["dead"] for r in rows)
  head = "".join(f"<th data-key=\"{k}\">{html.escape(t)}</th>" for k, t in (
      ("i", "latent"), ("layer", "layer"), ("density", "density"), ("max", "max act"),
      ("mean", "mean act"), ("count", "count"), ("first", "top tokens"), ("ctx", "top context")))
  filters = "".join(
      f"<label>{t} <input id=\"{i}\" type=\"text\" placeholder=\"{p}\"></label>" for i, t, p in (
          ("density-min", "density", "min"), ("density-max", "to", "max"),
          ("max-min", "max act", "min"), ("max-max", "to", "max"),
          ("search", "tokens", "search top contexts")))
  body = (f"<h1>{html.escape(title)}</h1>\n<div class=\"meta\">{len(rows)} latents"
          f"{' of ' + html.escape(layer_label) if layer_label else ''}, {n_dead} dead; showing "
          f"<span id=\"shown\">0</span>. Click a column header to sort.</div>\n"
          f"<div class=\"meta filters\">{filters}</div>\n"
          f"<table><thead><tr>{head}</tr></thead><tbody id=\"rows\"></tbody></table>")
  return _page(title, body, {"index-data": rows}, _INDEX_JS)


def _links(chunk: list[dict], where: dict[int, int], page: int) -> dict[str, str]:
  out = {}
  for r in chunk:
    for n in (r.get("neighbours") or []) + (r.get("coact") or []):
      j = int(n["index"])
      if j in where:
        out[str(j)] = (f"#latent-{j}" if where[j] == page else
                       f"page_{where[j]}.html#latent-{j}")
  return out


def _latent_page(chunk: list[dict], where: dict[int, int], page: int, n_pages: int,
                 title: str) -> str:
  nav = ["<a href=\"../index.html\">index</a>"]
  if page > 0:
    nav.append(f"<a href=\"page_{page - 1}.html\">previous page</a>")
  if page + 1 < n_pages:
    nav.append(f"<a href=\"page_{page + 1}.html\">next page</a>")
  first, last = chunk[0]["index"], chunk[-1]["index"]
  body = (f"<h1>{html.escape(title)}: latents {first}-{last}</h1>\n<div class=\"meta nav\">"
          f"{''.join(nav)} page {page + 1} of {n_pages}, <span id=\"latent-count\">0</span> "
          "latents</div>\n<div id=\"latents\"></div>")
  return _page(f"{title}: latents {first}-{last}", body,
               {"latent-data": chunk, "latent-links": _links(chunk, where, page)}, _PAGE_JS)


def _forward_html(ranges: list[list[int]], title: str) -> str:
  body = (f"<h1>{html.escape(title)}</h1>\n<div class=\"meta\" id=\"msg\"></div>\n"
          "<div class=\"meta\"><a href=\"index.html\">index</a></div>")
  return _page(title, body, {"page-ranges": ranges}, _FORWARD_JS)


def write_dashboards(records: list[dict], directory: str, *, title: str, layer_label: str = "",
                     per_page: int = 64) -> str:
  """Writes index.html, latent.html and latents/page_{n}.html under `directory` (module
  docstring); returns the path of index.html."""
  per_page = positive_int("per_page", per_page)
  records = _check_records(records)
  if not records:
    raise ConfigError("records is empty: expected one dict per latent")
  pages = [records[s:s + per_page] for s in range(0, len(records), per_page)]
  where = {int(r["index"]): n for n, chunk in enumerate(pages) for r in chunk}
  folder = os.path.join(directory, "latents")
  os.makedirs(folder, exist_ok=True)
  for name in os.listdir(folder):
    m = re.fullmatch(r"page_(\d+)\.html", name)
    if m and int(m.group(1)) >= len(pages):
      os.remove(os.path.join(folder, name))        # left over from a larger earlier run
  for n, chunk in enumerate(pages):
    workdir_lib.write_text(os.path.join(folder, f"page_{n}.html"),
                _latent_page(chunk, where, n, len(pages), title))
  ranges = [[int(c[0]["index"]), int(c[-1]["index"])] for c in pages]
  workdir_lib.write_text(os.path.join(directory, "latent.html"), _forward_html(ranges, title))
  index = os.path.join(directory, "index.html")
  workdir_lib.write_text(index, _index_html(records, per_page, title, layer_label))
  return index


def dashboard_url_template(directory_from_graph: str, *, per_layer: bool = False) -> str:
  """A graph_html dashboard_url pattern: `{dir}/latent.html#{feature}` for a single-layer set
  written into `directory_from_graph` (relative to the graph page), or, with per_layer, for
  one set per layer written into `{dir}/layer_{layer}/`: `{dir}/layer_{layer}/latent.html#
  {feature}`."""
  d = str(directory_from_graph).rstrip("/").replace("{", "{{").replace("}", "}}")
  prefix = f"{d}/" if d else ""
  return prefix + ("layer_{layer}/" if per_layer else "") + "latent.html#{feature}"
