"""SAEBench-compatible evaluations of dictionaries: one SAEBench JSON per eval, and a page.

  python -m launch.evaluate --config=configs/evaluate.py --workdir=/tmp/evals \
      --config.model=smollm2-135m --config.sae=/path/to/sae \
      --config.hookpoint=blocks.15.resid_post [--config.evals=core,absorption,sparse_probing]
  python -m launch.evaluate --config=configs/evaluate.py:tiny --workdir=/tmp/evals_tiny

`sae` is one dictionary or several, comma-separated, in any layout jaxcode loads (ours,
SAELens, Gemma Scope 1/2, Llama Scope, sparsify). Writes DIR/<eval_type_id>/
<release>_<sae id>_eval_results.json (SAEBench's envelope and keys, checked against
jaxcode/resources/saebench-schema.json), DIR/evals.html (every dictionary evaluated in DIR
across the evals, SAEBench's published reference numbers beside ours) and DIR/results.json.
Offered offline: core, absorption (causal LMs: gemma3-270m, smollm2-135m), sparse_probing;
scr, tpp, ravel, autointerp, unlearning are listed as not offered, with the reason, on the page.
tiny first trains a small TopK SAE on the embedded MiniLM blocks.3.resid_post (as
configs/dashboards.py:tiny does), then runs core and sparse probing: about a minute on 2 cores.
"""

from ml_collections import ConfigDict

from configs import dashboards as dashboards_config

VARIANTS = {   # name: what it runs
    "default": "the offered evals of the dictionaries in --config.sae",
    "tiny": "a small TopK SAE trained on MiniLM blocks.3.resid_post, then core and sparse "
            "probing",
}
COMMON_OVERRIDES = (   # (field, what it sets): shown by --help
    ("sae", "the dictionary (or several, comma-separated): a folder or weights file"),
    ("evals", "'all' or a comma-separated subset of core, absorption, sparse_probing"),
    ("model", "'minilm', 'gemma3-270m', 'smollm2-135m', a checkpoint dir or .gguf"),
    ("hookpoint", "where the dictionary reads, e.g. blocks.3.resid_post"),
    ("absorption.max_words", "vocabulary tokens used by the first-letter task"),
)


def eval_block() -> ConfigDict:
  """The evals' fields (jaxcode.pipeline.evals: check / run_evals take this block as it is),
  shared with the atlas."""
  c = ConfigDict()
  c.release = "jaxcode"          # sae_lens_release_id in the files and their names
  c.core = ConfigDict(dict(
      rows_per_batch=8))         # packed rows per forward (also SAEBench's mse batch)
  c.absorption = ConfigDict(dict(
      max_words=2000,            # letter tokens of the vocabulary used (evenly spaced ids)
      n_icl=10,                  # in-context examples per prompt (SAEBench: 10)
      test_fraction=0.2,         # tokens held out (SAEBench: 80/20 split)
      min_probe_f1=0.6,          # letters whose probe reaches this F1 count (SAEBench: 0.6)
      min_letters=20,            # fewer counted letters: reported aborted (SAEBench: 20)
      k_max=10,                  # largest k-sparse probe (SAEBench: 10)
      f1_jump=0.03,              # F1 gain that adds a split latent (SAEBench: 0.03)
      l1_c=0.1,                  # inverse L1 strength of the latent-ranking probe
      seed=42))                  # token split and ICL example draws
  c.absorption_batch_size = 32   # prompts per forward in the absorption eval
  c.probing = ConfigDict(dict(
      tasks="source,categories,first_letter",   # offline labelled tasks (pipeline.evals)
      categories="",             # concept categories used ('' = all shipped)
      max_per_class=60,          # documents / words per class
      context=128,               # tokens per text (SAEBench: 128)
      ks=(1, 2, 5),              # k-sparse probes (SAEBench: 1, 2, 5)
      test_fraction=0.2,         # groups (documents, words) held out
      batch_size=16,             # texts per forward
      seed=42))                  # split and negative sampling
  return c


def get_config(variant: str = "default") -> ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  c = ConfigDict()
  c.variant = variant            # written into results.json
  c.model = "minilm"             # model alias, checkpoint dir, .gguf file or Hub id
  c.revision = ""                # Hub revision ('' = default branch)
  c.sae = ""                     # dictionary path(s), comma-separated ('' = train one, tiny)
  c.hookpoint = ""               # where it reads ('' = the dictionary's own hook name)
  c.evals = "all"                # 'all' (every offered eval the model supports) or a list
  c.data = ConfigDict(dict(
      corpus="default:40",       # core's tokens: offline default corpus (prose and code)
      seq_len=128,               # tokens per packed row (SAEBench's context 128)
      max_tokens=128 * 64))      # packed positions evaluated (rows evenly spaced)
  c.update(eval_block())         # core, absorption, absorption_batch_size, probing
  c.progress = True              # progress lines on stderr
  c.mesh = ConfigDict(dict(data=-1, model=1))   # training mesh (tiny's SAE)
  c.distributed = ConfigDict(dict(enabled=False, coordinator_address="", num_processes=0,
                                  process_id=0))
  c.train = dashboards_config.get_config("tiny").train   # configs/sae.py's fields (sae='')
  if variant == "tiny":
    c.hookpoint = "blocks.3.resid_post"
    c.data.max_tokens = 128 * 16
    c.probing.max_per_class = 24
    c.probing.context = 64
  c.lock()
  return c
