"""Synthetic-benchmark feed: the SynthSAEBench-style generator plus one SAE step against the
SAE step alone (jaxcode.bench.synth).

  python -m launch.benchmark --config=configs/bench/synth.py --out=/tmp/synth_bench.json
  python -m launch.benchmark --config=configs/bench/synth.py:published   (16k features, 768 dims)
  python -m launch.benchmark --config=configs/bench/synth.py:tiny        (seconds; tests)

Prints tokens/s of the SAE step fed a fixed batch, of the generator alone, of generator + step
(on the device, as a pure function of the step), and of the host-fed path the experiment's
SAE stage takes (generator, copy to the host, copy back), and their ratios to the step alone.
"""

from ml_collections import ConfigDict

from configs import synth_bench
from configs.sae import sae_block

VARIANTS = {   # name: the scale
    "default": "configs/synth_bench.py's default: 4096 features in 192 dims, width 1024",
    "published": "SynthSAEBench-16k: 16,384 features in 768 dims, width 4096, k 25",
    "tiny": "256 features in 16 dims, width 64: seconds",
}


def get_config(variant: str = "default") -> ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  exp = synth_bench.get_config("tiny" if variant == "tiny" else "default")
  c = ConfigDict()
  c.benchmark = "synth"          # module jaxcode.bench.synth
  c.variant = variant            # written into the result
  c.synth = exp.synth.to_dict()  # the generator (configs/synth_bench.py's synth block)
  c.synth = ConfigDict(c.synth)
  c.width = exp.width            # SAE latents
  c.k = exp.l0                   # TopK k (the benchmark's target L0)
  c.batch = exp.batch_size       # samples per step
  c.repeats = 5 if variant != "tiny" else 2   # timed steps per measurement (fastest kept)
  c.sae = sae_block("topk")      # the SAE fields (configs/sae.py's one schema); architecture,
                                 # d_sae and k are set from the fields above
  if variant == "published":
    c.synth.n_features, c.synth.d_hidden, c.synth.n_roots = 16384, 768, 128
    c.width, c.k = 4096, 25
  c.lock()
  return c
