"""Activation cache: contents, special-token dropping, resumption and corruption recovery.

Reference: the cache must hold what PretrainedLM.apply returns at the kept positions, to
float32 rounding, since the cache's forwards run other batch shapes (that forward is itself
checked against HF transformers' PyTorch outputs in lm_parity_test.py), and the token ids
the HF tokenizer produced; an interrupted and damaged run, once rerun, must be
byte-identical to an uninterrupted one.
"""

import os

import numpy as np
import pytest

from jaxcode.data.activations import ActivationCache, extract
from jaxcode.data.corpus import CODE, PROSE, Document, pack
from jaxcode.models.lm import load_pretrained
from jaxcode.errors import ConfigError

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "lm")
DOCS = [Document("d0", PROSE, "the model is a tiny random test of attention and the residual stream " * 2),
        Document("d1", CODE, "def return class import data value function"),
        Document("d2", PROSE, "sparse feature in a small layer " * 3)]
HOOKS = ["blocks.0.resid_post", "blocks.1.mlp_hidden"]


@pytest.fixture(scope="module")
def gpt2():
  return load_pretrained(os.path.join(FIX, "gpt2"))


@pytest.fixture(scope="module")
def bert():
  return load_pretrained(os.path.join(FIX, "bert"))


def run(lm, packed, d, **kw):
  kw = dict(dict(batch_size=2, rows_per_chunk=4, progress=False), **kw)
  return extract(lm, packed, HOOKS, str(d), **kw)


def test_cache_holds_forward_activations_without_special_tokens(gpt2, tmp_path):
  p = pack(DOCS, gpt2.tokenizer, seq_len=8)
  info = run(gpt2, p, tmp_path)
  assert info["complete"] and info["kept"] == []
  cache = ActivationCache.open(str(tmp_path), hookpoints=HOOKS)
  keep = p.attention_mask.astype(bool) & ~p.special
  assert cache.n_tokens == keep.sum() == info["tokens"]
  ref = gpt2.apply(p.input_ids, p.attention_mask, HOOKS)
  rng = np.random.default_rng(0)
  idx = rng.permutation(cache.n_tokens)[:25]
  # The cache was filled batch_size=2 rows at a time, the reference is one forward of the
  # whole batch: XLA may pick other kernels for the other shape (e.g. on AVX-512/AMX CPUs),
  # so the float32 values agree to rounding (~1e-6 seen), not bit for bit. 1e-5 is far below
  # the O(1) gap to another position's, another hookpoint's or a special token's activation.
  for h in HOOKS:
    np.testing.assert_allclose(cache.get(h, idx), np.asarray(ref[h])[keep][idx], rtol=1e-5,
                               atol=1e-5, err_msg=h)
  t = cache.token_info(idx)
  np.testing.assert_array_equal(t["token_ids"], p.input_ids[keep][idx])
  np.testing.assert_array_equal(t["doc_index"], p.doc_index[keep][idx])
  assert gpt2.tokenizer.eos_token_id not in cache.token_info(np.arange(cache.n_tokens))["token_ids"]
  assert cache.verify() == []
  r = cache.process_range(1, 2)
  assert r.start == cache.n_tokens // 2 and r.stop == cache.n_tokens


def test_bert_cls_sep_pad_dropped_and_bfloat16(bert, tmp_path):
  p = pack(DOCS, bert.tokenizer, seq_len=8)
  run(bert, p, tmp_path, dtype="bfloat16")
  cache = ActivationCache.open(str(tmp_path))
  ids = cache.token_info(np.arange(cache.n_tokens))["token_ids"]
  specials = {bert.tokenizer.cls_token_id, bert.tokenizer.sep_token_id, bert.tokenizer.pad_token_id}
  assert not specials & set(ids.tolist())
  assert len(ids) == sum(len(bert.tokenizer(d.text, add_special_tokens=False)["input_ids"])
                         for d in DOCS)
  a = cache.get(HOOKS[1], np.arange(cache.n_tokens))
  assert a.dtype.name == "bfloat16"
  keep = p.attention_mask.astype(bool) & ~p.special
  ref = np.asarray(bert.apply(p.input_ids, p.attention_mask, HOOKS)[HOOKS[1]])[keep]
  np.testing.assert_allclose(a.astype(np.float32), ref, rtol=1e-2, atol=1e-2)


def test_interrupted_and_corrupted_run_resumes_to_identical_cache(gpt2, tmp_path):
  p = pack(DOCS, gpt2.tokenizer, seq_len=6)
  full, part = tmp_path / "full", tmp_path / "part"
  run(gpt2, p, full)
  n_chunks = len(ActivationCache.open(str(full)).chunks)
  assert n_chunks >= 3
  info = run(gpt2, p, part, max_new_chunks=2)  # "killed" after two chunks
  assert info["computed"] == [0, 1] and not info["complete"]
  with pytest.raises(ConfigError, match="incomplete"):
    ActivationCache.open(str(part))
  c1 = part / "blocks.1.mlp_hidden" / "chunk_00001.npy"
  c1.write_bytes(c1.read_bytes()[:-7])  # truncated
  c0 = part / "blocks.0.resid_post" / "chunk_00000.npy"
  mtime0 = os.stat(c0).st_mtime_ns
  info = run(gpt2, p, part)
  assert info["kept"] == [0] and info["computed"] == list(range(1, n_chunks))
  assert os.stat(c0).st_mtime_ns == mtime0
  a, b = ActivationCache.open(str(full)), ActivationCache.open(str(part))
  assert [e["sha256"] for e in a.chunks] == [e["sha256"] for e in b.chunks]
  assert run(gpt2, p, part)["computed"] == []


def test_cache_mismatch_errors(gpt2, tmp_path):
  p = pack(DOCS, gpt2.tokenizer, seq_len=8)
  run(gpt2, p, tmp_path)
  with pytest.raises(ConfigError, match="hookpoints"):
    extract(gpt2, p, ["blocks.0.attn_out"], str(tmp_path), batch_size=2, rows_per_chunk=4,
            progress=False)
  with pytest.raises(ConfigError, match="corpus_fingerprint"):
    run(gpt2, pack(DOCS[:2], gpt2.tokenizer, seq_len=8), tmp_path)
  with pytest.raises(ConfigError, match="holds model"):
    ActivationCache.open(str(tmp_path), model="EleutherAI/pythia-70m")
  with pytest.raises(ConfigError, match="no hookpoint 'final'"):
    ActivationCache.open(str(tmp_path), hookpoints=["final"])
  with pytest.raises(ConfigError, match="blocks.5"):
    extract(gpt2, p, ["blocks.5.resid_post"], str(tmp_path / "x"), progress=False)
  assert not (tmp_path / "x").exists()  # failed before writing anything
