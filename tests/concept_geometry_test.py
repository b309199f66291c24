"""Concept geometry (crystals, lobes, galaxy) on planted structure.

Ground truths we did not write: planted parallelograms and a planted distractor direction
(crystals); planted co-occurrence groups that are or are not geometric clusters (lobes);
co-occurrence counts against a NumPy matrix product and the affinities against
scipy.spatial.distance and numpy.corrcoef (phi is Pearson's r of binary variables);
power-law slopes against scipy.stats.linregress; the clustering-entropy artefact on a
Gaussian null (geometry notes B.3: with bootstrap-with-replacement duplicates the notebook
recipe is large and positive; without it negative; the corrected estimate ~0).
"""

import shutil

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance

from jaxcode.analysis import concept_geometry as cg
from jaxcode.errors import ConfigError


# ------------------------------------------------------------------ crystals

def _planted_crystals(seed=0, n_rel=4, n_pairs=10, d=20, amp=4.0):
  rng = np.random.default_rng(seed)
  offsets = rng.standard_normal((n_rel, d))
  e = rng.standard_normal(d)
  e /= np.linalg.norm(e)
  labels = np.repeat(np.arange(n_rel), n_pairs)
  lengths = rng.integers(-3, 4, size=labels.size).astype(float)
  diffs = offsets[labels] + amp * lengths[:, None] * e + 0.05 * rng.standard_normal(
      (labels.size, d))
  return diffs, labels, lengths


def test_crystals_recover_planted_parallelograms_after_lda():
  diffs, labels, lengths = _planted_crystals()
  out = cg.crystals(diffs, labels, lengths)
  assert out["silhouette_before"] < 0.2
  assert out["silhouette_after"][3] > 0.9
  assert out["parallelogram_before"]["parallelogram_error"] > 1.0
  assert out["parallelogram_after"]["parallelogram_error"] < 0.2
  assert out["parallelogram_after"]["trapezoid_cos"] > 0.95
  assert abs(out["distractor"]["correlation"]) > 0.95
  with pytest.raises(ConfigError, match="LDA dims"):
    cg.lda_silhouettes(diffs, labels, dims=[4])


def test_difference_vectors_unknown_word():
  emb = {"a": np.ones(3), "b": np.zeros(3)}
  d, lab, names, _ = cg.difference_vectors(emb, {"r1": [("a", "b")], "r2": [("b", "a")]})
  np.testing.assert_allclose(d, [[1, 1, 1], [-1, -1, -1]])
  with pytest.raises(ConfigError, match="'zz'"):
    cg.difference_vectors(emb, {"r1": [("a", "zz")], "r2": [("b", "a")]})


# ------------------------------------------------------------------ lobes

def _planted_codes(seed, m=90, groups=2, n_rows=60, block_len=4, blocks_per_row=2):
  rng = np.random.default_rng(seed)
  group = rng.integers(0, groups, size=m)
  n_blocks = n_rows * blocks_per_row
  topic = rng.integers(0, groups, size=n_blocks)
  p = np.where(group[None, :] == topic[:, None], 0.6, 0.03)
  fired = rng.random((n_blocks, m)) < p
  codes = np.zeros((n_blocks, block_len, m), np.float32)
  pos = rng.integers(0, block_len, size=(n_blocks, m))
  bi, fi = np.nonzero(fired)
  codes[bi, pos[bi, fi], fi] = 2.0 * fired[bi, fi]
  codes[:, :, :] += 0.5 * rng.random(codes.shape) * (codes == 0)   # sub-threshold noise
  x = codes.reshape(n_rows, blocks_per_row * block_len, m)
  valid = np.ones(x.shape[:2], bool)
  return x, valid, fired, group, topic


def test_cooccurrence_matches_numpy_and_affinities_match_scipy():
  x, valid, fired, _, _ = _planted_codes(0, m=12, n_rows=9)
  valid[0, 0] = False          # the first block of row 0 is incomplete: not counted
  c, t, f, rows = cg.cooccurrence(lambda z: z, x, valid, block_len=4, threshold=1.0,
                                  batch_rows=4)
  b = fired[1:].astype(float)
  np.testing.assert_array_equal(c, b.T @ b)
  assert t == len(b) and rows[0] == 0 and np.array_equal(f, fired[1:])
  a = cg.affinities(c, t)
  fb = fired[1:]
  i, j = 2, 5
  u, v = fb[:, i], fb[:, j]
  np.testing.assert_allclose(a["jaccard"][i, j], 1 - distance.jaccard(u, v), atol=1e-6)
  np.testing.assert_allclose(a["dice"][i, j], 1 - distance.dice(u, v), atol=1e-6)
  np.testing.assert_allclose(a["smc"][i, j], 1 - distance.hamming(u, v), atol=1e-6)
  np.testing.assert_allclose(a["phi"][i, j], np.corrcoef(u, v)[0, 1] + 1, atol=1e-5)
  np.testing.assert_allclose(a["overlap"][i, j], np.sum(u & v) / min(u.sum(), v.sum()),
                             atol=1e-6)
  with pytest.raises(ConfigError, match="block_len=40 is longer"):
    cg.cooccurrence(lambda z: z, x, valid, block_len=40)


def _lobe_stats(geometric: bool, seed=1):
  x, valid, _, group, topic = _planted_codes(seed)
  c, t, fired, rows = cg.cooccurrence(lambda z: z, x, valid, block_len=4, threshold=1.0)
  rng = np.random.default_rng(seed + 100)
  d = 16
  if geometric:
    centres = 3 * rng.standard_normal((2, d))
    w = centres[group] + rng.standard_normal((len(group), d))
  else:
    w = rng.standard_normal((len(group), d))
  src = np.where(topic == 0, "code", "prose")   # every block is complete, in order
  return cg.lobes(c, t, w, cluster_counts=(2,), names=("phi", "jaccard"), n_null_ami=50,
                  n_null_probe=10, fired_BM=fired, block_source_B=src)


def test_lobes_separate_planted_geometric_groups_from_control():
  planted = _lobe_stats(True)["affinities"]["phi"][2]
  control = _lobe_stats(False)["affinities"]["phi"][2]
  assert planted["ami"]["ami"] > 0.8 and planted["ami"]["sigma"] > 20
  assert abs(control["ami"]["sigma"]) < 4
  assert planted["probe"]["balanced_accuracy"] > 0.9 and planted["probe"]["sigma"] > 4
  assert control["probe"]["balanced_accuracy"] < 0.8
  # the two lobes win opposite sources
  s = planted["sources"]
  assert s["code"]["winner"] != s["prose"]["winner"]
  assert max(s["code"]["share"]) > 0.9


def test_lobes_fewer_features_than_clusters():
  c = np.diag([3.0, 2.0, 0.0, 1.0])
  with pytest.raises(ConfigError, match="3 co-occurring features are fewer than the 8"):
    cg.lobes(c, 5, np.ones((4, 2)), cluster_counts=(2, 8))


# ------------------------------------------------------------------ the lobes stage

class _Cache:
  """An ActivationCache stand-in over dense arrays: the tokens of each row that are not
  special, in row-major order, as jaxcode.data.activations.extract keeps them."""

  def __init__(self, x_RTD, doc_index_RT, special_RT, sources):
    rows, cols = np.nonzero(~special_RT)
    self.x_ND, self.rows, self.cols = x_RTD[rows, cols], rows, cols
    self.doc_N = doc_index_RT[rows, cols]
    self.n_tokens = len(rows)
    self.manifest = {"n_rows": x_RTD.shape[0], "sources": list(sources)}

  def width(self, hookpoint):
    return self.x_ND.shape[1]

  def get(self, hookpoint, idx):
    return self.x_ND[np.asarray(idx)]

  def token_info(self, idx):
    idx = np.asarray(idx)
    return {"row": self.rows[idx], "col": self.cols[idx], "doc_index": self.doc_N[idx]}


def test_row_sources_follow_packed_rule():
  """The cache's row -> last document -> source equals corpus.Packed.source_of_rows."""
  from jaxcode.data.corpus import Packed
  from jaxcode.pipeline import lobes
  doc = np.array([[-1, 0, 0, 1, -1], [-1, 1, 1, 2, -1], [-1, 3, -1, -1, -1]], np.int32)
  special = doc < 0
  packed = Packed(np.zeros_like(doc), np.ones_like(doc), doc, special, list("abcd"),
                  ["prose", "code", "prose", "code"])
  cache = _Cache(np.zeros(doc.shape + (2,), np.float32), doc, special, packed.sources)
  assert list(lobes.row_sources(cache)) == list(packed.source_of_rows()) == [
      "code", "prose", "code"]


def _planted_cache(seed=1, n_rows=120, block_len=4):
  """Planted codes (one block per row, its topic the row's source) behind a [CLS] column,
  and an identity-encoder SAE whose decoder rows cluster by co-occurrence group."""
  from jaxcode.models.sae_io import ExternalSAE
  x, _, _, group, topic = _planted_codes(seed, n_rows=n_rows, block_len=block_len,
                                         blocks_per_row=1)
  r, s, m = x.shape
  x_RTD = np.concatenate([np.zeros((r, 1, m), np.float32), x], axis=1)
  doc = np.concatenate([np.full((r, 1), -1), np.tile(np.arange(r)[:, None], (1, s))], axis=1)
  src = ["code" if t == 0 else "prose" for t in topic]
  rng = np.random.default_rng(seed + 100)
  w_dec = (3 * rng.standard_normal((2, m)))[group] + rng.standard_normal((m, m))
  sae = ExternalSAE("standard", np.eye(m, dtype=np.float32), np.zeros(m, np.float32),
                    w_dec.astype(np.float32), np.zeros(m, np.float32))
  return _Cache(x_RTD, doc.astype(np.int32), doc < 0, src), sae, s


def test_lobes_stage_matches_analysis_and_is_reused(tmp_path):
  from ml_collections import ConfigDict
  from jaxcode.pipeline import lobes
  cache, sae, body = _planted_cache()
  block = ConfigDict(dict(block_len=4, threshold=1.0, batch_rows=8, cluster_counts=(2,),
                          affinities=("phi",), n_null_ami=20, n_null_probe=3))
  out = lobes.run(str(tmp_path / "lobes"), cache, "h", sae, 1, body, block, seed=0)
  # the same numbers straight from the analysis functions
  x, valid = lobes.dense_layout(cache, "h", cache.manifest["n_rows"], body, 1)
  c, t, fired, rows = cg.cooccurrence(lambda z: z, x, valid, 4, 1.0)
  ref = cg.lobes(c, t, sae.W_dec, (2,), ("phi",), 20, 3, fired,
                 np.asarray(cache.manifest["sources"])[rows], seed=42)["affinities"]["phi"][2]
  rec = out["affinities"]["phi"]["2"]
  assert out["blocks"] == t == 120 and rec["ami"] == ref["ami"]["ami"]
  assert rec["balanced_accuracy"] == ref["probe"]["balanced_accuracy"]
  assert rec["sources"] == ref["sources"] and rec["code_prose_separation"] > 0.8
  assert len(out["clusters"]["labels"]["phi"]["2"]) == out["n_active"]
  getter, cache.get = cache.get, None    # complete: reused, nothing read from the cache
  assert lobes.run(str(tmp_path / "lobes"), cache, "h", sae, 1, body, block, seed=0) == out
  with pytest.raises(ConfigError, match="lobes.block_len=9 is longer"):
    lobes.lobe_statistics(cache, "h", sae, 1, body, ConfigDict(dict(block, block_len=9)), 0)
  # cluster counts not below the active features are dropped; none left: skipped, with why
  cache.get = getter
  more = lobes.lobe_statistics(cache, "h", sae, 1, body, ConfigDict(
      dict(block, cluster_counts=(2, out["n_active"]))), 0)
  assert more["cluster_counts"] == [2] and more["affinities"]["phi"]["2"] == rec
  none = lobes.lobe_statistics(cache, "h", sae, 1, body, ConfigDict(dict(block, threshold=1e9)), 0)
  assert none["n_active"] == 0 and none["affinities"] == {} and "clusters" not in none
  assert "0 features fire above lobes.threshold=1000000000.0" in none["skipped"]


# ------------------------------------------------------------------ galaxy

def test_spectrum_fit_matches_linregress():
  rng = np.random.default_rng(0)
  d = 60
  x = rng.standard_normal((3000, d)) * np.arange(1, d + 1) ** -0.5
  fit = cg.spectrum_fit(x, 5, 40)
  lam = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1]
  ref = stats.linregress(np.log10(np.arange(5, 41)), np.log10(lam[4:40]))
  np.testing.assert_allclose(fit["slope"], ref.slope, rtol=1e-4)
  np.testing.assert_allclose(fit["log_volume"], np.sum(np.log(lam[4:40])), rtol=1e-4)
  assert abs(fit["slope"] + 1.0) < 0.15


def test_clustering_entropy_artefact_on_gaussian_null():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1200, 60))
  boot = cg.notebook_clustering_entropy(x, n_sub=1000, d=30, n_boot=4, replace=True)
  plain = cg.notebook_clustering_entropy(x, n_sub=1000, d=30, replace=False)
  corr = cg.corrected_clustering_entropy(x, n_sub=1000, d=30, n_boot=3)
  assert 0.55 < boot["zero_distance_fraction"] < 0.70
  assert boot["value"] > 50                 # the duplicate artefact
  assert plain["value"] < 0 and plain["zero_distance_fraction"] == 0
  assert abs(corr["value"]) < 3             # Gaussian null: no clustering
  # a clustered cloud (tight blobs) is clearly positive after the correction
  centres = 4 * rng.standard_normal((20, 60))
  blobs = centres[rng.integers(0, 20, 1200)] + 0.3 * rng.standard_normal((1200, 60))
  assert cg.corrected_clustering_entropy(blobs, n_sub=1000, d=30, n_boot=2)["value"] > 20


# ------------------------------------------------------------------ experiment: bad input

@pytest.fixture(scope="module")
def minilm():
  from jaxcode.models.lm import load_pretrained, minilm_path
  return load_pretrained(minilm_path())


def _run_tiny(tmp_path, monkeypatch, lm, workdir="w", **overrides):
  from configs import concept_geometry as cfgs
  from jaxcode.experiments import concept_geometry as exp
  monkeypatch.setattr(exp, "load_lm", lambda config: lm)
  c = cfgs.get_config("tiny")
  c.unlock()
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  c.lock()
  return exp.run(c, str(tmp_path / workdir))


def test_experiment_sae_d_in_mismatch(tmp_path, monkeypatch, minilm):
  """An exported SAE of width 8 applied to MiniLM's 384-wide residual stream."""
  from safetensors.numpy import save_file
  d = tmp_path / "sae"
  d.mkdir()
  rng = np.random.default_rng(0)
  save_file({"W_enc": rng.standard_normal((8, 16)).astype(np.float32),
             "b_enc": np.zeros(16, np.float32),
             "W_dec": rng.standard_normal((16, 8)).astype(np.float32),
             "b_dec": np.zeros(8, np.float32)}, str(d / "sae_weights.safetensors"))
  (d / "cfg.json").write_text('{"architecture": "standard", "d_in": 8, "d_sae": 16}')
  with pytest.raises(ConfigError, match="dictionary d_in=8 does not match hookpoint blocks.1.resid_post of width 384"):
    _run_tiny(tmp_path, monkeypatch, minilm, sae_paths=("", str(d)))   # layer 0 trained


def test_experiment_sae_paths_one_per_layer(tmp_path, monkeypatch, minilm):
  """sae_paths: one path per analysed layer in the order of `layers`, '' for a trained one."""
  with pytest.raises(ConfigError, match="sae_paths has 1 entries: expected one per layer "
                                        "\\(2: \\[0, 1\\]\\)"):
    _run_tiny(tmp_path, monkeypatch, minilm, sae_paths=("",))
  with pytest.raises(ConfigError, match="sae_paths\\[1\\]='/nonexistent' does not exist"):
    _run_tiny(tmp_path, monkeypatch, minilm, sae_paths=("", "/nonexistent"))


def test_experiment_block_longer_than_sequences(tmp_path, monkeypatch, minilm):
  # seq_len 66 holds 64 text tokens between [CLS] and [SEP]
  with pytest.raises(ConfigError, match="block_len=65 is longer than the sequences \\(64"):
    _run_tiny(tmp_path, monkeypatch, minilm, **{"lobes.block_len": 65})


def test_experiment_unknown_words(tmp_path, monkeypatch, minilm):
  p = tmp_path / "pairs.json"
  p.write_text('{"r1": [["king", "queen"], ["man", "\\u2603"]], "r2": [["a", "b"], ["c", "d"]]}')
  with pytest.raises(ConfigError, match="word '\u2603' .* unknown to the tokenizer"):
    _run_tiny(tmp_path, monkeypatch, minilm, **{"crystals.pairs_file": str(p)})


# ------------------------------------------------------------------ experiment: end to end

def test_experiment_tiny_end_to_end_and_resume(tmp_path, monkeypatch, minilm, capfd):
  """The whole experiment on MiniLM (tiny variant): cache, two TopK SAEs, crystals, lobes,
  galaxy, figures; then the same command again resumes and reproduces every number.

  The checks are properties the paper and the geometry notes predict, not stored values:
  LDA on the relation labels sharpens the crystals (higher silhouette, smaller
  parallelogram error); the lobes' 2-way split tracks the prose/code source of the blocks
  beyond a label-permutation null; the notebook's bootstrap-with-replacement entropy
  carries the duplicate artefact (notes B.3: about 1 - 1/e of points at distance 0).
  """
  import json
  import os

  _run_tiny(tmp_path, monkeypatch, minilm)
  results = tmp_path / "w" / "results.json"
  out = json.loads(results.read_text())
  for f in out["figures"]:
    assert os.path.getsize(f) > 1000 and open(f, "rb").read(4) == b"\x89PNG"

  cr = out["crystals"]
  assert cr["n_relations"] >= 6 and cr["pairs"]["kept"] == cr["n_pairs"]
  assert cr["silhouette_after"][str(cr["best_dim"])] > cr["silhouette_before"] + 0.2
  assert (cr["parallelogram_after"]["parallelogram_error"]
          < cr["parallelogram_before"]["parallelogram_error"])

  phi2 = out["lobes"]["1"]["affinities"]["phi"]["2"]
  assert phi2["ami"] > phi2["ami_null_mean"] + 3 * phi2["ami_null_sd"]
  assert phi2["sources"]["code"]["winner"] != phi2["sources"]["prose"]["winner"]

  for layer in ("0", "1"):
    g = out["galaxy"][layer]
    assert g["decoder"]["r2"] > 0.9 and g["activations"]["slope"] < 0
    boot = g["clustering_entropy_notebook"]
    assert 0.5 < boot["zero_distance_fraction"] < 0.75
    assert boot["value"] > g["clustering_entropy_notebook_no_bootstrap"]["value"] + 20
    assert out["sae"][layer]["l0"] == 4.0 and out["sae"][layer]["explained_variance"] > 0.2

  # the same command again: the cache is complete and both SAEs resume at their last step
  capfd.readouterr()
  _run_tiny(tmp_path, monkeypatch, minilm)
  assert "[train] step" not in capfd.readouterr().err    # no SAE step was run again
  again = json.loads(results.read_text())
  for key in ("sae", "crystals", "lobes", "galaxy"):
    assert again[key] == out[key], key

  # an SAE whose codes never pass lobes.threshold: the lobes stage skips the layer with its
  # reason and the run still finishes (cache and SAEs reused from a copy of the workdir)
  shutil.copytree(tmp_path / "w", tmp_path / "w_skip")
  shutil.rmtree(tmp_path / "w_skip" / "lobes")
  (tmp_path / "w_skip" / "config.json").unlink()    # the run is started over with a new config
  _run_tiny(tmp_path, monkeypatch, minilm, workdir="w_skip", **{"lobes.threshold": 1e9})
  skip = json.loads((tmp_path / "w_skip" / "results.json").read_text())
  assert "0 features fire above lobes.threshold=1000000000.0" in skip["lobes"]["1"]["skipped"]
  assert skip["lobes"]["1"]["affinities"] == {}
  assert "lobes at layer 1 skipped" in capfd.readouterr().err
  assert not any("lobes_" in os.path.basename(f) for f in skip["figures"])
  assert skip["crystals"] == out["crystals"] and skip["galaxy"] == out["galaxy"]
