"""A self-contained HTML view of a pruned attribution graph (the dict of circuit_graph.to_json).

One static file, opened from the file system without a server: the graph JSON is embedded in
a <script type="application/json"> block and drawn as SVG by inline JavaScript; no font,
style sheet, script or image is fetched. Layout: one row per layer (embeddings at the
bottom, then the transcoder layers in increasing order, logits at the top) and one column
per prompt position (token strings along the bottom); a column is as wide as its most
crowded row. Edges: width ~ |weight| / max |weight|, blue positive, red negative. Hovering a
node shows its id, layer, position, feature index, activation and influence; clicking it
keeps only its edges highlighted (click the background to clear) and shows its details; a
URL ending in #node=<node_id> opens with that node selected.
With `dashboard_url` (a str.format pattern with {layer} and {feature}, e.g.
"dashboards/layer{layer}/feature{feature}.html"), feature details link to that page.

Every drawn node is an SVG <g class="node" data-node-id="..."> made by the script, so a
browser's DOM (e.g. `chromium --headless --dump-dom`) shows how many nodes were rendered.
"""

from __future__ import annotations

import html
import json

from jaxcode import workdir as workdir_lib
from jaxcode.errors import ConfigError

_CSS = """
body { font-family: sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.3em; margin: 0.2em 0; }
.meta { font-size: 13px; color: #444; margin: 0.2em 0 0.6em; }
.meta code { background: #f3f3f3; padding: 0 3px; }
#wrap { position: relative; overflow: auto; border: 1px solid #ddd; }
svg text { font-size: 11px; fill: #333; }
.link { fill: none; opacity: 0.45; }
.link.dim { opacity: 0.05; }
.link.hl { opacity: 0.95; }
.node { cursor: pointer; }
.node .shape { stroke: #333; stroke-width: 0.8; }
.node.selected .shape { stroke: #000; stroke-width: 2.5; }
.node.dim { opacity: 0.25; }
#tip { position: absolute; pointer-events: none; background: #fffff0; border: 1px solid #999;
       padding: 4px 7px; font-size: 12px; white-space: pre; display: none; z-index: 2; }
#details { font-size: 13px; margin-top: 0.6em; min-height: 1.5em; white-space: pre-wrap; }
.legend span { display: inline-block; margin-right: 1.2em; }
.sw { display: inline-block; width: 11px; height: 11px; vertical-align: middle;
      margin-right: 4px; border: 1px solid #333; }
"""

_JS = r"""
(function () {
  var NS = "http://www.w3.org/2000/svg";
  var data = JSON.parse(document.getElementById("graph-data").textContent);
  var urls = JSON.parse(document.getElementById("dashboard-urls").textContent);
  var meta = data.metadata || {}, tokens = meta.prompt_tokens || [];
  var nodes = data.nodes || [], links = data.links || [];
  var COLORS = {"cross layer transcoder": "#9ecae1", "mlp reconstruction error": "#bdbdbd",
                "embedding": "#fdd49e", "logit": "#a1d99b"};
  function rowKey(n) { return n.feature_type === "embedding" ? -1 : Number(n.layer); }
  var keys = [], byId = {};
  nodes.forEach(function (n) { byId[n.node_id] = n; var k = rowKey(n);
    if (keys.indexOf(k) < 0) keys.push(k); });
  keys.sort(function (a, b) { return a - b; });
  var nPos = tokens.length;
  nodes.forEach(function (n) { nPos = Math.max(nPos, n.ctx_idx + 1); });
  var cells = {}, width = [];
  for (var c = 0; c < nPos; c++) width.push(1);
  nodes.forEach(function (n) { var id = rowKey(n) + "/" + n.ctx_idx;
    (cells[id] = cells[id] || []).push(n);
    width[n.ctx_idx] = Math.max(width[n.ctx_idx], cells[id].length); });
  var SLOT = 20, ROW = 70, LEFT = 70, TOP = 90, BOTTOM = 90;
  var x0 = [], x = LEFT;
  for (c = 0; c < nPos; c++) { x0.push(x); x += width[c] * SLOT + 16; }
  var W = x + 140, H = TOP + ROW * Math.max(keys.length - 1, 0) + BOTTOM;
  function rowY(k) { return TOP + ROW * (keys.length - 1 - keys.indexOf(k)); }
  Object.keys(cells).forEach(function (id) {
    cells[id].sort(function (a, b) { return (a.influence === null ? 2 : a.influence) -
      (b.influence === null ? 2 : b.influence); });
    cells[id].forEach(function (n, i) { n._x = x0[n.ctx_idx] + SLOT * (i + 0.5);
      n._y = rowY(rowKey(n)); });
  });
  function el(tag, attrs, parent) { var e = document.createElementNS(NS, tag);
    for (var a in attrs) e.setAttribute(a, attrs[a]); if (parent) parent.appendChild(e);
    return e; }
  var svg = el("svg", {width: W, height: H, id: "graph"});
  document.getElementById("wrap").appendChild(svg);
  keys.forEach(function (k) { var t = el("text", {x: 6, y: rowY(k) + 4}, svg);
    t.textContent = k < 0 ? "Emb" : (k === keys[keys.length - 1] && nodes.some(function (n) {
      return n.feature_type === "logit"; }) ? "Logit" : "L" + k); });
  for (c = 0; c < nPos; c++) { var cx = x0[c] + width[c] * SLOT / 2, cy = H - BOTTOM + 30;
    var t = el("text", {x: cx, y: cy, transform: "rotate(-35 " + cx + " " + cy + ")",
                        "text-anchor": "end"}, svg);
    t.textContent = JSON.stringify(tokens[c] === undefined ? "" : tokens[c]); }
  var maxW = 1e-30;
  links.forEach(function (l) { maxW = Math.max(maxW, Math.abs(l.weight)); });
  var gl = el("g", {id: "links"}, svg), gn = el("g", {id: "nodes"}, svg), linkEls = [];
  links.forEach(function (l) { var s = byId[l.source], d = byId[l.target];
    if (!s || !d) return;
    var my = (s._y + d._y) / 2;
    var p = el("path", {"class": "link", d: "M" + s._x + "," + s._y + " C" + s._x + "," + my +
      " " + d._x + "," + my + " " + d._x + "," + d._y,
      stroke: l.weight >= 0 ? "#2166ac" : "#d6604d",
      "stroke-width": (0.4 + 4.6 * Math.abs(l.weight) / maxW).toFixed(2)}, gl);
    p._s = l.source; p._t = l.target; linkEls.push(p); });
  var tip = document.getElementById("tip"), details = document.getElementById("details");
  function featureIndex(n) { return n.feature_type === "cross layer transcoder" ?
    Number(n.node_id.split("_")[1]) : null; }
  function describe(n) {
    var f = featureIndex(n), lines = ["node " + n.node_id + "  (" + n.feature_type + ")",
      "layer " + n.layer + ", position " + n.ctx_idx + " " +
      JSON.stringify(tokens[n.ctx_idx] === undefined ? "" : tokens[n.ctx_idx])];
    if (f !== null) lines.push("feature index " + f);
    if (n.activation !== null && n.activation !== undefined)
      lines.push("activation " + Number(n.activation).toPrecision(4));
    if (n.influence !== null && n.influence !== undefined)
      lines.push("influence (cumulative) " + Number(n.influence).toPrecision(4));
    if (n.clerp) lines.push(n.clerp);
    return lines.join("\n"); }
  var selected = null;
  function select(n) {
    selected = n;
    var near = {};
    if (n) near[n.node_id] = true;
    linkEls.forEach(function (p) { var on = n && (p._s === n.node_id || p._t === n.node_id);
      if (on) { near[p._s] = true; near[p._t] = true; }
      p.setAttribute("class", "link" + (n ? (on ? " hl" : " dim") : "")); });
    Array.prototype.forEach.call(gn.childNodes, function (g) {
      var id = g.getAttribute("data-node-id");
      g.setAttribute("class", "node" + (n ? (id === n.node_id ? " selected" :
        (near[id] ? "" : " dim")) : "")); });
    details.textContent = n ? describe(n) : "Click a node to highlight its edges.";
    if (n && urls[n.node_id]) { details.appendChild(document.createTextNode("\n"));
      var a = document.createElement("a"); a.href = urls[n.node_id];
      a.textContent = "feature dashboard"; details.appendChild(a); } }
  nodes.forEach(function (n) {
    var g = el("g", {"class": "node", "data-node-id": n.node_id}, gn), ft = n.feature_type;
    var fill = COLORS[ft] || "#ddd";
    if (ft === "cross layer transcoder") el("circle", {"class": "shape", cx: n._x, cy: n._y,
      r: 6, fill: fill}, g);
    else el("rect", {"class": "shape", x: n._x - 6, y: n._y - 6, width: 12, height: 12,
      rx: ft === "mlp reconstruction error" ? 0 : 3, fill: fill}, g);
    if (ft === "logit") { var ly = n._y - 10, lt = el("text", {x: n._x, y: ly,
      transform: "rotate(-35 " + n._x + " " + ly + ")"}, g);
      lt.textContent = n.clerp.replace(/^Output /, ""); }
    g.addEventListener("mouseenter", function (ev) { tip.textContent = describe(n);
      tip.style.display = "block"; });
    g.addEventListener("mousemove", function (ev) { var r = document.getElementById("wrap")
      .getBoundingClientRect(); tip.style.left = (ev.clientX - r.left + 14) + "px";
      tip.style.top = (ev.clientY - r.top + 14) + "px"; });
    g.addEventListener("mouseleave", function () { tip.style.display = "none"; });
    g.addEventListener("click", function (ev) { ev.stopPropagation();
      select(selected === n ? null : n); });
  });
  svg.addEventListener("click", function () { select(null); });
  document.getElementById("node-count").textContent = String(gn.childNodes.length);
  document.getElementById("link-count").textContent = String(linkEls.length);
  var want = decodeURIComponent((location.hash.match(/^#node=(.*)$/) || [])[1] || "");
  select(byId[want] || null);
})();
"""


def _embed(obj) -> str:
  """JSON safe inside <script>: '<', '>' and '&' as \\u escapes (JSON.parse reads them back)."""
  s = json.dumps(obj, allow_nan=False)
  return s.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def dashboard_links(graph_json: dict, dashboard_url: str | None) -> dict:
  """{node_id: dashboard_url.format(layer=..., feature=...)} for the feature nodes (layer:
  the model layer, feature: the feature index read from node_id `layer_index_pos`)."""
  if dashboard_url is None:
    return {}
  out = {}
  for n in graph_json["nodes"]:
    if n["feature_type"] != "cross layer transcoder":
      continue
    layer, index, _ = n["node_id"].split("_")
    try:
      out[n["node_id"]] = dashboard_url.format(layer=int(layer), feature=int(index))
    except (KeyError, IndexError, ValueError) as e:
      raise ConfigError(f"dashboard_url={dashboard_url!r}: {type(e).__name__} {e}: expected a "
                        "pattern with {layer} and {feature}") from None
  return out


def _header(graph_json: dict, title: str) -> str:
  m = graph_json["metadata"]
  sc = m.get("jaxcode", {})
  score = ""
  for name, key in (("full graph", "scores"), ("pruned graph", "pruned_scores")):
    s = sc.get(key)
    if s:
      score += (f" {name}: replacement {s['replacement_score']:.3f}, completeness "
                f"{s['completeness_score']:.3f};")
  ps = m.get("pruning_settings", {})
  return (f"<h1>{html.escape(title)}</h1>\n<div class=\"meta\">prompt <code>"
          f"{html.escape(m['prompt'])}</code>; scan <code>{html.escape(m['scan'])}</code>; "
          f"slug <code>{html.escape(m['slug'])}</code>; pruning node "
          f"{ps.get('node_threshold', m.get('node_threshold'))} / edge "
          f"{ps.get('edge_threshold')};{html.escape(score)} "
          "<span id=\"node-count\">0</span> nodes, <span id=\"link-count\">0</span> links drawn"
          "</div>\n<div class=\"meta legend\">"
          + "".join(f"<span><i class=\"sw\" style=\"background:{c}\"></i>{t}</span>" for t, c in (
              ("feature", "#9ecae1"), ("error", "#bdbdbd"), ("token", "#fdd49e"),
              ("logit", "#a1d99b"), ("positive edge", "#2166ac"), ("negative edge", "#d6604d")))
          + "</div>")


def write_graph_html(graph_json: dict, path: str, *, dashboard_url: str | None = None,
                     title: str | None = None) -> str:
  """Writes the page for graph_json to `path` (temporary name, then rename); returns path."""
  for key in ("metadata", "nodes", "links"):
    if key not in graph_json:
      raise ConfigError(f"graph_json has no {key!r}: expected circuit_graph.to_json's dict")
  title = title or f"Attribution graph: {graph_json['metadata'].get('slug', '')}"
  page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\n<title>{html.escape(title)}"
          f"</title>\n<style>{_CSS}</style></head><body>\n{_header(graph_json, title)}\n"
          "<div id=\"wrap\"><div id=\"tip\"></div></div>\n<div id=\"details\"></div>\n"
          f"<script type=\"application/json\" id=\"graph-data\">{_embed(graph_json)}</script>\n"
          "<script type=\"application/json\" id=\"dashboard-urls\">"
          f"{_embed(dashboard_links(graph_json, dashboard_url))}</script>\n"
          f"<script>{_JS}</script>\n</body></html>\n")
  return workdir_lib.write_text(path, page)
