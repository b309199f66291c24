"""The real Gemma 3 270M and SmolLM2-135M (from their GGUF packages) as language models.

Reference: HF transformers 5.24's PyTorch models loading the same GGUF files (gguf_file=,
float32, eager attention), recorded by tests/make_gguf_fixtures.py in the metadata of
tests/fixtures/gguf/<name>_hf_reference.safetensors: the next-token loss on a prose passage
and the greedy continuation (10 tokens) of three prompts. Our forward must give the same loss
(far below the uniform ln V) and the same greedy tokens.
"""

import json
import math
import os

import numpy as np
import pytest
from safetensors import safe_open

from jaxcode.errors import ConfigError
from jaxcode.models.lm import gguf, load_pretrained

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "gguf")


def _reference(name):
  with safe_open(os.path.join(FIX, f"{name}_hf_reference.safetensors"), "np") as h:
    return h.metadata()


@pytest.fixture(scope="module", params=("gemma3-270m", "smollm2-135m"))
def model(request):
  try:
    gguf.package_path(request.param)
  except ConfigError as e:
    if os.environ.get("CI"):       # CI installs the packages (the README's test command)
      pytest.fail(str(e))
    pytest.skip(str(e))
  return request.param, load_pretrained(request.param), _reference(request.param)


def test_prose_loss_equals_transformers_and_is_far_below_uniform(model):
  name, lm, ref = model
  ids, mask = lm.tokenize([ref["prose"]])
  assert ids.shape[1] == int(ref["prose_tokens"])
  logits = np.asarray(lm.apply(ids, mask, ["logits"])["logits"][0], np.float64)
  logp = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1,
                                keepdims=True)) - logits.max(-1, keepdims=True)
  loss = float(-np.mean(logp[np.arange(ids.shape[1] - 1), ids[0, 1:]]))
  print(name, "prose loss", loss, "HF", ref["prose_loss"], "uniform", math.log(lm.module.vocab))
  assert loss == pytest.approx(float(ref["prose_loss"]), rel=1e-4)
  assert loss < 0.5 * math.log(lm.module.vocab)


def test_greedy_continuations_equal_transformers(model):
  """Ten greedy tokens of each prompt, the prompts batched and right-padded to one shape."""
  name, lm, ref = model
  prompts, want = json.loads(ref["prompts"]), json.loads(ref["greedy_continuations"])
  enc = [lm.tokenizer(p)["input_ids"] for p in prompts]
  T = max(map(len, enc)) + 10
  ids = np.zeros((len(enc), T), np.int32)
  lengths = np.array([len(e) for e in enc])
  for i, e in enumerate(enc):
    ids[i, :len(e)] = e
  for _ in range(10):
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
    logits = np.asarray(lm.apply(ids, mask, ["logits"])["logits"])
    nxt = logits[np.arange(len(enc)), lengths - 1].argmax(-1)
    ids[np.arange(len(enc)), lengths] = nxt
    lengths = lengths + 1
  got = [lm.tokenizer.decode(ids[i, len(e):len(e) + 10]) for i, e in enumerate(enc)]
  print(name, got)
  assert got == want
