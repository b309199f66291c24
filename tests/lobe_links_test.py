"""Lobe pages of the atlas report (report.lobes_page): a lobe's members are the active features
with its label, each member links to its latent's dashboard through the dashboards' forwarder,
the report table links each layer to its page, and a headless Chromium shows every lobe and
member link and follows a member link to the latent's section."""

import json
import re
import urllib.parse

import numpy as np
import pytest

from jaxcode.errors import ConfigError
from jaxcode.pipeline import lobes as lobes_lib
from jaxcode.report import atlas as report
from jaxcode.report import dashboards, lobes_page
from tests.graph_html_test import _Elements, dump_dom, elements

N_FEATURES, LAYER = 10, 3
ACTIVE = [0, 2, 3, 5, 7, 8]                     # 1, 4, 6 and 9 never fired
LABELS = {"phi": {2: [1, 0, 1, 0, 0, 1], 3: [2, 0, 1, 2, 0, 1]},
          "geometry": {2: [0, 0, 0, 1, 1, 1], 3: [0, 1, 2, 0, 1, 2]}}
# the same partitions written out by hand
MEMBERS = {("phi", "2"): [[2, 5, 7], [0, 3, 8]], ("phi", "3"): [[2, 7], [3, 8], [0, 5]],
           ("geometry", "2"): [[0, 2, 3], [5, 7, 8]], ("geometry", "3"): [[0, 5], [2, 7], [3, 8]]}
SOURCES = {"code": {"share": [0.75, 0.25], "winner": 0, "blocks": 8},
           "prose": {"share": [0.2, 0.8], "winner": 1, "blocks": 5}}


def _lobes_summary():
  """The JSON form pipeline.lobes.summarise writes, from a hand-made cg.lobes result."""
  stat = {"ami": 0.3, "null_mean": 0.0, "null_sd": 0.1, "sigma": 3.0}
  probe = {"balanced_accuracy": 0.9, "null_mean": 0.5, "null_sd": 0.1, "sigma": 4.0}
  res = {"n_features": N_FEATURES, "n_active": len(ACTIVE), "blocks": 13,
         "cluster_counts": [2, 3], "active": np.array(ACTIVE),
         "affinities": {"phi": {k: {"ami": stat, "probe": probe,
                                    **({"sources": SOURCES} if k == 2 else {})}
                                for k in (2, 3)}},
         "labels": {n: {k: np.array(v) for k, v in per.items()} for n, per in LABELS.items()}}
  return json.loads(json.dumps(lobes_lib.summarise(res, np.zeros((13, len(ACTIVE))))))


def _row(dashboards_index=f"dashboards/layer_{LAYER}/index.html"):
  return {"layer": LAYER, "hookpoint": f"blocks.{LAYER}.hook_resid_post", "pass": {},
          "lobe_affinity": "phi", "lobe_clusters": 2, "lobes": _lobes_summary(),
          "dashboards": dashboards_index}


def _records():
  """Hand-made dashboard records: the active latents alive, the rest dead."""
  return [{"index": i, "dead": i not in ACTIVE, "density": 0.1 * (i in ACTIVE), "max": 1.0,
           "mean_active": 0.5, "count": 3 * (i in ACTIVE), "top": [], "intervals": [],
           "act_hist": {"log10_edges": [-1.0, 0.0, 1.0], "counts": [1, 2]}}
          for i in range(N_FEATURES)]


@pytest.fixture()
def workdir(tmp_path):
  dashboards.write_dashboards(_records(), str(tmp_path / f"dashboards/layer_{LAYER}"),
                              title="toy", per_page=4)
  return tmp_path


def _members_in(text: str, tag: str) -> list[list[int]]:
  """Per lobe row of clustering `tag`, the member latents shown, in page order."""
  out = []
  for m in re.finditer(rf'<tr class="lobe" data-clustering="{re.escape(tag)}" '
                       rf'data-lobe="(\d+)">(.*?)</tr>', text):
    assert int(m.group(1)) == len(out)
    out.append([int(x) for x in re.findall(r'class="member"[^>]*>(\d+)<', m.group(2))])
  return out


def test_members_from_active_and_labels():
  for (name, k), want in MEMBERS.items():
    got = lobes_page.lobe_members(ACTIVE, LABELS[name][int(k)])
    assert got == want
    flat = sorted(i for lobe in got for i in lobe)
    assert flat == ACTIVE                                   # each active feature once
  # features in any order; a cluster count above the largest label leaves an empty lobe
  assert lobes_page.lobe_members([8, 0, 5], [1, 1, 0], k=3) == [[5], [0, 8], []]
  for active, labels, k, match in (([0, 1], [0], None, "2 active"),
                                   ([0, 0], [0, 1], None, "repeats"),
                                   ([0, 1], [0, 2], 2, "outside 0..1")):
    with pytest.raises(ConfigError, match=match):
      lobes_page.lobe_members(active, labels, k)


def test_page_links_each_member_to_its_dashboard(workdir):
  rel = lobes_page.write_page(_row(), str(workdir), title="toy model")
  assert rel == f"lobes/layer_{LAYER}.html"
  page = workdir / rel
  text = page.read_text(encoding="utf-8")
  for (name, k), want in MEMBERS.items():
    assert _members_in(text, f"{name}/{k}") == want, (name, k)
  # the headline (phi, 2 lobes) comes first and open; the rest fold
  assert text.index('data-affinity="phi" data-k="2"') < text.index('data-k="3"')
  assert '<section class="clustering headline" data-affinity="phi" data-k="2">' in text
  assert text.count("<details ") == 3
  # source shares of the headline: code won by lobe 0, prose by lobe 1
  lobe0 = re.search(r'data-clustering="phi/2" data-lobe="0">(.*?)</tr>', text).group(1)
  assert '<td class="win">75%</td><td class="">20%</td>' in lobe0
  hrefs = [a["href"] for a in _anchors(text) if "member" in a.get("class", "")]
  assert len(hrefs) == 4 * len(ACTIVE)
  assert f"../dashboards/layer_{LAYER}/latent.html#2" in hrefs
  ranges = json.loads(re.search(r'id="page-ranges">(.*?)</script>',
                                (workdir / f"dashboards/layer_{LAYER}/latent.html").read_text()
                                ).group(1))
  for href in hrefs:
    path, frag = href.split("#")
    assert (page.parent / path).resolve().is_file(), href
    assert re.fullmatch(r"(?:latent-)?\d+", frag)               # what the forwarder reads
    assert any(lo <= int(frag) <= hi for lo, hi in ranges)
  back = [a["href"] for a in _anchors(text) if "member" not in a.get("class", "")]
  assert all((page.parent / h).resolve().is_file() for h in back if h != "../report.html")


def test_page_without_dashboards_names_members_as_text(tmp_path):
  rel = lobes_page.write_page(_row(None), str(tmp_path))
  text = (tmp_path / rel).read_text(encoding="utf-8")
  assert _members_in(text, "phi/3") == MEMBERS[("phi", "3")]
  assert "dashboards/" not in text and '<a class="member"' not in text
  no_clusters = {**_row(), "lobes": {k: v for k, v in _row()["lobes"].items()
                                     if k != "clusters"}}
  assert lobes_page.write_page(no_clusters, str(tmp_path / "x")) is None


def test_report_table_links_each_layer_to_its_page(workdir):
  rows = [_row(), {**_row(), "layer": 5, "lobes": None}]
  pages = lobes_page.write_pages({"model": "toy", "layers": rows}, str(workdir))
  assert pages == {LAYER: f"lobes/layer_{LAYER}.html"}
  table = report._table(rows, pages)
  assert table.count('class="lobes-page"') == 1
  assert f'href="lobes/layer_{LAYER}.html"' in table
  assert (workdir / pages[LAYER]).is_file()
  assert table.count("<th>") == len(report.TABLE) + 1


def _anchors(text: str):
  p = _Elements()
  p.feed(text)
  return [a for tag, a in p.found if tag == "a" and "href" in a]


def test_chromium_shows_lobes_and_follows_member_links(workdir, tmp_path):
  page = workdir / lobes_page.write_page(_row(), str(workdir), title="toy <model>")
  text = page.read_text(encoding="utf-8")
  assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
  assert not re.search(r"<script|url\(|@import|<link|<img|<iframe", text, re.I)
  dom = dump_dom(str(page), tmp_path)
  assert "Lobes of toy &lt;model&gt;" in dom
  lobes = elements(dom, "lobe")
  assert len(lobes) == sum(len(m) for m in MEMBERS.values()) == 10
  assert sum(a["data-clustering"] == "phi/2" for a in lobes) == 2
  links = [a for a in _anchors(dom) if "member" in a.get("class", "").split()]
  assert len(links) == 4 * len(ACTIVE)
  assert sum(a["data-clustering"] == "phi/2" for a in links) == len(ACTIVE)
  # latent 8 sits on the third dashboard page; its link lands on its section
  href = next(a["href"] for a in links if a["href"].endswith("#8"))
  path, frag = href.split("#")
  target = dump_dom(str((page.parent / urllib.parse.unquote(path)).resolve()), tmp_path,
                    "#" + frag)
  assert 'id="latent-8"' in target and 'id="latent-9"' in target
  assert 'id="latent-0"' not in target


def test_stats_line_names_every_source_pair_with_three_sources():
  """Three sources (literature beside code and prose): the page names the mean separation and
  each pair's; two sources keep the code/prose wording."""
  pairs = {"code|literature": 1.0, "code|prose": 0.92, "literature|prose": 1.0}
  rec = {"ami": 0.007, "ami_sigma": 5.7, "balanced_accuracy": 0.546, "probe_sigma": 9.9,
         "code_prose_separation": 0.92, "pair_separations": pairs, "source_separation": 0.973}
  line = lobes_page._stats(rec)
  assert "source separation 0.973" in line
  assert all(f"{k} {v:.3g}" in line for k, v in pairs.items())
  two = dict(rec, pair_separations={"code|prose": 0.92}, source_separation=0.92)
  assert "code/prose separation 0.92" in lobes_page._stats(two)


def test_skipped_lobes_are_said_not_drawn(tmp_path):
  """A layer whose lobes were skipped (too few features fire) gets no page, no table values,
  and its reason in the findings; a skipped layer beside a clustered one keeps the latter."""
  skipped = {"n_features": 16, "n_active": 1, "blocks": 40, "cluster_counts": [],
             "fired_fraction": 0.01, "affinities": {},
             "skipped": "1 features fire above lobes.threshold=0.2 in a block: too few for 2 "
                        "clusters"}
  assert report._lobe_pick(skipped, None) == {}
  row = {"layer": 3, "lobes": skipped}
  assert lobes_page.write_page(row, str(tmp_path)) is None
  text = report._lobes_finding([row])
  assert text.startswith("No block has a lobe clustering.") and "block 3 (1 features" in text
  both = report._lobes_finding([{**_row(), "lobe_code_prose_separation": 0.5}, row])
  assert "total-variation distance 0.50-0.50" in both and "Lobes skipped at block 3" in both
