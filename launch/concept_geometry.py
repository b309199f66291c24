"""The geometry of SAE concepts: crystals, lobes and galaxy.

python -m launch.concept_geometry --config=configs/concept_geometry.py --workdir=DIR
"""

from absl import app, flags
from ml_collections import config_flags

from jaxcode import cli

CONFIG = "configs/concept_geometry.py"   # the default --config
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, f"Experiment config (default {CONFIG}).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the cache, SAEs and results.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from jaxcode.experiments import concept_geometry
  cli.run_main(lambda: concept_geometry.run(_CONFIG.value, cli.absolute_workdir(_WORKDIR.value)))


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  cli.app_run(main, CONFIG)
