"""NeuroMFA benchmark: paper-compatible spectrum vs the released per-node NumPy algorithm.

  python -m launch.benchmark --config=configs/bench/neuromfa.py [--out=neuromfa_bench.json]

Same sampled network for both (released-code layout: S neurons per sampled layer, 32
GPT-NeoX-like blocks of width 2560, synthetic i.i.d. Gaussian weights), ratio of median
times measured in the same run; and multi-hop min-plus shortest-path throughput
(relaxations per second, and as a fraction of the measured matmul rate).
"""

import ml_collections


def get_config(arg: str | None = None):
  c = ml_collections.ConfigDict()
  c.benchmark = "neuromfa"      # jaxcode.bench.neuromfa
  c.S = 64                      # neurons sampled per layer (released code: layer_sample = 64)
  c.blocks = 32                 # transformer blocks (Pythia-2.8B: 32)
  c.width = 2560                # model width d the indices are sampled from (Pythia-2.8B)
  c.sigma = 0.02                # std of the synthetic i.i.d. Gaussian weights
  c.T = 150                     # distance cut-off of the released code (NMFA_for_LLM: 150)
  c.seed = 0                    # weights and index sampling
  c.repeats = 3                 # timed repeats of the JAX paths (median)
  c.reference_repeats = 1       # timed repeats of the NumPy reference (slow)
  c.path_sources = 1024         # random sources timed for multi-hop throughput
  c.path_block = 256            # sources per min-plus batch (layer-sorted)
  c.path_chunk = 0              # min-plus k-chunk (0: unchunked, fused broadcast-min)
  if arg == "small":            # quick variant for a laptop check
    c.blocks = 4
  return c.lock()
