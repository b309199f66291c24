"""Corpora and packing.

References: Python's own pydoc_data.topics and stdlib sources (the default corpus must
reproduce them verbatim), and HF tokenizers' own encodings (packing must keep every
document's token sequence intact, in order, with the tokenizer's special tokens around
each row).
"""

import json
import os

import numpy as np
import pytest
import transformers

from jaxcode.data import corpus
from jaxcode.data.corpus import CODE, PROSE, Document, pack
from jaxcode.errors import ConfigError

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "lm")


@pytest.fixture(scope="module")
def bert_tok():
  return transformers.AutoTokenizer.from_pretrained(os.path.join(FIX, "bert"))


@pytest.fixture(scope="module")
def gpt2_tok():
  return transformers.AutoTokenizer.from_pretrained(os.path.join(FIX, "gpt2"))


def test_default_corpus_is_python_docs_and_code_deterministic():
  from pydoc_data import topics
  a, b = corpus.default_corpus(4), corpus.default_corpus(4)
  assert a == b
  assert [d.source for d in a] == [PROSE] * 4 + [CODE] * 4
  assert len({d.id for d in a}) == 8
  first = a[0]
  assert first.id.startswith("pydoc:") and first.text == topics.topics[first.id[6:]].strip()
  code = a[4]
  path = os.path.join(__import__("sysconfig").get_paths()["stdlib"], code.id[5:])
  assert code.text == open(path, encoding="utf-8").read().strip()
  doc = next(corpus.docstring_documents())
  assert doc.id.startswith("docstring:") and doc.source == PROSE and len(doc.text) >= 200


def test_text_and_jsonl_corpora(tmp_path):
  (tmp_path / "b.txt").write_text("second file")
  (tmp_path / "a.txt").write_text("first file\n")
  (tmp_path / "empty.txt").write_text("  \n")
  docs = corpus.load_corpus(str(tmp_path))
  assert [d.text for d in docs] == ["first file", "second file"]
  p = tmp_path / "c.jsonl"
  p.write_text("\n".join(json.dumps(o) for o in [
      {"text": "alpha", "id": "x1", "kind": "code"}, {"text": ""}, {"text": "beta"}]))
  docs = corpus.jsonl_documents(str(p), id_field="id", source_field="kind")
  assert [(d.id, d.source, d.text) for d in docs] == [("x1", "code", "alpha"),
                                                      ("c.jsonl:3", "text", "beta")]


def test_bad_corpora(tmp_path):
  (tmp_path / "e.txt").write_text("")
  with pytest.raises(ConfigError, match="no non-empty documents"):
    corpus.load_corpus(str(tmp_path / "e.txt"))
  (tmp_path / "e.jsonl").write_text(json.dumps({"text": " "}) + "\n")
  with pytest.raises(ConfigError, match="no non-empty documents"):
    corpus.load_corpus(str(tmp_path / "e.jsonl"))
  (tmp_path / "f.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
  with pytest.raises(ConfigError, match="f.jsonl:1.*'text'"):
    corpus.load_corpus(str(tmp_path / "f.jsonl"))
  with pytest.raises(ConfigError, match="does not exist"):
    corpus.load_corpus(str(tmp_path / "missing.txt"))
  with pytest.raises(ConfigError, match="no non-empty documents"):
    pack([], None, 8)
  with pytest.raises(ConfigError, match="seq_len=2"):
    pack([Document("a", "t", "the model")], transformers.AutoTokenizer.from_pretrained(
        os.path.join(FIX, "bert")), 2)


DOCS = [Document("d0", PROSE, "the model is a tiny random test of attention " * 3),
        Document("d1", CODE, "def return class import"),
        Document("d2", PROSE, "sparse feature in a small layer and the residual stream")]


def test_pack_per_document_rows_bert(bert_tok):
  p = pack(DOCS, bert_tok, seq_len=10)
  cls, sep = bert_tok.cls_token_id, bert_tok.sep_token_id
  assert p.input_ids.shape[1] == 10
  for n in range(len(p.input_ids)):
    L = p.attention_mask[n].sum()
    assert p.input_ids[n, 0] == cls and p.input_ids[n, L - 1] == sep
    assert p.special[n, 0] and p.special[n, L - 1] and p.special[n, L:].all()
    assert len(set(p.doc_index[n][~p.special[n]])) == 1  # one document per row
  for j, d in enumerate(DOCS):
    ref = bert_tok(d.text, add_special_tokens=False)["input_ids"]
    assert list(p.input_ids[p.doc_index == j]) == ref
  assert p.source_of_tokens()[p.doc_index == 1].tolist() == [CODE] * 4
  assert p.n_tokens == sum(len(bert_tok(d.text)["input_ids"]) for d in DOCS) + 2 * (
      len(p.input_ids) - len(DOCS))


def test_pack_concatenated_stream_gpt2(gpt2_tok):
  p = pack(DOCS, gpt2_tok, seq_len=8)
  eos = gpt2_tok.eos_token_id
  stream = p.input_ids[p.attention_mask == 1].tolist()
  ref = []
  for d in DOCS:
    ref += gpt2_tok(d.text, add_special_tokens=False)["input_ids"] + [eos]
  assert stream == ref
  assert (p.attention_mask[:-1] == 1).all()  # only the last row is padded
  assert (p.doc_index[p.special] == -1).all() and (p.input_ids[p.special & (p.attention_mask == 1)] == eos).all()
  assert pack(DOCS, gpt2_tok, seq_len=8, max_sequences=2).input_ids.shape == (2, 8)
