"""Activation extraction into the resumable on-disk cache.

  python -m launch.extract --config=configs/extract.py --workdir=/tmp/minilm_acts
  python -m launch.extract --config=configs/extract.py:tiny --workdir=/tmp/minilm_tiny

Default: the embedded all-MiniLM-L6-v2, the offline default corpus (Python docs prose and
stdlib code), the residual stream after each of its 6 blocks, float16 cache. The corpus is
packed into rows of seq_len tokens and max_tokens caps the positions fed to the model:
max_tokens // seq_len rows, taken evenly spaced over the whole packed corpus so prose and
code both appear (the full default corpus is about 1.45M MiniLM tokens). 131072 positions
(about 123k cached tokens once [CLS]/[SEP]/padding are dropped, 0.55 GiB in float16) take
about 3 minutes on 2 CPU cores (800 tokens/s). Killing the job and rerunning the same
command finishes the cache, keeping every complete chunk. Override fields on the command
line, e.g. --config.max_tokens=0 (whole corpus) --config.model=/ckpt/pythia-70m
--config.hookpoints='("blocks.3.resid_post",)' --config.dtype=bfloat16.

A rerun in the same workdir may differ from the first run only in fields that cannot change
results: progress, log_every, checkpoint.*, mesh.*, distributed.*, and steps under a
constant learning-rate schedule (jaxcode/workdir.py); any other difference is refused.
"""

from ml_collections import ConfigDict

VARIANTS = {   # name: what it caches
    "minilm": "the embedded MiniLM, default corpus, all 6 blocks, 131k positions (~3 minutes)",
    "tiny": "MiniLM, 2 blocks, 1024 positions: seconds; what the tests run",
}
COMMON_OVERRIDES = (   # (field, what it sets): shown by --help
    ("model", "'minilm', a checkpoint directory or Hub id"),
    ("corpus", "'default', 'default:N', a .jsonl, text files, 'hf:NAME'"),
    ("max_tokens", "cap on packed positions (0: all)"),
    ("hookpoints", "what to cache, e.g. '(\"blocks.3.resid_post\",)'"),
    ("dtype", "cache dtype: float32 | float16 | bfloat16"),
)


def get_config(variant: str = "minilm") -> ConfigDict:
  """The extraction config of a variant (a key of VARIANTS); its top level is the cache
  stage's block (jaxcode.pipeline.cache)."""
  if variant not in VARIANTS:
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  c = ConfigDict()
  c.variant = variant            # the name written into results.json
  c.model = "minilm"             # 'minilm' (the embedded all-MiniLM-L6-v2), a checkpoint dir or Hub id
  c.revision = ""                # Hub revision (e.g. Pythia 'step1000'); '' for none / local dirs
  c.compute_dtype = "float32"    # forward dtype: float32 | bfloat16 | float16 (params stay float32)
  c.corpus = "default"           # 'default', 'default:N' (N docs per source), a .jsonl, text files, 'hf:NAME'
  c.text_field = "text"          # JSONL / HF datasets: the field holding the text
  c.max_docs = 0                 # keep the first N documents (0: all)
  c.seq_len = 128                # tokens per packed row, special tokens included
  c.max_tokens = 131_072         # cap on packed positions (rows = max_tokens // seq_len); 0: all
  c.hookpoints = tuple(f"blocks.{i}.resid_post" for i in range(6))  # what to cache
  c.dtype = "float16"            # cache dtype: float32 | float16 | bfloat16
  c.batch_size = 32              # rows per forward (a multiple of the mesh data axis)
  c.rows_per_chunk = 128         # rows per cache chunk (a multiple of batch_size); the resume unit
  c.drop_special = True          # drop BOS/CLS/SEP/EOS and padding from the cache
  c.progress = True              # progress bar with tokens/s on stderr
  c.mesh = ConfigDict(dict(
      data=-1,                   # batch axis: all local devices
      model=1))                  # tensor-parallel axis for the LM's weights
  if variant == "tiny":          # seconds on a laptop: what the tests run
    c.corpus = "default:3"
    c.seq_len = 32
    c.max_tokens = 1024
    c.hookpoints = ("blocks.0.resid_post", "blocks.5.resid_post")
    c.batch_size = 8
    c.rows_per_chunk = 8
  return c
