"""Benchmark: the feature scan behind the dashboards, against the forward-plus-encode it rides on.

On one model (default the embedded MiniLM) at one hookpoint, with a random ReLU SAE of
`d_sae` latents, over `n_rows` packed rows of the offline corpus:
- the plain pass: the jitted model forward to the hookpoint and the SAE encoder, batch by
  batch (what any scan must at least do): tokens/s;
- the scan (jaxcode.analysis.feature_scan: two passes over the same batches, top-k, counts,
  histograms, co-activation when d_sae <= 4096, interval reservoirs): tokens/s, as a fraction
  of the plain pass's (`scan_over_forward_encode`; the whole scan reads every batch twice, so
  `per_pass_over_forward_encode` = twice that is the cost of the scan's bookkeeping per pass);
- the scan's encoder FLOP rate (2 d_in d_sae per token and pass: the SAE matmuls alone);
- the scan state's bytes (independent of the number of tokens) and the process's peak
  resident memory.
"""

from __future__ import annotations

import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxcode.analysis import feature_scan
from jaxcode.bench import common
from jaxcode.errors import ConfigError
from jaxcode.models import sae_io
from jaxcode.pipeline import cache as cache_lib
from jaxcode.pipeline import dashboards as dash
from jaxcode.pipeline import model as model_lib


def random_sae(d_in: int, d_sae: int, seed: int = 0) -> sae_io.ExternalSAE:
  rng = np.random.default_rng(seed)
  w = rng.standard_normal((d_in, d_sae), dtype=np.float32) / np.sqrt(d_in)
  return sae_io.ExternalSAE("standard", w, np.full(d_sae, -0.5, np.float32), w.T.copy(),
                            np.zeros(d_in, np.float32))


def _plain(batches, sae) -> float:
  enc = jax.jit(lambda x: jnp.sum(sae_io.encode(sae, x)))
  t0 = time.perf_counter()
  for i in range(len(batches)):
    common.block(enc(jnp.asarray(batches[i]["x"])))
  return time.perf_counter() - t0


def state_bytes(F: int, s: feature_scan.ScanSettings) -> int:
  """Bytes of the scan's device state (pass 1 and pass 2 together, co-activation dense when
  F <= 4096): what stays fixed however many tokens are scanned."""
  per = 12 * s.k_top + 8 * s.n_bins + 4 * 4 + 12 * s.n_intervals * (s.per_interval + 1)
  return int(F * per + (4 * F * F if F <= 4096 else 0))


def run(config) -> dict:
  """The measurements of the module docstring (configs/bench/dashboards.py)."""
  if int(config.d_sae) < 1 or int(config.n_rows) < int(config.rows_per_batch):
    raise ConfigError(f"d_sae={config.d_sae}, n_rows={config.n_rows}: expected d_sae >= 1 and "
                      f"n_rows >= rows_per_batch={config.rows_per_batch}")
  lm = model_lib.load(model_lib.resolve(config.model))
  block = dict(corpus=config.corpus, seq_len=int(config.seq_len),
               max_tokens=int(config.seq_len) * int(config.n_rows))
  from ml_collections import ConfigDict
  packed = cache_lib.load_packed(ConfigDict(block), lm.tokenizer)
  sae = random_sae(lm.hookpoint_width(config.hookpoint), int(config.d_sae))
  batches = dash.LMBatches(lm, packed, config.hookpoint, int(config.rows_per_batch))
  n_tok = len(batches) * batches.rows * batches.T
  settings = feature_scan.ScanSettings(k_top=int(config.k_top))
  encode = lambda x: sae_io.encode(sae, x)
  feature_scan.scan(batches, encode, sae.d_sae, settings)          # compiles
  _plain(batches, sae)
  plain = min(_plain(batches, sae) for _ in range(int(config.repeats)))
  t0 = time.perf_counter()
  for _ in range(int(config.repeats)):
    feature_scan.scan(batches, encode, sae.d_sae, settings)
  scan_s = (time.perf_counter() - t0) / int(config.repeats)
  ratio = plain / scan_s
  return {"device": common.device_summary(), "model": config.model, "hookpoint": config.hookpoint,
          "d_sae": sae.d_sae, "tokens": n_tok, "plain_tokens_per_s": n_tok / plain,
          "scan_tokens_per_s": n_tok / scan_s, "scan_over_forward_encode": ratio,
          "per_pass_over_forward_encode": 2 * ratio,
          "scan_encode_flops_per_s": 2 * n_tok * sae.d_in * sae.d_sae / scan_s * 2,
          "state_bytes": state_bytes(sae.d_sae, settings),
          "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
