"""NeuroMFA of given checkpoints (default: the embedded MiniLM), variants by argument.

  python -m launch.neuromfa --config=configs/neuromfa.py --workdir=/tmp/nmfa_minilm
  python -m launch.neuromfa --config=configs/neuromfa.py:multihop --workdir=/tmp/nmfa_mh
  python -m launch.neuromfa --config=configs/neuromfa.py:pythia14m --workdir=/tmp/nmfa_p14m  # online
  python -m launch.neuromfa --config=configs/neuromfa.py --workdir=/tmp/nmfa_run \
      --config.checkpoints='("orbax:/tmp/emergence",)'

Checkpoint specs: 'minilm' | 'hub:ID@REV' | 'orbax:RUN_DIR[@STEP]' | a local HF directory
(jaxcode/pipeline/neuromfa.py). A series must share one architecture.

A rerun in the same workdir may differ from the first run only in fields that cannot change
results: progress, log_every, checkpoint.*, mesh.*, distributed.*, and steps under a
constant learning-rate schedule (jaxcode/workdir.py); any other difference is refused.
"""

from ml_collections import ConfigDict

VARIANTS = {   # name: what it analyses
    "minilm": "the embedded MiniLM, the released one-hop algorithm",
    "multihop": "MiniLM, multi-hop shortest-path distances, S = 32",
    "pythia14m": "27 training checkpoints of EleutherAI/pythia-14m from the Hub (online)",
    "tiny": "the GPT-2 test fixture, S = 8: seconds; what the tests run",
}
COMMON_OVERRIDES = (   # (field, what it sets): shown by --help
    ("checkpoints", "the series, e.g. '(\"orbax:/tmp/emergence\",)'"),
    ("S", "sampled neurons per layer"),
    ("seeds", "index samples, e.g. '(0,1,2)'"),
    ("mode", "paper | multihop"),
    ("q_step", "spacing of the q grid (q_min .. q_max)"),
)
PYTHIA_STEPS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 3000, 13000, 23000, 33000,
                43000, 53000, 63000, 73000, 83000, 93000, 103000, 113000, 123000, 133000, 143000)


def stage_block() -> ConfigDict:
  """The NeuroMFA stage's fields (jaxcode/pipeline/neuromfa.py), declared once: this
  experiment's top level holds them, launch.emergence and the atlas embed them as their
  neuromfa block (the released one-hop algorithm on 64 sampled neurons per layer)."""
  c = ConfigDict()
  c.S = 64                       # sampled neurons per layer (released model2network.py: 64)
  c.seeds = (0,)                 # one index sample per seed, reused over the series (released: 10)
  c.null_seed = 1                # seed of the i.i.d. Gaussian null's weights
  c.mode = "paper"               # paper (released one-hop algorithm) | multihop (shortest paths)
  c.filter_mode = 0              # released spectrum filters: 0 none, 1 f>0, 2 alpha drift, 3 both
  c.residual = False             # residual-stream skip edges (multihop only)
  c.T = 150                      # paper mode: one-hop distances kept in (1, T]
  c.q_min = -3.0                 # q range (released: -3 .. 3 step 0.1)
  c.q_max = 3.0
  c.q_step = 0.1
  c.multihop = ConfigDict(dict(
      r_min=2.0,                 # radius grid: geometric from r_min to r_max (distance units 1/|w|)
      r_max=60.0,                # (MiniLM: R^2 0.93-0.97 over 2..60; check r2 for other models)
      n_radii=16,
      window=(),                 # (lo, hi) fit window inside the grid; () = the whole grid
      p=-1.0,                    # edge length lam*|w|^p + gamma
      lam=1.0,
      gamma=0.0,
      directed=False,            # False: paths may zig-zag between layers
      normaliser="node",         # node (released: p_i = N_i(r)/N_i(r_max)) | global (p_i = N_i/N)
      skip_length=1.0))          # length of a residual skip edge
  return c


def get_config(variant: str = "minilm") -> ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  c = ConfigDict()
  c.variant = variant            # the name written into results.json
  c.checkpoints = ("minilm",)    # the series, in order (specs: see the module docstring)
  c.update(stage_block())        # the stage's fields (stage_block), passed to it as they are
  if variant == "multihop":
    c.mode = "multihop"
    c.S = 32
    c.q_min, c.q_max, c.q_step = -2.0, 2.0, 0.25
  elif variant == "pythia14m":
    c.checkpoints = tuple(f"hub:EleutherAI/pythia-14m@step{s}" for s in PYTHIA_STEPS)
  elif variant == "tiny":        # what the tests run: the GPT-2 fixture
    c.checkpoints = ("tests/fixtures/lm/gpt2",)
    c.S = 8
  return c
