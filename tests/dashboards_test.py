"""dashboard_data and report.dashboards on a planted dictionary: latent i fires only on input
token PLANT_IN[i] and its decoder row is the unembedding column of PLANT_OUT[i]; the last
latent is dead. The scan dict is built here by hand from the planted activations (the
contract of dashboard_data's docstring), the numbers are checked against numpy, and a
headless Chromium opens the written pages from the file system."""

import html as html_lib
import json
import os
import re
import subprocess
import urllib.parse

import numpy as np
import pytest

from jaxcode.analysis import dashboard_data as dd
from jaxcode.errors import ConfigError
from jaxcode.report import dashboards, graph_html
from tests.graph_html_test import _chromium, _Elements, dump_dom, elements, small_graph_json

F, R, T, D, V = 6, 10, 14, 48, 40
PLANT_IN = [20, 21, 22, 23, 24, 25]            # latent 5 (token 25, never in ids) is dead
PLANT_OUT = [3, 7, 11, 13, 17, 19]
VOCAB = ["<bos>"] + [f" w{i}" for i in range(1, V)]
VOCAB[21] = " a</script><b>x"                  # markup that must stay text
VOCAB[22] = "\n"


def decode(ids):
  return [VOCAB[i] for i in ids]


def planted():
  """ids [R, T] (BOS at position 0), special, acts [R, T, F], W_U [D, V], W_dec [F, D]."""
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 19, size=(R, T))
  ids[:, 0] = 0
  acts = np.zeros((R, T, F))
  for i, tok in enumerate(PLANT_IN[:5]):
    for n in range(3 + i):                      # 3..7 occurrences, some at position 1
      r, p = (n * 3 + i) % R, 1 + (n * 5 + 2 * i) % (T - 1)
      ids[r, p] = tok
  for i, tok in enumerate(PLANT_IN):
    acts[..., i] = np.where(ids == tok, 0.5 + rng.random((R, T)) * 2.5, 0.0)
  acts = acts.astype(np.float32).astype(np.float64)   # the scan's values are float32
  W_U = rng.normal(size=(D, V))
  return ids, ids == 0, acts, W_U, W_U[:, PLANT_OUT].T.copy()


def scan_of(acts, special, k=4, n_int=3, per=2, n_bins=8):
  """The feature scan's result dict, computed directly from acts [R, T, F]."""
  a = np.where(special[..., None], 0.0, acts).reshape(-1, F).T            # [F, R*T]
  s = {"n_tokens": int((~special).sum()), "n_latents": F, "k_top": k, "n_intervals": n_int,
       "per_interval": per, "n_bins": n_bins}
  order = np.argsort(-a, axis=1, kind="stable")[:, :k]
  top = np.take_along_axis(a, order, 1)
  s["top_values"] = top.astype(np.float32)
  s["top_rows"] = np.where(top > 0, order // T, -1).astype(np.int32)
  s["top_pos"] = np.where(top > 0, order % T, -1).astype(np.int32)
  s["count"] = (a > 0).sum(1).astype(np.int64)
  s["density"] = s["count"] / s["n_tokens"]
  s["max"] = a.max(1).astype(np.float32)
  s["mean_active"] = np.where(s["count"] > 0, a.sum(1) / np.maximum(s["count"], 1), 0.0)
  s["hist_edges"] = np.linspace(-1, 1, n_bins + 1)
  s["hist_counts"] = np.stack([np.histogram(np.log10(x[x > 0]), s["hist_edges"])[0] for x in a])
  s["interval_edges"] = np.linspace(0, s["max"], n_int + 1).T.astype(np.float32)
  shape = (F, n_int, per)
  s["interval_values"] = np.zeros(shape, np.float32)
  s["interval_rows"], s["interval_pos"] = np.full(shape, -1, np.int32), np.full(shape, -1, np.int32)
  s["interval_counts"] = np.zeros((F, n_int), np.int64)
  for i in range(F):
    e = s["interval_edges"][i]
    for j in range(n_int):
      inside = np.flatnonzero((a[i] > e[j]) & (a[i] <= e[j + 1]))
      s["interval_counts"][i, j] = inside.size
      take = inside[:per]
      s["interval_values"][i, j, :take.size] = a[i, take]
      s["interval_rows"][i, j, :take.size], s["interval_pos"][i, j, :take.size] = divmod(take, T)
  s["coact_top_index"] = np.full((F, 2), -1, np.int32)
  s["coact_top_count"] = np.zeros((F, 2), np.int64)
  s["coact_top_index"][0, 0], s["coact_top_count"][0, 0] = 1, 2      # passed through as given
  return s


@pytest.fixture(scope="module")
def setup():
  ids, special, acts, W_U, W_dec = planted()
  scan = scan_of(acts, special)
  logits = dd.logit_effects(W_dec, W_U, k=10, block=4)
  near = dd.decoder_neighbours(W_dec, k=3, block=4)
  recs = dd.latent_records(scan, ids=ids, special=special, decode=decode, logits=logits,
                           neighbours=near, acts_of=lambda i, r: acts[r, :, i], window=(3, 2),
                           layer_label="blocks.2.mlp_out")
  return dict(ids=ids, special=special, acts=acts, W_U=W_U, W_dec=W_dec, scan=scan,
              logits=logits, near=near, recs=recs)


# ---------------------------------------------------------------- data


def test_logit_effects_rank_the_planted_output_token_first(setup):
  lg, ref = setup["logits"], setup["W_dec"] @ setup["W_U"]
  np.testing.assert_array_equal(lg["top_ids"][:, 0], PLANT_OUT)
  np.testing.assert_array_equal(lg["top_ids"], np.argsort(-ref, 1)[:, :10])
  np.testing.assert_allclose(lg["top_values"], -np.sort(-ref, 1)[:, :10], rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(lg["bottom_ids"], np.argsort(ref, 1)[:, :10])
  np.testing.assert_allclose(lg["bottom_values"], np.sort(ref, 1)[:, :10], rtol=1e-4, atol=1e-4)
  assert lg["hist_edges"].shape == (F, 51) and lg["hist_counts"].shape == (F, 50)
  for i in range(F):
    want, _ = np.histogram(ref[i], bins=50, range=(ref[i].min(), ref[i].max()))
    assert lg["hist_counts"][i].sum() == V
    assert np.abs(lg["hist_counts"][i] - want).sum() <= 2       # float32 values on an edge
    np.testing.assert_allclose(lg["hist_edges"][i, [0, -1]], [ref[i].min(), ref[i].max()],
                               rtol=1e-4, atol=1e-4)


def test_decoder_neighbours_match_numpy_cosines(setup):
  w = setup["W_dec"]
  unit = w / np.linalg.norm(w, axis=1, keepdims=True)
  cos = unit @ unit.T
  np.fill_diagonal(cos, -np.inf)
  near = setup["near"]
  np.testing.assert_array_equal(near["index"], np.argsort(-cos, 1)[:, :3])
  np.testing.assert_allclose(near["cosine"], -np.sort(-cos, 1)[:, :3], atol=1e-5)
  assert not (near["index"] == np.arange(F)[:, None]).any()
  rec = setup["recs"][2]
  assert [n["index"] for n in rec["neighbours"]] == near["index"][2].tolist()


def test_records_show_the_planted_token_in_context(setup):
  recs, acts = setup["recs"], setup["acts"]
  assert [r["index"] for r in recs] == list(range(F))
  assert [r["dead"] for r in recs] == [False] * 5 + [True]
  for i, r in enumerate(recs[:5]):
    assert r["count"] == 3 + i and r["layer"] == "blocks.2.mlp_out"
    assert len(r["top"]) == min(4, r["count"])
    assert r["logits"]["top"][0]["token"] == VOCAB[PLANT_OUT[i]]
    for c in r["top"] + [c for iv in r["intervals"] for c in iv["samples"]]:
      q = c["qualifying_token_index"]
      assert c["tokens"][q] == VOCAB[PLANT_IN[i]]
      assert c["tokens"] == decode(setup["ids"][c["row"], c["pos"] - q:c["pos"] - q +
                                                len(c["tokens"])].tolist())
      assert q == min(c["pos"], 3) and len(c["tokens"]) == q + 1 + min(2, T - 1 - c["pos"])
      np.testing.assert_allclose(c["values"][q], acts[c["row"], c["pos"], i], atol=1e-5)
      assert c["special"][0] == (c["pos"] - q == 0)
    assert [c["value"] for c in r["top"]] == sorted((c["value"] for c in r["top"]), reverse=True)
    assert sum(iv["bin_contains"] for iv in r["intervals"]) == pytest.approx(1.0, abs=1e-4)
    for iv in r["intervals"]:
      assert all(iv["bin_min"] - 1e-5 <= c["value"] <= iv["bin_max"] + 1e-5
                 for c in iv["samples"])
    assert sum(r["act_hist"]["counts"]) == r["count"]
  assert recs[5]["top"] == [] and recs[5]["intervals"] == []
  assert recs[0]["coact"] == [{"index": 1, "count": 2, "frac": round(2 / 3, 5)}]
  assert recs[1]["coact"] == []


def test_records_without_acts_and_special_positions(setup):
  scan = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in setup["scan"].items()}
  scan["top_rows"][0, -1], scan["top_pos"][0, -1], scan["top_values"][0, -1] = 4, 0, 0.1
  recs = dd.latent_records(scan, ids=setup["ids"], special=setup["special"], decode=decode,
                           window=(0, 0))
  assert len(recs[0]["top"]) == 3                    # the BOS slot is not a qualifying token
  for r in recs[:5]:
    for c in r["top"]:
      assert len(c["tokens"]) == 1 and c["values"] == [c["value"]]
  r = dd.latent_records(scan, ids=setup["ids"], special=setup["special"], decode=decode,
                        window=(T - 1, 0))[1]
  c = r["top"][0]
  assert c["special"][0] and c["values"][0] == 0.0
  assert sum(v != 0 for v in c["values"]) == 1       # only the qualifying token carries a value
  assert r["logits"] is None and r["neighbours"] is None


# ---------------------------------------------------------------- Neuronpedia

NP_KEYS = {"feature_index", "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero",
           "freq_hist_data_bar_values", "freq_hist_data_bar_heights",
           "logits_hist_data_bar_values", "logits_hist_data_bar_heights", "n_prompts_total",
           "n_tokens_in_prompt", "dataset", "activations"}


def test_neuronpedia_batches(setup, tmp_path):
  recs = setup["recs"]
  batches = dd.neuronpedia_batches(recs, model_id="gemma-2-2b", layer=2, sae_set="toy",
                                   batch_size=4, dataset="planted")
  assert [[f["feature_index"] for f in b["features"]] for b in batches] == [[0, 1, 2, 3], [4]]
  for b in batches:
    assert set(b) == {"model_id", "layer", "sae_set", "features"} and b["layer"] == 2
  f = batches[0]["features"][2]
  assert set(f) == NP_KEYS and f["dataset"] == "planted"
  assert f["pos_str"][0] == VOCAB[PLANT_OUT[2]] and len(f["neg_str"]) == 10
  assert f["n_prompts_total"] == R and f["n_tokens_in_prompt"] == T
  assert f["frac_nonzero"] == round(recs[2]["density"], 5)
  n_top = len(recs[2]["top"])
  top, rest = f["activations"][:n_top], f["activations"][n_top:]
  assert all(a["bin_min"] == -1 and a["bin_contains"] == -1 and a["bin_max"] == recs[2]["max"]
             for a in top)
  assert [a["bin_min"] for a in rest] == sorted((a["bin_min"] for a in rest), reverse=True)
  assert len(rest) == sum(len(iv["samples"]) for iv in recs[2]["intervals"])
  for a in f["activations"]:
    assert set(a) == {"bin_min", "bin_max", "bin_contains", "tokens", "values",
                      "qualifying_token_index"}
    assert a["tokens"][a["qualifying_token_index"]] == VOCAB[PLANT_IN[2]]
  floats = [v for feat in batches[0]["features"] for k in NP_KEYS if k.endswith(("values",
            "heights")) for v in feat[k]] + [v for a in f["activations"] for v in a["values"]]
  assert floats and all(v == round(v, 5) for v in floats)
  assert sum(f["freq_hist_data_bar_heights"]) == recs[2]["count"]
  skipped = dd.neuronpedia_skipped(recs, model_id="gemma-2-2b", layer=2, sae_set="toy")
  assert skipped["skipped_indexes"] == [5]
  paths = dd.write_neuronpedia(str(tmp_path / "np"), batches, skipped)
  assert sorted(os.listdir(tmp_path / "np")) == ["batch-0.json", "batch-1.json",
                                                  "skipped_indexes.json"]
  assert json.load(open(paths[0])) == batches[0]
  assert json.load(open(paths[-1]))["skipped_indexes"] == [5]
  low = float(np.log10(recs[1]["density"])) + 1e-9       # latents 0 and 1 are the rarest
  assert dd.neuronpedia_skipped(recs, model_id="m", layer=2, sae_set="s", log_sparsity=low)[
      "skipped_indexes"] == [0, 1, 5]


# ---------------------------------------------------------------- pages in a browser


def _anchors(dom: str):
  p = _Elements()
  p.feed(dom)
  return [a for tag, a in p.found if tag == "a" and "href" in a]


def _ids(dom: str):
  return set(re.findall(r'\bid="([^"]+)"', dom))


def test_pages_in_chromium(setup, tmp_path):
  out = tmp_path / "dash"
  index = dashboards.write_dashboards(setup["recs"], str(out), title="planted <toy>",
                                      layer_label="blocks.2.mlp_out", per_page=4)
  files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
  assert files == ["index.html", "latent.html", "latents/page_0.html", "latents/page_1.html"]
  for name in files:
    text = (out / name).read_text()
    assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert not re.search(r"url\(|@import|fetch\(|XMLHttpRequest|<link|<img|<iframe", text, re.I)
  dom = dump_dom(index, tmp_path)
  rows = elements(dom, "latent-row")
  assert len(rows) == F and len(elements(dom, "dead")) == 1
  pages = {}
  hrefs = [a["href"] for a in _anchors(dom)]
  assert len(hrefs) == F
  for href in hrefs:
    path, frag = html_lib.unescape(href).split("#")
    assert not urllib.parse.urlparse(href).scheme and (out / path).is_file()
    if path not in pages:
      pages[path] = dump_dom(str(out / path), tmp_path)
    assert frag in _ids(pages[path])
  page0 = pages["latents/page_0.html"]
  assert len(elements(page0, "latent")) == 4
  assert len(elements(page0, "hl")) >= sum(len(r["top"]) for r in setup["recs"][:4])
  assert len(elements(page0, "q")) >= sum(len(r["top"]) for r in setup["recs"][:4])
  assert len(elements(page0, "hist")) == 8 and len(elements(page0, "bar")) > 0
  assert "a&lt;/script&gt;&lt;b&gt;x" in page0
  assert f'<td>"{VOCAB[PLANT_OUT[0]]}"</td>' in page0 and "native code" not in page0
  for page, dom_p in pages.items():                  # neighbour links across pages
    for a in _anchors(dom_p):
      path, frag = (html_lib.unescape(a["href"]).split("#") + [""])[:2]
      target = out / "latents" / path if path else out / page
      assert target.is_file(), a["href"]
      if frag:
        assert frag in _ids(pages.get(str(target.relative_to(out))) or
                            dump_dom(str(target), tmp_path))
  shot = tmp_path / "page0.png"
  p = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                      f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                      "--window-size=1200,900", "file://" + str(out / "latents/page_0.html")],
                     capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
  assert p.returncode == 0, p.stderr[-2000:]
  assert shot.stat().st_size > 1000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_index_fragment_filters_and_sorts(setup, tmp_path):
  index = dashboards.write_dashboards(setup["recs"], str(tmp_path / "d"), title="t",
                                      per_page=4)
  dom = dump_dom(index, tmp_path, "#sort=-max")
  order = [int(re.search(r"latent-(\d+)", a["href"]).group(1)) for a in _anchors(dom)]
  assert order == sorted(range(F), key=lambda i: (-setup["recs"][i]["max"], i))
  q = urllib.parse.quote(VOCAB[PLANT_IN[3]].strip())
  dom = dump_dom(index, tmp_path, f"#search={q}")
  assert len(elements(dom, "latent-row")) == 1 and "latent-3" in dom
  dom = dump_dom(index, tmp_path, "#density-min=0.03&max-max=100")
  want = [r for r in setup["recs"] if r["density"] >= 0.03]
  assert 0 < len(elements(dom, "latent-row")) == len(want) < F


def test_graph_links_reach_the_latent_sections(setup, tmp_path):
  dashboards.write_dashboards(setup["recs"], str(tmp_path / "dash"), title="t", per_page=4)
  tpl = dashboards.dashboard_url_template("dash")
  assert tpl == "dash/latent.html#{feature}"
  assert dashboards.dashboard_url_template("a{b}/", per_layer=True).format(
      layer=3, feature=9) == "a{b}/layer_3/latent.html#9"
  urls = graph_html.dashboard_links(small_graph_json(), tpl)
  assert urls and all(re.fullmatch(r"dash/latent\.html#\d+", u) for u in urls.values())
  dom = dump_dom(str(tmp_path / "dash/latent.html"), tmp_path, "#5")
  assert 'id="latent-5"' in dom and 'id="latent-4"' in dom     # forwarded to page 1


# ---------------------------------------------------------------- bad input


def test_bad_input_is_one_line(setup, tmp_path):
  ids, special, scan = setup["ids"], setup["special"], setup["scan"]
  cases = [
      (lambda: dd.logit_effects(setup["W_dec"], setup["W_U"][:-1]), "same D"),
      (lambda: dd.logit_effects(setup["W_dec"], setup["W_U"], k=V + 1), "k="),
      (lambda: dd.decoder_neighbours(setup["W_dec"], k=F), "k="),
      (lambda: dd.latent_records(scan, ids=ids, special=special, decode=decode,
                                 window=(-1, 2)), "window"),
      (lambda: dd.latent_records(scan, ids=ids, special=special, decode=decode,
                                 window=(T, 0)), "row length"),
      (lambda: dd.latent_records({**scan, "top_rows": scan["top_rows"][:, :2]}, ids=ids,
                                 special=special, decode=decode), "top_rows"),
      (lambda: dd.latent_records({k: v for k, v in scan.items() if k != "max"}, ids=ids,
                                 special=special, decode=decode), "'max'"),
      (lambda: dd.latent_records(scan, ids=ids, special=special[:, :-1], decode=decode),
       "special"),
      (lambda: dd.latent_records(scan, ids=ids, special=special, decode=decode,
                                 logits={"top_ids": []}), "logits"),
      (lambda: dd.neuronpedia_batches(setup["recs"], model_id="m", layer=0, sae_set="s",
                                      batch_size=0), "batch_size"),
      (lambda: dashboards.write_dashboards([], str(tmp_path / "x"), title="t"), "empty"),
      (lambda: dashboards.write_dashboards(setup["recs"], str(tmp_path / "x"), title="t",
                                           per_page=0), "per_page"),
  ]
  for fn, match in cases:
    with pytest.raises(ConfigError, match=re.escape(match)) as e:
      fn()
    assert "\n" not in str(e.value)
