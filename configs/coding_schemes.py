"""Coding schemes in wide Bayesian networks (van Meegen & Sompolinsky, Nat. Commun. 2025).

  python -m launch.coding_schemes --config=configs/coding_schemes.py:toy --workdir=/tmp/cs_toy
  python -m launch.coding_schemes --config=configs/coding_schemes.py:digits --workdir=/tmp/cs_digits
  python -m launch.coding_schemes --config=configs/coding_schemes.py:mnist --workdir=/tmp/cs_mnist
  python -m launch.coding_schemes --config=configs/coding_schemes.py:cifar10 --workdir=/tmp/cs_cifar

MNIST needs the four idx .gz files in $JAXCODE_DATA/mnist (default ~/.cache/jaxcode/data),
CIFAR-10 the binary batches in $JAXCODE_DATA/cifar-10-batches-bin. Override any field, e.g.
--config.model.width=512 --config.steps=40000.

Hyperparameters the paper does not publish in reachable form (notes/geometry.md A, Open
questions) are chosen here; the reasons:
* Readout prior variance a_var * P (a_var_p_power = 1). For one neuron coding a class of
  P_c inputs the prior cost of the readout, a^2 / var_a, and of the pre-activations,
  sum_mu z_mu^2 ~ P_c z^2, balance at a fixed product a z only if var_a grows like P; with
  this scaling the per-neuron cost, and so the strength of feature learning, does not
  change with the size of the training set.
* a_var = 0.002: a_var sets that strength (smaller = stronger symmetry breaking). On the
  toy task at N = 64 the three signatures are clear at 0.002 and absent at 1 (all three
  nonlinearities look analog there; measured with tests/coding_schemes_test.py's set-up).
* beta grows like N (mean-field: the prior cost is extensive in N, the loss is not), so the
  training error stays near zero; beta = 1500 N on the toy task gives train MSE ~ 3e-4.
* Preconditioned Langevin (step times the prior variance): every weight relaxes under the
  prior on the same time scale 1, so steps * step_size is the sampled time in prior units.

A rerun in the same workdir may differ from the first run only in fields that cannot change
results: progress, log_every, checkpoint.*, mesh.*, distributed.*, and steps under a
constant learning-rate schedule (jaxcode/workdir.py); any other difference is refused.
"""

from ml_collections import ConfigDict

from configs._train import default_train_config

VARIANTS = {   # name (= data.name): the task the networks learn
    "toy": "16 random inputs in 3 unbalanced classes, width 256, 40k Langevin steps",
    "digits": "scikit-learn's 8x8 digits, 300 training images, width 128",
    "mnist": "MNIST, 1000 training images, width 512 (idx files in $JAXCODE_DATA/mnist)",
    "cifar10": "CIFAR-10, 1000 training images, width 512 (binary batches in $JAXCODE_DATA)",
}
TASKS = tuple(VARIANTS)
COMMON_OVERRIDES = (   # (field, what it sets): shown by --help
    ("nonlinearities", "one posterior per nonlinearity, e.g. '(\"erf\",)'"),
    ("steps", "Langevin updates per nonlinearity"),
    ("model.width", "N, hidden units per layer"),
    ("data.n_train", "P, training points"),
    ("sampling.beta", "inverse temperature of the loss"),
    ("sampling.step_size.relu", "Langevin step of the ReLU network (also .linear, .erf)"),
    ("sampling.n_chains", "independent chains"),
)


def get_config(task: str = "toy") -> ConfigDict:
  if task not in TASKS:
    raise ValueError(f"variant {task!r}: expected one of {', '.join(VARIANTS)}")
  c = default_train_config()
  c.task = task                     # name written into results.json
  c.nonlinearities = ("linear", "erf", "relu")   # one posterior per nonlinearity, one run
  c.steps = 40_000                  # Langevin updates per nonlinearity
  c.log_every = 1000                # metrics.jsonl interval
  c.checkpoint.every = 5000         # checkpoint interval; rerunning resumes from the latest
  c.mesh.data = -1                  # chains are sharded over all devices
  c.mesh.model = 1                  # no model parallelism
  c.data = ConfigDict(dict(
      name=task,                    # toy | digits | mnist | cifar10
      n_train=16,                   # P, training points (balanced per class for images)
      n_test=256,                   # test points
      n_in=0,                       # toy only: input dimension N0 (0: = P)
      proportions=(0.5, 0.25, 0.25),  # toy only: class proportions (sum to 1)
      seed=0,                       # data subset / toy inputs
      data_dir=""))                 # mnist/cifar10 root ('' : $JAXCODE_DATA or ~/.cache/jaxcode/data)
  c.model = ConfigDict(dict(
      width=256,                    # N, hidden units per layer
      depth=1,                      # L, hidden layers
      readout="mean_field",         # mean_field (1/N) | lazy (1/sqrt N)
      w_var=1.0,                    # prior variance of hidden weights (fan-in scaled in forward)
      a_var=0.002,                  # readout prior variance / P**a_var_p_power (see docstring)
      a_var_p_power=1.0))           # readout prior variance scales like P**this
  c.sampling = ConfigDict(dict(
      n_chains=8,                   # independent chains (sharded over devices)
      beta=4e5,                     # inverse temperature of the MSE loss (~1500 N, docstring)
      step_size=ConfigDict(dict(    # preconditioned Langevin step per nonlinearity
          linear=2e-4, erf=2e-4, relu=2e-4)),
      precondition=True,            # step scaled by the prior variance of each weight
      burn_in=20_000,               # updates before the first stored sample
      thin=1000,                    # updates between stored samples
      n_samples=20,                 # samples stored per chain (ring buffer)
      bad_sigma=1e4,                # divergence: a weight beyond this many prior std
      check_step_size=True))        # pre-run check eta * lambda_max(Hessian) < 2 at a prior draw
  if task == "digits":
    c.steps = 10_000
    c.checkpoint.every = 2000
    c.data.n_train = 300            # 30 per class of the 1797 8x8 digits
    c.data.n_test = 500             # from the half of the digits not used for training
    c.model.width = 128
    c.sampling.n_chains = 4
    # Finite beta: lambda_max of the preconditioned Hessian is ~0.64 beta here (measured by
    # the step-size check at a prior draw), so beta = 1e3 allows steps of 3e-4 (eta*lambda
    # ~ 0.2) and 10k steps sample ~3 prior time units; beta = 1e5 would need 100x more steps.
    c.sampling.beta = 1e3
    c.sampling.step_size = ConfigDict(dict(linear=3e-4, erf=3e-4, relu=3e-4))
    c.sampling.burn_in = 4000
    c.sampling.thin = 500
    c.sampling.n_samples = 12
  if task in ("mnist", "cifar10"):
    c.steps = 20_000
    c.data.n_train = 1000           # 100 per class
    c.data.n_test = 1000            # the paper's 1000 test inputs (Fig. 6d)
    c.model.width = 512
    c.sampling.beta = 2e3
    c.sampling.step_size = ConfigDict(dict(linear=5e-4, erf=5e-4, relu=5e-4))
    c.sampling.burn_in = 10_000
    c.sampling.thin = 1000
    c.sampling.n_samples = 10
  return c
