"""NeuroMFA's claims tested in miniature offline: a GPT-2 family trained here (issue 21).

  python -m launch.neuromfa_study --config=configs/neuromfa_study.py:all --workdir=/tmp/nmfa_study
  python -m launch.neuromfa_study --config=configs/neuromfa_study.py:claim1 --workdir=/tmp/nmfa_c1
  python -m launch.neuromfa_study --config=configs/neuromfa_study.py:claim4 --workdir=/tmp/nmfa_c4
  python -m launch.neuromfa_study --config=configs/neuromfa_study.py:claim5 --workdir=/tmp/nmfa_c5
  python -m launch.neuromfa_study --config=configs/neuromfa_study.py:tiny --workdir=/tmp/nmfa_tiny

Variants :claim1, :claim2, :claim3 train the whole family (the same runs; one workdir per
variant); :claim5 trains only the family member family.claim5_size plus its duplicated-corpus
twin and a contaminated fine-tune; :claim4 trains the family, then a ResNet and a conv
diffusion denoiser at each member's non-embedding size on Fashion-MNIST (Debian's
dataset-fashion-mnist; configs/neuromfa_vision.py); :all runs every registered claim and the real-checkpoint
comparison (MiniLM and Gemma 3 270M, ~15 s each); :tiny is :all at toy sizes (a few minutes).
Default sizes: non-embedding parameters 25,472 .. 793,344 (31x); with the corpus's compacted
vocabulary (8,100 tokens, 1.2M training tokens) total parameters 0.29M .. 1.85M (6.4x: the
tied embedding dominates small models). The largest measured 0.81 CPU-seconds per step (16 x
128 tokens, 10 steps): 13-27 minutes for 2000 steps on 2 idle cores (92 minutes of wall time
on the shared machine at load 12). Measured 2026-12-02 on 2 cores (partly shared with other
jobs): claims 1, 2, 3 and 5 at this default plus the real checkpoints in one workdir, 89 min
(family 11, 16, 16, 33 min; claim 5's twin and fine-tune 29 min; MiniLM and Gemma 48 s);
claim 4 with the family above and --config.claim4.max_params=60000 --config.claim4.steps=128
--config.claim4.data.n_train=10000 --config.claim4.data.batch=32 (configs/neuromfa_vision.py's
:small settings) 18 min; claim 4's own default (2000 steps, 60k images, all four sizes) was
not run: its conv denoiser ran at 0.35 steps/s at the smallest size, hours on 2 cores.
Verdicts there: claim 1 inconclusive, 2 inconclusive (E tracks accuracy, rho 0.92, but so
does the null's, 0.93), 3 not supported (E falls with size), 4 inconclusive, 5 not supported.

A rerun in the same workdir resumes; it may differ from the first run only in fields that
cannot change results (jaxcode/workdir.py).
"""

from ml_collections import ConfigDict

from configs._train import default_train_config
from configs.neuromfa import stage_block as neuromfa_block
from configs.neuromfa_vision import claim4_block

VARIANTS = {   # name: what it runs
    "all": "claims 1-5 and the real-checkpoint comparison on the default family",
    "claim1": "spectra shift left and widen with training, for large models only",
    "claim2": "E tracks held-out task accuracy across checkpoints",
    "claim3": "E at the last checkpoint grows with log(parameters) above a threshold",
    "claim4": "a ResNet and a diffusion denoiser at the family's sizes self-organise less",
    "claim5": "duplicated corpus and contaminated fine-tune lower E",
    "tiny": "every registered claim at toy sizes: a few minutes; what the tests run",
}
COMMON_OVERRIDES = (   # (field, what it sets): shown by --help
    ("claims", "claims to run, e.g. '(\"claim1\",\"claim3\")'; ('all',) = every registered"),
    ("steps", "training updates of every family member"),
    ("neuromfa.S", "sampled neurons per layer (<= the smallest d_model)"),
    ("neuromfa.seeds", "network samples (error bars), e.g. '(0,1,2,3,4)'"),
    ("real.checkpoints", "real models beside the family, e.g. '(\"minilm\",)'"),
)


def family_block() -> ConfigDict:
  """Four GPT-2 sizes, head width 16, d_mlp = 4 d_model; non-embedding parameter counts
  stated by hand (jaxcode.analysis.neuromfa_study.gpt2_nonembed_params is checked against
  them before compute, the initialised pytree in tests/neuromfa_study_test.py)."""
  return ConfigDict(dict(
      d_model=(32, 48, 64, 128),           # residual widths (increasing)
      n_layers=(2, 2, 3, 4),               # blocks
      n_heads=(2, 3, 4, 8),                # heads (head width 16)
      d_mlp=(128, 192, 256, 512),          # MLP widths (4 d_model, as GPT-2)
      params_nonembed=(25_472, 56_640, 150_080, 793_344),   # outside wte/wpe; 31x span
      init_std=0.02,                       # GPT-2's N(0, 0.02^2) kernels and embeddings
      claim5_size=1))                      # index of the member claim (5) trains twice


def get_config(variant: str = "all") -> ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  c = default_train_config()
  c.variant = variant            # the name written into results.json
  c.claims = ("all",) if variant in ("all", "tiny") else (variant,)   # registry names | all
  c.steps = 2000                 # updates per family member (Pythia: 143000; scaled down)
  c.checkpoint_steps = ()        # () : 1, 2, 4, ..., steps (log-spaced, as Pythia's early ones)
  c.log_every = 100
  c.checkpoint.async_save = False
  c.optim.name = "adamw"         # Pythia: Adam(W), b1 0.9, b2 0.95, eps 1e-8, wd 0.01
  c.optim.lr = 1e-3              # Pythia-14m/70m peak learning rate
  c.optim.b2 = 0.95
  c.optim.weight_decay = 0.01
  c.optim.schedule = "warmup_cosine"   # Pythia: 1% warm-up, cosine to 10% of the peak
  c.optim.warmup_steps = 20
  c.optim.final_lr_fraction = 0.1
  c.optim.clip_norm = 1.0        # Pythia's gradient clipping
  c.family = family_block()      # the sizes (see family_block)
  c.data = ConfigDict(dict(
      seq_len=128,               # tokens per row (also n_positions); Pythia 2048, scaled down
      batch=16,                  # rows per step (not stated by the seed; fits 2 cores)
      max_docs_per_source=300,   # default corpus: first n prose + n code documents (0: all)
      heldout_fraction=0.1,      # documents of each source held out (eval and cloze tasks)
      eval_sequences=64,         # held-out rows for next-token loss/accuracy (half code)
      cloze_items=256))          # items per cloze task (identifier in code, word in prose)
  nm = neuromfa_block()
  nm.S = 32                      # sampled neurons per layer, the same for every size
  nm.seeds = (0, 1, 2, 3, 4)     # network samples: error bars over these (released: 10)
  c.neuromfa = nm                # configs/neuromfa.py fields, the released one-hop algorithm
  c.z = 2.0                      # a difference counts when mean -/+ z*SE excludes 0
  c.n_boot = 1000                # bootstrap resamples (correlations, the log fit)
  c.boot_seed = 0
  c.claim5 = ConfigDict(dict(
      dup_fraction=0.05,         # share of training rows duplicated ...
      dup_copies=20,             # ... this many extra times (~half of all sampled rows)
      finetune_steps=256,        # contaminated fine-tune of the last clean checkpoint
      finetune_lr=1e-3,          # constant learning rate of the fine-tune
      shuffle_seed=0))           # token shuffling of the contaminated text
  c.claim4 = claim4_block("tiny" if variant == "tiny" else "default")   # configs/neuromfa_vision.py:
                                 # Fashion-MNIST (apt-get install dataset-fashion-mnist), ResNet
                                 # and conv denoiser matched to params_nonembed; tiny: sklearn digits
  c.real = ConfigDict(dict(
      checkpoints=("minilm", "gemma3-270m")))   # real models beside the family (() : none)
  if variant == "tiny":
    c.steps = 16
    c.checkpoint_steps = (1, 4, 16)   # log-spaced, few segments (each compiles its step)
    c.log_every = 8
    c.optim.warmup_steps = 2
    c.family.update(dict(d_model=(8, 16, 24, 32), n_layers=(1, 1, 1, 2), n_heads=(1, 2, 2, 2),
                         d_mlp=(32, 64, 96, 128), params_nonembed=(888, 3_312, 7_272, 25_472)))
    c.data.update(dict(seq_len=32, batch=8, max_docs_per_source=6, eval_sequences=16,
                       cloze_items=32))
    c.neuromfa.S = 8
    c.neuromfa.seeds = (0, 1, 2)
    c.n_boot = 200
    c.claim5.finetune_steps = 4
    c.real.checkpoints = ()
    c.claim4.min_params = 3000     # the tiny family's 3,312 and 7,272 points (the smaller one
    c.claim4.max_params = 8000     # gives a 6-channel ResNet, too few nodes for the spectrum)
  return c
