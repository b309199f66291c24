"""SAEConfig for unit tests built by hand: the library declares no defaults (configs/sae.py's
`sae` block is the one declaration, read by jaxcode.pipeline.sae.sae_config); these are the
tests' own fixture values, overridden per test."""

from jaxcode.models import sae

FIXTURE = dict(k=32, sparsity_coef=0.0, sparsity_warmup_steps=0, k_aux=None, aux_alpha=1.0 / 32,
               dead_tokens=10_000_000, jump_bandwidth=0.001, jump_threshold_init=0.001,
               tanh_c=4.0, pre_act_coef=3e-6, threshold_ema=0.999, threshold_ema_start=0,
               matryoshka_widths=(), dec_init_norm=1.0, b_dec_init="mean",
               normalisation="unit_mean_sq", sparse_decode="auto", sweep_mode="auto")


def sae_config(**kw) -> sae.SAEConfig:
  """An SAEConfig with the fixture values for every field `kw` does not give."""
  return sae.SAEConfig(**{**FIXTURE, **kw})
