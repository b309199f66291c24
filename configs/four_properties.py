"""Feature-atlas table (intrinsic dimension, eigenspectrum slope, the four properties) at every
residual-stream layer of a language model, variants by argument.

  python -m launch.four_properties --config=configs/four_properties.py --workdir=/tmp/fp_minilm
  python -m launch.four_properties --config=configs/four_properties.py:gpt2 --workdir=/tmp/fp_gpt2
  python -m launch.four_properties --config=configs/four_properties.py:pythia --workdir=/tmp/fp_py

Point at any checkpoint by path or Hub id: --config.model=/path/to/checkpoint (GPT-2, GPT-NeoX
or BERT in safetensors). Optional SAELens exports, one per analysed layer in layer order (embed,
then each block; '' for none): --config.sae_paths="('', /sae/l1, ...)".

A rerun in the same workdir may differ from the first run only in fields that cannot change
results: progress, log_every, checkpoint.*, mesh.*, distributed.*, and steps under a
constant learning-rate schedule (jaxcode/workdir.py); any other difference is refused.
"""

from ml_collections import ConfigDict

VARIANTS = {   # name: the model measured
    "minilm": "the embedded all-MiniLM-L6-v2",
    "gpt2": "GPT-2 small from the Hub (online)",
    "pythia": "EleutherAI/pythia-70m from the Hub (online)",
}
COMMON_OVERRIDES = (   # (field, what it sets): shown by --help
    ("model", "'minilm', a checkpoint directory or a Hub id"),
    ("template", "context sentence ({word} is replaced)"),
    ("sae_paths", "SAELens exports, one per analysed layer in layer order ('' for none)"),
    ("batch", "sentences per forward pass"),
)
MODELS = dict(minilm="minilm", gpt2="gpt2", pythia="EleutherAI/pythia-70m")


def stage_block() -> ConfigDict:
  """The four-properties stage's fields (jaxcode/pipeline/four_properties.py), declared once:
  this experiment's top level holds them, and the atlas embeds them as its four_properties
  block."""
  c = ConfigDict()
  c.template = "This is a sentence about {word}."   # the context sentence ({word} is replaced)
  c.categories_file = ""        # '' = jaxcode/resources/concepts/categories.json
  c.relations_file = ""         # '' = jaxcode/resources/concepts/relations.json
  c.batch = 64                  # sentences per forward pass
  c.seed = 0                    # shuffling of the probe's cross-validation folds
  c.twonn_discard = 0.1         # TwoNN: fraction of the largest ratios discarded
  c.mle_k = 20                  # Levina-Bickel MLE neighbours
  c.probe = ConfigDict(dict(
      dim=8,                    # PCA dimensions of the precision probe
      folds=5,                  # stratified cross-validation folds
  ))
  c.spectrum = ConfigDict(dict(
      lo=2,                     # rank window of the power-law fit, 1-based inclusive; rank 1
      hi=100,                   # (the shared mean-like direction) is left out
  ))
  return c


def get_config(variant: str = "minilm") -> ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  c = ConfigDict()
  c.variant = variant
  c.model = MODELS[variant]     # 'minilm' (pip package), a checkpoint directory or a Hub id
  c.revision = ""               # Hub revision ('' = default branch; local dirs take none)
  c.update(stage_block())       # the stage's fields (stage_block), passed to it as they are
  c.sae_paths = ()              # one SAELens export dir per analysed layer (embed, then each
                                # block), in layer order, '' for none; () = no SAEs
  return c
