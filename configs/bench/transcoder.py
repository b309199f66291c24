"""Transcoder training-step benchmark (jaxcode.bench.transcoder).

  XLA_FLAGS=--xla_force_host_platform_device_count=8 JAXCODE_PEER_PYTHON=/work/torchvenv/bin/python \
    python -m launch.benchmark --config=configs/bench/transcoder.py --out=/tmp/transcoder_bench.json
  python -m launch.benchmark --config=configs/bench/transcoder.py:cpu_dry     (tiny sizes, seconds)
  python -m launch.benchmark --config=configs/bench/transcoder.py:gpu         (one accelerator)

XLA_FLAGS gives the CPU 8 devices for the CLT's per-device parameter memory (1 x 8 mesh); with
fewer devices that measurement is skipped with its reason. JAXCODE_PEER_PYTHON (or
--config.peer_python) names a Python with torch and sae_lens (and sparsify: pip install
eai-sparsify) for the PyTorch peers; without one they are skipped with their reason.

Prints: the per-layer TopK and ReLU transcoder steps' FLOP/s over the float32 matmul rate of
the same run; the CLT step time over the sum of L per-layer transcoder steps (TopK, equal
features per layer); the CLT's parameter bytes on device 0 of 8 over its total; SAELens's
TopK and ReLU SAE steps and sparsify's TopK transcoder step over ours (same sizes, threads).
"""

from ml_collections import ConfigDict

from configs import sae as sae_configs

VARIANTS = {   # name: what it is for
    "default": "2 CPU cores: d 768, 16384 latents, batch 2048; CLT 4 x 256, 2048 per layer",
    "cpu_dry": "tiny sizes, a few seconds (tests, CI)",
    "gpu": "one accelerator: larger CLT and matmul, more repeats",
}


def get_config(variant: str = "default") -> ConfigDict:
  """The benchmark's sizes for `variant` (see VARIANTS)."""
  if variant not in VARIANTS:
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  c = ConfigDict()
  c.benchmark = "transcoder"   # module jaxcode.bench.transcoder
  c.d_in = 768                 # transcoder input width (GPT-2 small's MLP input)
  c.d_out = 768                # transcoder output width (the MLP output)
  c.d_sae = 16384              # latents of the per-layer transcoder and of the peers' SAEs
  c.batch = 2048               # tokens per step
  c.k = 32                     # TopK active latents per token
  c.skip = False               # a skip transcoder (adds x W_skip^T; counted in its FLOPs)
  c.relu_coef = 0.3            # the ReLU steps' L1 coefficient (no effect on the time)
  c.lr = 3e-4                  # Adam learning rate of every step (ours and SAELens's)
  c.clip_norm = 1.0            # global-norm clipping of our steps (SAELens's trainer uses 1.0)
  c.repeats = 3                # timed steps per measurement (the fastest is kept)
  c.warmup = 1                 # untimed steps first (the first one compiles)
  c.matmul_n = 2048            # size of the square matmul that measures the machine's rate
  c.clt = ConfigDict(dict(     # (b) and (c): a TopK CLT against per-layer transcoders
      n_layers=4,              # layers L
      d=256,                   # d_in = d_out of every layer
      d_sae=2048,              # features per layer (the per-layer transcoders' latents too)
      batch=512,               # tokens per step
      k=16,                    # TopK per layer and token
      model_devices=8,         # (c): the 1 x N (data x model) mesh; needs N devices
  ))
  c.peer_python = ""           # (d) a Python with torch + sae_lens [+ sparsify];
                               # '': $JAXCODE_PEER_PYTHON if set, else the peers are skipped
  c.peer_timeout_s = 1200.0    # the peer subprocess is stopped after this
  c.sae = sae_configs.sae_block("topk")   # the SAE fields (configs/sae.py's one schema);
                               # architecture, sizes, k and coefficients set per measurement
  c.sae.dead_tokens = 10_000_000   # no latent dies within the timed steps: AuxK stays off,
                                   # as in SAELens's and sparsify's first steps
  if variant == "cpu_dry":
    c.d_in, c.d_out, c.d_sae, c.batch, c.k = 64, 64, 512, 256, 8
    c.repeats, c.matmul_n = 1, 256
    c.clt.update(n_layers=2, d=32, d_sae=128, batch=64, k=4)
  elif variant == "gpu":
    c.batch, c.repeats, c.matmul_n = 4096, 10, 8192
    c.clt.update(d=768, d_sae=16384, batch=2048, k=32)
  c.lock()
  return c
