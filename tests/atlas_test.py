"""The atlas end to end on MiniLM (2 blocks, ~500 tokens of the default corpus, a few concept
words): report structure, every number finite, a stop-part-way-and-rerun that reuses the
finished stages, and bad input refused in one line before compute.

The numbers themselves come from estimators and experiments checked in their own tests
against scikit-dimension, scikit-learn, scipy and HF transformers; here we check composition:
that each per-layer number in results.json equals the stage file it came from (the SAE's own
results, the four-properties table) and that the report shows them.
"""

import json
import math
import os
import re
import subprocess
import sys

import pytest

from configs import atlas as atlas_config
from jaxcode.experiments import atlas
from jaxcode.errors import ConfigError
from jaxcode.report import atlas as report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONCEPTS = os.path.join(ROOT, "jaxcode", "resources", "concepts")
# spliced_kl exists for causal LMs only; MiniLM (no LM head) has the embedding score
TABLE_KEYS = [k for k, _ in report.TABLE if k not in ("spliced_kl", "dashboards")] + ["act_slope_r2", "dec_slope_r2"]
# lobe_probe_sigma is None (undefined) when every random-direction probe of its null scores
# the same; with this tiny SAE that happens, so it is checked only where it is a number


def _concept_files(tmp):
  cats = json.load(open(os.path.join(CONCEPTS, "categories.json")))["categories"]
  rels = json.load(open(os.path.join(CONCEPTS, "relations.json")))["relations"]
  small_c = {k: v[:6] for k, v in list(cats.items())[:3]}
  small_r = {k: v[:4] for k, v in list(rels.items())[:2]}
  c, r = os.path.join(tmp, "cats.json"), os.path.join(tmp, "rels.json")
  json.dump({"categories": small_c}, open(c, "w"))
  json.dump({"relations": small_r}, open(r, "w"))
  return c, r


def _config(tmp, **over):
  c = atlas_config.get_config("tiny")
  c.unlock()
  c.four_properties.categories_file, c.four_properties.relations_file = _concept_files(tmp)
  c.four_properties.spectrum.hi = 8
  c.sae_train.steps = 20
  c.sae_train.checkpoint.every = 10
  for k, v in over.items():
    obj = c
    *path, last = k.split(".")
    for p in path:
      obj = obj[p]
    obj[last] = v
  c.lock()
  return c


def _mtimes(wd):
  out = {}
  for d, _, fs in os.walk(wd):
    for f in fs:
      p = os.path.join(d, f)
      out[os.path.relpath(p, wd)] = os.stat(p).st_mtime_ns
  return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """Runs the atlas stopped after the SAE stage, then reruns it to the end, with a workdir
  relative to the current directory, as the README's command gives it."""
  tmp = str(tmp_path_factory.mktemp("atlas"))
  wd = os.path.join(tmp, "run")
  cfg = _config(tmp)
  cwd = os.getcwd()
  os.chdir(tmp)
  try:
    part = atlas.run(cfg, "run", stop_after="sae")
    before = _mtimes(wd)
    res = atlas.run(cfg, "run")
  finally:
    os.chdir(cwd)
  return dict(wd=wd, cfg=cfg, part=part, before=before, after=_mtimes(wd), res=res)


def test_stop_and_rerun_reuses_finished_stages(finished, capsys):
  wd, before, after = finished["wd"], finished["before"], finished["after"]
  assert finished["part"] == {"stopped_after": "sae"}
  done = [p for p in before if p.startswith(("extract", "sae"))]
  assert any(p.startswith("extract/activations/") for p in done)
  assert all(os.path.exists(os.path.join(wd, "sae", f"layer_{l}", "results.json"))
             for l in (0, 1))
  assert not any(p.startswith(("estimates", "four_properties", "neuromfa")) for p in before)
  # nothing the first run finished was rewritten by the second
  assert {p: after[p] for p in done} == {p: before[p] for p in done}
  # a rerun of the finished atlas is a no-op that says where its results are
  capsys.readouterr()
  noop = atlas.run(finished["cfg"], wd)
  assert noop["layers"][1]["twonn"] == finished["res"]["layers"][1]["twonn"]
  assert f"already finished in {wd}" in capsys.readouterr().err
  # killed after its last stage (before finished.json): no stage is recomputed, every stage
  # file keeps its time, results are the same
  os.remove(os.path.join(wd, "finished.json"))
  again = atlas.run(finished["cfg"], wd)
  err = capsys.readouterr().err
  for stage in ("extract", "sae layer 0", "sae layer 1", "estimates layer 0",
                "estimates layer 1", "four properties", "neuromfa", "dashboards layer 0",
                "dashboards layer 1", "evals"):
    assert f"atlas: {stage}: reused" in err
  third = _mtimes(wd)
  stage_files = [p for p in after if p.startswith(atlas.STAGES)]
  assert {p: third[p] for p in stage_files} == {p: after[p] for p in stage_files}
  assert again["layers"][1]["twonn"] == finished["res"]["layers"][1]["twonn"]


def test_half_written_stage_is_redone(finished, tmp_path):
  """An estimates file cut off mid-write (only its temporary exists) is recomputed."""
  import shutil
  wd = str(tmp_path / "copy")
  shutil.copytree(finished["wd"], wd)
  os.remove(os.path.join(wd, "finished.json"))   # killed: the run never finished
  est = os.path.join(wd, "estimates", "layer_1.json")
  want = json.load(open(est))
  os.replace(est, est + ".tmp-999")
  with open(est + ".tmp-999", "a") as f:
    f.write("garbage")
  res = atlas.run(finished["cfg"], wd, stop_after="estimates")
  assert res == {"stopped_after": "estimates"}
  got = json.load(open(est))
  assert got["twonn"] == pytest.approx(want["twonn"], rel=1e-6)
  assert got["sae_orthogonality"] == pytest.approx(want["sae_orthogonality"], rel=1e-6)


def test_results_structure_and_finite(finished):
  wd = finished["wd"]
  res = json.load(open(os.path.join(wd, "results.json")))
  assert res["experiment"] == "atlas" and res["layers_analysed"] == [0, 1]
  assert res["config"]["sae_train"]["steps"] == 20
  nums = list(report.numbers(res))
  assert len(nums) > 100
  assert all(math.isfinite(v) for _, v in nums)
  for row in res["layers"]:
    for k in TABLE_KEYS:
      assert isinstance(row[k], (int, float)) and math.isfinite(row[k]), (row["layer"], k)
      if k != "layer":
        d = res["definitions"][k]
        assert d["definition"] and d["unit"]
    assert set(row["pass"]) == set(report.PROPERTIES)
    assert "spliced_kl" not in row and row["spliced_score"] <= 1.0
    assert 0 < row["sae_l0"] <= finished["cfg"].sae_train.sae.k
    assert 0 <= row["sae_orthogonality"] <= 1 and 0 <= row["lobe_code_prose_separation"] <= 1
    # composed, not recomputed: the numbers equal their stage files'
    sae = json.load(open(os.path.join(wd, "sae", f"layer_{row['layer']}", "results.json")))
    assert row["sae_explained_variance"] == sae["explained_variance"]
    fp = json.load(open(os.path.join(wd, "four_properties", "results.json")))
    fp_row = fp["table"]["template"][row["layer"] + 1]
    assert fp_row["hookpoint"] == row["hookpoint"]
    assert row["abstraction"] == fp_row["abstraction"]
    assert fp_row["l0_sparsity"] is not None     # the SAE reached the four-properties stage
  for k in ("neuromfa_alpha0", "neuromfa_width", "neuromfa_null_alpha0", "neuromfa_null_width"):
    assert math.isfinite(res["neuromfa"][k]) and k in res["definitions"]
  # SAEBench evals (core and sparse probing, the default): the summary's numbers are the
  # SAEBench files' (composed, not recomputed)
  ev = res["evals"]
  assert ev["evals"] == ["core", "sparse_probing"]
  for l in (0, 1):
    core = json.load(open(os.path.join(wd, ev["files"][str(l)]["core"])))
    got = ev["summary"][f"jaxcode/layer_{l}"]
    assert got["explained_variance"] == core["eval_result_metrics"][
        "reconstruction_quality"]["explained_variance"]
    probe = json.load(open(os.path.join(wd, ev["files"][str(l)]["sparse_probing"])))
    assert 0 <= got["sae_top_1_test_accuracy"] <= 1
    assert probe["eval_type_id"] == "sparse_probing"


def test_report_html_is_self_contained(finished):
  wd = finished["wd"]
  page = open(os.path.join(wd, "report.html"), encoding="utf-8").read()
  res = json.load(open(os.path.join(wd, "results.json")))
  figs = sorted(os.listdir(os.path.join(wd, "figures")))
  assert figs == sorted(["dimension_sae.png", "four_properties.png", "spectra_entropy.png",
                         "lobes.png", "neuromfa.png"])
  assert page.count('src="data:image/png;base64,') == len(figs)
  assert "http://" not in page and "https://" not in page
  assert "What the numbers do and do not support" in page
  assert page.count("<tr>") >= 1 + len(res["layers"])
  assert report._fmt(res["layers"][0]["twonn"]) in page
  for row in res["layers"]:    # every layer links to its latents' dashboards
    link = f"dashboards/layer_{row['layer']}/index.html"
    assert row["dashboards"] == link and f'href="{link}"' in page
    index = open(os.path.join(wd, link), encoding="utf-8").read()
    assert "latents/page_0.html" in index or "latent-row" in index
  # every layer's lobes page, linked from the table, lists each active latent once per
  # clustering, each linking to its dashboard section through the forwarder
  for row in res["layers"]:
    rel = f"lobes/layer_{row['layer']}.html"
    assert f'href="{rel}"' in page
    lobes_html = open(os.path.join(wd, rel), encoding="utf-8").read()
    active = sorted(row["lobes"]["clusters"]["active"])
    head = f'{row["lobe_affinity"]}/{row["lobe_clusters"]}'
    shown = re.findall(rf'class="member" data-clustering="{re.escape(head)}" '
                       r'href="\.\./dashboards/layer_\d+/latent\.html#(\d+)"', lobes_html)
    assert sorted(int(i) for i in shown) == active and active
  assert f'href="{res["evals"]["page"]}"' in page        # the evals' comparison page
  evals_page = open(os.path.join(wd, res["evals"]["page"]), encoding="utf-8").read()
  assert "jaxcode/layer_0" in evals_page and "jaxcode/layer_1" in evals_page


def _refused(cfg, wd, match):
  with pytest.raises(ConfigError, match=match) as e:
    atlas.run(cfg, wd)
  assert "\n" not in str(e.value)
  assert not os.path.exists(os.path.join(wd, "extract"))


def test_bad_input_before_compute(tmp_path):
  tmp = str(tmp_path)
  _refused(_config(tmp, model=os.path.join(tmp, "no_such_model")), str(tmp_path / "a"),
           "does not exist")
  _refused(_config(tmp, layers=(0, 6)), str(tmp_path / "b"), r"layers=\(0, 6\).*0\.\.5")
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  _refused(_config(tmp, **{"extract.corpus": str(empty)}), str(tmp_path / "c"),
           "no non-empty documents")
  _refused(_config(tmp, **{"evals.names": "core,ravel"}), str(tmp_path / "e"),
           "'ravel' is not offered offline")
  _refused(_config(tmp, **{"evals.names": "absorption"}), str(tmp_path / "f"),
           "needs a causal LM with an LM head")
  _refused(_config(tmp, **{"evals.core_rows": 0}), str(tmp_path / "g"), "evals.core_rows=0")
  wd = tmp_path / "d"      # a workdir holding another model's atlas
  wd.mkdir()
  other = _config(tmp).to_dict()
  other["model"] = "gpt2"
  (wd / "config.json").write_text(json.dumps(other))
  _refused(_config(tmp), str(wd), "holds a run with model='gpt2', this command has 'minilm'")


def test_launch_one_line_error(tmp_path):
  r = subprocess.run([sys.executable, "-m", "launch.atlas", "--config=configs/atlas.py:tiny",
                      f"--workdir={tmp_path / 'w'}", "--config.model=/no/such/ckpt"],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2
  assert r.stderr.strip().splitlines() == [
      "error: model directory '/no/such/ckpt' does not exist"]
