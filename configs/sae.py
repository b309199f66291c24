"""Sparse autoencoders, one variant per architecture.

  python -m launch.train_sae --config=configs/sae.py:topk --workdir=/tmp/sae_topk

Variants: relu, relu_classic, topk, batchtopk, jumprelu, jumprelu_tanh, matryoshka.  The default
data is a synthetic planted dictionary, so every variant runs anywhere in about a minute on a
laptop CPU.  Override on the command line, e.g. --config.sae.d_sae=4096 --config.steps=20000,
--config.data.kind=activation_cache --config.data.path=/cache/gpt2 --config.data.hookpoint=...
(a cache written by launch.extract), an [N, D] .npy file: --config.data.kind=array_npy,
activations computed on the fly by a model: --config.data.kind=lm --config.data.path=gpt2
--config.data.hookpoint=blocks.6.resid_post (a sweep then shares every forward pass),
or a sweep of 4 SAEs trained at once: --config.sae.sweep_k='(16,32,64,128)'.

A rerun in the same workdir may differ from the first run only in fields that cannot change
results: progress, log_every, checkpoint.*, mesh.*, distributed.*, and steps under a
constant learning-rate schedule (jaxcode/workdir.py); any other difference is refused.
"""

from ml_collections import ConfigDict

from configs._train import default_train_config

VARIANTS = {   # name (= sae.architecture): the SAE it trains
    "relu": "Anthropic April 2024: L1 on codes weighted by decoder norms, unconstrained decoder",
    "relu_classic": "Towards Monosemanticity: L1 on codes, unit-norm decoder rows",
    "topk": "OpenAI TopK: k active latents per token, AuxK loss for dead latents",
    "batchtopk": "BatchTopK: k x batch active latents per batch, exported as JumpReLU",
    "jumprelu": "JumpReLU with an L0 penalty (straight-through rectangle kernel)",
    "jumprelu_tanh": "JumpReLU, Anthropic January 2025: tanh penalty and pre-activation loss",
    "matryoshka": "BatchTopK selection, loss averaged over nested dictionary prefixes",
}
COMMON_OVERRIDES = (   # (field, what it sets): shown by --help
    ("steps", "optimizer updates"),
    ("sae.d_sae", "latents"),
    ("sae.k", "active latents per token (topk, batchtopk, matryoshka)"),
    ("sae.sparsity_coef", "sparsity penalty (relu*, jumprelu*)"),
    ("sae.sweep_k", "several k trained at once, e.g. '(16,32,64)'"),
    ("data.kind", "synthetic | array_npy | activation_cache | lm"),
    ("data.path", ".npy file, activation cache dir, or (lm) model"),
    ("data.hookpoint", "activation_cache / lm: which hookpoint, e.g. blocks.6.resid_post"),
    ("optim.lr", "peak learning rate"),
    ("batch_size", "activations (tokens) per step"),
)


def get_config(arch: str = "topk") -> ConfigDict:
  """The SAE experiment's config for one architecture (a key of VARIANTS)."""
  if arch not in VARIANTS:
    raise ValueError(f"variant {arch!r}: expected one of {', '.join(VARIANTS)}")
  c = default_train_config()
  c.steps = 2000                 # optimizer updates
  c.log_every = 100              # metrics.jsonl interval
  c.checkpoint.every = 500       # checkpoint interval (steps)
  c.mesh.data = -1               # batch axis: all devices the model axis leaves
  c.mesh.model = 1               # latent axis: W_enc P(None,'model'), W_dec P('model',None)
  c.optim.name = "adam"
  c.optim.lr = 3e-3              # peak learning rate
  c.optim.schedule = "warmup_linear"   # linear warm-up then linear decay
  c.optim.warmup_steps = 50      # warm-up steps
  c.optim.final_lr_fraction = 0.0      # decay to 0 at the last step
  c.optim.b1, c.optim.b2 = 0.9, 0.999  # Adam moments
  c.optim.clip_norm = 1.0        # gradient clipping, computed per SAE of a sweep
  c.batch_size = 256             # activations (tokens) per step
  c.norm_sample_tokens = 2048    # tokens drawn before training for the norm scalar and b_dec
  c.eval = ConfigDict(dict(
      tokens=8192,               # held-out tokens for the final evaluation
      batch_size=2048))          # evaluation batch
  c.data = ConfigDict(dict(
      kind="synthetic",          # synthetic | array_npy | activation_cache | lm
      path="",                   # .npy file, activation cache dir, or (lm) model ('minilm', a
                                 # checkpoint dir or Hub id)
      hookpoint="",              # activation_cache / lm: which hookpoint
      seq_len=128,               # lm: tokens per packed row
      corpus="",                 # lm: corpus spec ('' = the embedded default corpus)
      seed=0,                    # data stream seed (batches are pure functions of seed, step)
      d_in=32,                   # synthetic: activation dimension
      n_features=48,             # synthetic: planted dictionary size
      l0=3.0,                    # synthetic: expected active features per token
      alpha=0.3,                 # synthetic: power-law exponent of feature frequencies
      dict_seed=0))              # synthetic: seed of the planted dictionary
  c.sae = sae_block(arch)
  c.lock()
  return c


def sae_block(arch: str) -> ConfigDict:
  """The `sae` block: the one declaration of the SAE fields and their defaults
  (jaxcode.pipeline.sae.sae_config builds the SAEConfig from it, adding none of its own)."""
  s = ConfigDict(dict(
      architecture=arch,         # one of VARIANTS
      d_in=0,                    # 0: take it from the data; otherwise checked against it
      d_sae=64,                  # latents (0: 2 x the data width d_in)
      k=3,                       # topk / batchtopk / matryoshka: active latents (mean for batch)
      sweep_k=(),                # non-empty: train one SAE per k at once (vmapped)
      sparsity_coef=0.0,         # lambda: L1 (relu*), L0 (jumprelu), tanh (jumprelu_tanh)
      sweep_coef=(),             # non-empty: one SAE per coefficient at once (vmapped)
      sparsity_warmup_steps=0,   # linear warm-up of lambda (0: none)
      k_aux=0,                   # AuxK latents (0: d_in // 2)
      aux_alpha=1.0 / 32,        # AuxK loss weight
      dead_tokens=10_000_000,    # a latent is dead after this many tokens without firing
      jump_bandwidth=0.001,      # JumpReLU rectangle-kernel bandwidth epsilon
      jump_threshold_init=0.001,  # JumpReLU initial threshold
      tanh_c=4.0,                # jumprelu_tanh: c in tanh(c f ||W_dec||)
      pre_act_coef=3e-6,         # jumprelu_tanh: pre-activation loss coefficient
      threshold_ema=0.999,       # batchtopk/matryoshka: inference threshold EMA decay
      threshold_ema_start=0,     # step from which the threshold EMA updates
      matryoshka_widths=(),      # nested prefix widths (d_sae is appended)
      dec_init_norm=1.0,         # decoder row norm at init (0.1 for the April-2024 recipe)
      b_dec_init="mean",         # zeros | mean | geometric_median (of the norm sample)
      normalisation="unit_mean_sq",  # none | unit_mean_sq (E||x||^2=1) | sqrt_d (E||x||=sqrt d)
      sparse_decode="auto",      # topk: sparse | dense | auto (the path configs/bench/sae.py
                                 # measured faster on this backend: sparse on CPU)
      sweep_mode="auto"))        # sweeps: vmap | unroll | auto (unrolled on CPU, vmapped on
                                 # accelerators; see jaxcode.models.sae.unrolled_sweep)
  if arch == "relu":
    s.sparsity_coef, s.dec_init_norm = 0.3, 0.1
  elif arch == "relu_classic":
    s.sparsity_coef = 0.3
  elif arch == "jumprelu":
    s.sparsity_coef, s.jump_bandwidth, s.jump_threshold_init = 0.05, 0.05, 0.1
  elif arch == "jumprelu_tanh":
    s.sparsity_coef, s.jump_bandwidth, s.jump_threshold_init = 0.06, 0.05, 0.1
  elif arch == "matryoshka":
    s.matryoshka_widths = (32,)
  if arch in ("topk", "batchtopk", "matryoshka"):
    s.dead_tokens = 256 * 50     # synthetic default is short: 50 steps without firing
  return s
