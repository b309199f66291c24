"""Feature-atlas table at every residual-stream layer of a language model.

python -m launch.four_properties --config=configs/four_properties.py --workdir=DIR
"""

from absl import app, flags
from ml_collections import config_flags

from jaxcode import cli

CONFIG = "configs/four_properties.py"   # the default --config
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, f"Experiment config (default {CONFIG}).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results and figures.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from jaxcode.experiments import four_properties
  cli.run_main(lambda: four_properties.run(_CONFIG.value, cli.absolute_workdir(_WORKDIR.value)))


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  cli.app_run(main, CONFIG)
