"""The spliced-evaluation stage: each layer's exported dictionary spliced into the real model.

`run(lm, block, extract_block, paths, folder)` packs the extraction's corpus, takes
`block.rows` rows that the activation cache did NOT see (held out; evenly spaced over the
rest of the packed corpus), and for each layer runs jaxcode.analysis.spliced_eval with the
SAE exported at paths[layer] (SAELens layout, raw units) replacing `blocks.<layer>.resid_post`
at every non-special position. For a causal LM (Gemma, Llama, Qwen, GPT-2, Pythia) that gives
next-token cross-entropy clean / spliced / zero-ablated, CE loss recovered and the KL
divergence to the clean next-token distribution through the real LM head; for an encoder
without a head (MiniLM) the sentence-embedding scores (see spliced_eval's docstring).

folder/results.json (the stage's final file) holds one entry per layer under `layers`.
The block's fields:

  enabled      run the stage at all
  rows         held-out packed rows evaluated per layer
  batch_size   rows per forward (each forward runs clean, spliced and zero-ablated)
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from jaxcode.errors import ConfigError, positive_int
from jaxcode.pipeline import stage


def validate(block) -> None:
  positive_int("spliced.rows", block.rows)
  positive_int("spliced.batch_size", block.batch_size)


def held_out_rows(extract_block, tokenizer, n_rows: int):
  """(n_rows packed rows evenly spaced over those the cache did not use, True), or over all
  rows with False when the cache used every row."""
  from jaxcode.data import corpus as corpus_lib
  from jaxcode.pipeline import cache as cache_lib
  packed = cache_lib.pack_corpus(extract_block, tokenizer)
  N = packed.input_ids.shape[0]
  free = np.setdiff1d(np.arange(N), cache_lib.cached_rows(extract_block, packed))
  pool = free if free.size else np.arange(N)
  return packed.take_rows(pool[corpus_lib.evenly_spaced(pool.size, n_rows)]), bool(free.size)


def _reconstructor(path: str):
  from jaxcode.models import sae_io
  sae = sae_io.load_saelens(path)
  return lambda x: sae_io.decode(sae, sae_io.encode(sae, x))


def _one_layer(lm, rows, layer: int, path: str, block) -> dict:
  from jaxcode.analysis.spliced_eval import spliced_eval
  hook = f"blocks.{layer}.resid_post"
  t0 = time.time()
  res = spliced_eval(lm, rows.input_ids, rows.attention_mask, hook, _reconstructor(path),
                     special=rows.special, batch_size=int(block.batch_size))
  res["seconds"] = time.time() - t0
  return res


def run(lm, block, extract_block, paths: dict, folder: str, log: bool = True) -> dict:
  """The stage (reused when folder/results.json exists); paths: {layer: exported SAE dir}."""
  validate(block)
  missing = [p for p in paths.values() if not os.path.isdir(p)]
  if missing:
    raise ConfigError(f"spliced: exported SAE {missing[0]!r} does not exist: run the sae stage")

  def compute() -> dict:
    rows, held_out = held_out_rows(extract_block, lm.tokenizer, int(block.rows))
    out = {"stage": "spliced", "rows": int(rows.input_ids.shape[0]), "held_out": held_out,
           "tokens": int(rows.attention_mask.sum()), "layers": {}}
    for layer, path in sorted(paths.items()):
      r = out["layers"][str(layer)] = _one_layer(lm, rows, layer, path, block)
      if log:
        score = (f"CE recovered {r['ce_recovered']:.3f}, KL {r['kl_sae']:.3f}"
                 if r["mode"] != "embedding" else
                 f"embedding recovered {r['embedding_recovered']:.3f}")
        print(f"spliced layer {layer}: {score} ({r['seconds']:.0f} s)", file=sys.stderr,
              flush=True)
    return out
  return stage.run_stage("spliced", folder, compute, log=False)
