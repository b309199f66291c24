"""SAE training-step benchmark.

  python -m launch.benchmark --config=configs/bench/sae.py --out=/tmp/sae_bench.json
  python -m launch.benchmark --config=configs/bench/sae.py:gpu     (batch 4096 on an accelerator)

Prints: dense ReLU step FLOP/s as a fraction of the measured float32 matmul rate, TopK (k=32)
step time over the dense ReLU step time, and tokens/s of 4 SAEs vmapped vs one after another,
fed from memory and from a language model computing the activations on the fly.
"""

from ml_collections import ConfigDict

from configs import sae as sae_configs


def get_config(variant: str = "cpu") -> ConfigDict:
  """The benchmark's sizes: 'cpu' (2 cores) or 'gpu' (larger batch and matmul)."""
  if variant not in ("cpu", "gpu"):
    raise ValueError(f"variant {variant!r}: expected 'cpu' or 'gpu'")
  c = ConfigDict()
  c.benchmark = "sae"          # module jaxcode.bench.sae
  c.d_in = 768                 # activation dimension (GPT-2 small)
  c.d_sae = 16384              # latents
  c.batch = 2048               # tokens per step (a dense ReLU step takes ~2 s on 2 CPU cores)
  c.k = 32                     # TopK active latents; the sweep uses k/2, k, 2k, 4k
  c.sweep = 4                  # SAEs in the vmapped sweep
  c.repeats = 3                # timed steps per measurement (the fastest is kept)
  c.matmul_n = 2048            # size of the square matmul that measures the machine's rate
  c.source_rows = 8192         # rows of the in-memory source feeding the sweep comparison
  c.lm_model = "gpt2-small-random"   # (c) activations on the fly from GPT-2 small (random weights)
  c.lm_hookpoints = ("blocks.5.resid_post", "blocks.11.resid_post")  # middle and last block
  c.lm_seq = 128               # tokens per row fed to the LM
  c.lm_rows = 256              # rows of random token ids the LM source draws from
  c.lm_repeats = 2             # timed steps per LM-fed measurement (each runs the LM)
  c.sae = sae_configs.sae_block("topk")  # the SAE fields (one
                               # schema, configs/sae.py); architecture, sizes, k, coefficients
                               # and sparse_decode are set per measurement
  if variant == "gpu":
    c.batch = 4096
    c.repeats = 10
    c.matmul_n = 8192
    c.source_rows = 65536
  c.lock()
  return c
