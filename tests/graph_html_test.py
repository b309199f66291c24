"""graph_html: the page is self-contained, and a headless Chromium that opens it from the file
system draws (with the page's own script, from the embedded JSON) one node element per JSON
node; a #node= URL selects a node and highlights exactly its links."""

import html.parser
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from jaxcode.analysis import circuit_graph as cg
from jaxcode.errors import ConfigError
from jaxcode.report import graph_html


def small_graph_json(tokens=("<bos>", "The", " capital", " of", " France", " is")):
  """A random pruned graph: 3 layers, T tokens, 25 features, 3 logits."""
  rng = np.random.default_rng(7)
  L, T, n_f, K = 3, len(tokens), 25, 3
  feats = np.array([[rng.integers(L), rng.integers(1, T), i] for i in range(n_f)])
  level = np.concatenate([feats[:, 0] + 1, np.repeat(np.arange(L) + 1, T), np.zeros(T),
                          np.full(K, L + 1)])
  ok = level[None, :] < level[:, None]
  ok[n_f:n_f + L * T + T] = False
  a = np.where(ok & (rng.random(ok.shape) < 0.4), rng.normal(size=ok.shape), 0.0)
  g = cg.Graph(adjacency=a.astype(np.float32), features=feats,
               activations=rng.random(n_f).astype(np.float32), layers=(2, 4, 6),
               input_tokens=np.arange(T) + 10, token_strings=list(tokens),
               logit_tokens=np.array([5, 6, 7]), logit_probs=np.array([.5, .2, .1], np.float32),
               logit_strings=[" Paris", " Lyon", " the"], prompt="".join(tokens[1:]),
               scan="toy-scan", metadata={})
  pr = cg.prune(g, 0.8, 0.98)
  return cg.to_json(g, pr, "toy", node_threshold=0.8, edge_threshold=0.98)


def _chromium():
  path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium")
                                      else None)
  if path is None:
    if os.environ.get("CI"):
      pytest.fail("chromium is not installed (CI installs it in .ci/run)")
    pytest.skip("chromium is not installed (apt-get install chromium)")
  return path


def dump_dom(page: str, tmp_path, fragment: str = "") -> str:
  cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         "file://" + os.path.abspath(page) + fragment]
  p = subprocess.run(cmd, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
  assert p.returncode == 0, p.stderr[-2000:]
  return p.stdout


class _Elements(html.parser.HTMLParser):
  """Collects (tag, attrs) of every start tag."""

  def __init__(self):
    super().__init__()
    self.found = []

  def handle_starttag(self, tag, attrs):
    self.found.append((tag, dict(attrs)))

  handle_startendtag = handle_starttag


def elements(text: str, cls: str):
  p = _Elements()
  p.feed(text)
  return [a for _, a in p.found if cls in (a.get("class") or "").split()]


def test_page_is_self_contained(tmp_path):
  d = small_graph_json()
  path = graph_html.write_graph_html(d, str(tmp_path / "g.html"))
  text = open(path, encoding="utf-8").read()
  assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
  assert not re.search(r"url\(|@import|fetch\(|XMLHttpRequest|<link|<img|<iframe", text, re.I)
  assert "<script src" not in text
  assert elements(text, "node") == []          # nodes exist only once the script has run
  assert os.listdir(tmp_path) == ["g.html"]


def test_chromium_draws_every_node_from_the_embedded_json(tmp_path):
  # the token strings include markup that must stay inside the embedded JSON
  d = small_graph_json(tokens=("<bos>", "a</script ><b>x", " <!--", " &amp;", " \"q\"", " is"))
  assert len(d["nodes"]) > 12 and len(d["links"]) > 10
  path = graph_html.write_graph_html(d, str(tmp_path / "g.html"))
  dom = dump_dom(path, tmp_path)
  nodes = elements(dom, "node")
  assert len(nodes) == len(d["nodes"])
  assert sorted(a["data-node-id"] for a in nodes) == sorted(n["node_id"] for n in d["nodes"])
  assert len(elements(dom, "link")) == len(d["links"])
  assert re.search(rf'id="node-count">{len(d["nodes"])}<', dom)
  assert "a&lt;/script &gt;&lt;b&gt;x" in dom     # the token label, as text


def test_a_node_in_the_url_highlights_its_links(tmp_path):
  d = small_graph_json()
  nid = max(d["nodes"], key=lambda n: sum(n["node_id"] in (l["source"], l["target"])
                                          for l in d["links"]))["node_id"]
  touching = sum(nid in (l["source"], l["target"]) for l in d["links"])
  assert 0 < touching < len(d["links"])
  path = graph_html.write_graph_html(d, str(tmp_path / "g.html"),
                                     dashboard_url="dash/layer{layer}/f{feature}.html")
  dom = dump_dom(path, tmp_path, "#node=" + nid)
  assert len(elements(dom, "hl")) == touching
  assert len(elements(dom, "dim")) >= len(d["links"]) - touching
  assert [a["data-node-id"] for a in elements(dom, "selected")] == [nid]


def test_dashboard_links_and_escaping(tmp_path):
  d = small_graph_json()
  urls = graph_html.dashboard_links(d, "dash/layer{layer}/f{feature}.html")
  feats = [n for n in d["nodes"] if n["feature_type"] == "cross layer transcoder"]
  assert len(urls) == len(feats) > 0
  for n in feats:
    layer, index, _ = n["node_id"].split("_")
    assert urls[n["node_id"]] == f"dash/layer{layer}/f{index}.html"
  assert graph_html.dashboard_links(d, None) == {}
  with pytest.raises(ConfigError, match="dashboard_url"):
    graph_html.dashboard_links(d, "dash/{nope}.html")
  page = graph_html.write_graph_html(d, str(tmp_path / "g.html"), title="a <b> title",
                                     dashboard_url="dash/layer{layer}/f{feature}.html")
  text = open(page, encoding="utf-8").read()
  assert "<title>a &lt;b&gt; title</title>" in text
  assert "dash/layer" in text
  with pytest.raises(ConfigError, match="nodes"):
    graph_html.write_graph_html({"metadata": {}, "links": []}, str(tmp_path / "x.html"))
