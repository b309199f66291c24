"""What every launch main shares: config loading, --help, one-line errors, exit codes.

  launch_experiment(name, CONFIG)   a whole launch main: --config, --workdir, then
                             jaxcode.experiments.<name>.run(config, workdir) under run_main
  app_run(main, CONFIG)      absl's app.run with the launch checks first, before any compute
  run_main(fn)               bad input -> one line and exit 2 (and the workdir this command
                             created is removed); NaN -> exit 1; preemption -> exit 143

`--help` / `-h` prints the launch's purpose and command, the config file's variants (its
VARIANTS dict) and most often overridden fields (its COMMON_OVERRIDES), and exits 0. Each of
these is one line `error: ...` on stderr and exit 2: a config file that is missing, a
directory, does not load or lacks the variant; an override --config.FIELD of a field the
config lacks (naming the closest one); a value of the wrong type; an unknown flag.
"""

from __future__ import annotations

import ast
import difflib
import importlib.machinery
import importlib.util
import inspect
import os
import re
import shlex
import shutil
import sys
from typing import Any, Callable

from jaxcode.errors import ConfigError, NonFiniteError, Preempted

_HELP = ("--help", "-help", "-h", "--helpshort", "-?")
_WORK_FILES = ("results.json", "manifest.json", "_CHECKPOINT_METADATA")
_WORK_SUFFIXES = (".npy", ".npz", ".safetensors")


def fail(message) -> None:
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(2)


# ------------------------------------------------------------------ running a main

def _first_missing(path: str | None) -> str | None:
  """The topmost ancestor of `path` (or path itself) that does not exist yet."""
  if not path:
    return None
  path, missing = os.path.abspath(path), None
  while not os.path.exists(path):
    missing, parent = path, os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return missing


def _holds_work(path: str) -> bool:
  """Whether a directory holds anything a run computed (checkpoints, caches, results)."""
  for _, _, files in os.walk(path):
    if any(f in _WORK_FILES or f.endswith(_WORK_SUFFIXES) for f in files):
      return True
  return False


def _launch_workdir() -> str | None:
  from absl import flags
  try:
    return flags.FLAGS["workdir"].value
  except (KeyError, AttributeError):
    return None


def run_main(fn: Callable[[], Any], workdir: str | None = None) -> None:
  """Runs a launch main: bad input -> one line and exit 2, and the workdir this command
  created (if any, and unless it already holds computed work) is removed, so a refused run
  leaves nothing behind; NaN -> one line and exit 1; a signal-triggered stop -> one line and
  exit 143 (rerun to resume)."""
  created = _first_missing(workdir if workdir is not None else _launch_workdir())
  try:
    fn()
  except ConfigError as e:
    if created is not None and os.path.exists(created) and not _holds_work(created):
      shutil.rmtree(created, ignore_errors=True)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except NonFiniteError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except Preempted as e:
    print(f"preempted: {e}", file=sys.stderr)
    sys.exit(143)


# ------------------------------------------------------------------ config files

def config_files(folder: str) -> list[str]:
  return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                if f.endswith(".py") and not f.startswith("_"))


def _check_config_path(path: str, where: str, default: str | None) -> None:
  if not path:
    fail(f"{where}: expected a config file, e.g. --config={default}")
  if os.path.isdir(path):
    fail(f"{where}: {path} is a directory: expected a config file such as "
         f"{', '.join(config_files(path)[:6]) or 'FILE.py'}")
  if not os.path.isfile(path):
    fail(f"{where}: config file {path} does not exist (paths are relative to the current "
         "directory, usually the repository root)")


def load_config(spec: str, default: str | None = None):
  """(module, ConfigDict) of --config=PATH[:VARIANT], or one line and exit 2."""
  path, colon, variant = spec.partition(":")
  where = f"--config={spec}"
  _check_config_path(path, where, default)
  try:
    loader = importlib.machinery.SourceFileLoader("launch_config", path)
    module = importlib.util.module_from_spec(
        importlib.util.spec_from_file_location("launch_config", path, loader=loader))
    loader.exec_module(module)
  except Exception as e:  # the file's own error: syntax, imports, ...
    fail(f"{where}: config file {path} does not load: {type(e).__name__}: {e}")
  if not callable(getattr(module, "get_config", None)):
    fail(f"{where}: {path} defines no get_config()")
  try:
    return module, module.get_config(*([variant] if colon else []))
  except Exception as e:  # ValueError: get_config's own message (an unknown variant)
    fail(f"{where}: {e}" if isinstance(e, ValueError) else
         f"{where}: get_config({variant!r}) raised {type(e).__name__}: {e}")


def fields(c, prefix: str = "") -> list[str]:
  """Every dotted field name of a ConfigDict, blocks included."""
  from ml_collections import ConfigDict
  out = []
  for k in c.keys():
    out.append(prefix + k)
    if isinstance(c[k], ConfigDict):
      out += fields(c[k], f"{prefix}{k}.")
  return out


def check_overrides(cfg, argv: list[str]) -> None:
  """One line naming the first --config.FIELD the config lacks, and the closest field."""
  known = fields(cfg)
  for arg in argv[1:]:
    m = re.match(r"--?(?:no)?config\.([^=]*)", arg)
    if not m or m.group(1) in known:
      continue
    parent, _, rest = m.group(1).rpartition(".")
    while parent and parent not in known:   # the deepest block that exists
      parent, _, head = parent.rpartition(".")
      rest = f"{head}.{rest}"
    names = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == parent]
    close = difflib.get_close_matches(rest.split(".")[0], names, n=1)
    if close:
      fix = ".".join(([parent] if parent else []) + close + rest.split(".")[1:])
      fix = fix if fix in known else ".".join(([parent] if parent else []) + close)
      fail(f"unknown config field {arg}: did you mean --config.{fix}?")
    fail(f"unknown config field {arg}: {parent or 'the config'} has the fields "
         f"{', '.join(names)}")


# ------------------------------------------------------------------ --help

def _shown(cfg, dotted: str) -> str:
  for part in dotted.split("."):
    cfg = cfg[part]
  if isinstance(cfg, (tuple, list)):   # as typed: '("a", "b")'
    return "'" + repr(tuple(cfg)).replace("'", '"') + "'"
  return shlex.quote(str(cfg))


def _folder_help(path: str) -> list[str]:
  out = ["Configs (--config=FILE[:VARIANT]):"]
  files = config_files(path)
  for f in files:
    with open(f) as fh:
      doc = ast.get_docstring(ast.parse(fh.read())) or ""
    out.append(f"  {f:<{max(map(len, files))}}  {doc.splitlines()[0] if doc else ''}")
  return out


def _variant_help(module, path: str, variant: str) -> list[str]:
  variants = getattr(module, "VARIANTS", {})
  if not variants:
    return []
  width = max(len(v) for v in variants)
  return ([f"Variants (--config={path}:NAME; shown: {variant}):"] +
          [f"  {v:<{width}}  {variants[v] if isinstance(variants, dict) else ''}".rstrip()
           for v in variants] + [""])


def _override_help(module, cfg, path: str, variant: str) -> list[str]:
  rows = [(f"--config.{f}={_shown(cfg, f)}", d)
          for f, d in getattr(module, "COMMON_OVERRIDES", ())]
  if not rows:
    return []
  out = [f"Fields most often overridden (values of {path}:{variant}):"]
  width = min(max(len(r) for r, _ in rows), 40)
  for r, d in rows:   # a long value gets its own line
    out += [f"  {r:<{width}}  {d}"] if len(r) <= width else [f"  {r}", f"  {'':<{width}}  {d}"]
  return out + [""]


def help_text(spec: str, default: str | None) -> str:
  out = [(sys.modules["__main__"].__doc__ or "").strip(), ""]
  path, colon, variant = spec.partition(":")
  if os.path.isdir(path):
    return "\n".join(out + _folder_help(path))
  module, cfg = load_config(spec, default)
  if not colon:
    params = list(inspect.signature(module.get_config).parameters.values())
    variant = params[0].default if params and params[0].default is not params[0].empty else ""
  out += _variant_help(module, path, variant) + _override_help(module, cfg, path, variant)
  out += ["Any field is set the same way: --config.FIELD=VALUE.",
          f"Flags: --config=FILE[:VARIANT] (default {default}), --workdir=DIR; --helpfull lists "
          "every flag."]
  return "\n".join(out)


# ------------------------------------------------------------------ app_run

def _config_spec(argv: list[str]) -> str | None:
  spec = None
  for i, a in enumerate(argv[1:], 1):
    m = re.fullmatch(r"--?config(?:=(.*))?", a, re.S)
    if m:
      spec = m.group(1) if m.group(1) is not None else (argv[i + 1] if i + 1 < len(argv) else "")
  return spec


def _parse_flags(argv: list[str]) -> list[str]:
  from absl import app, flags
  app.define_help_flags()   # --helpfull
  try:
    return flags.FLAGS(sys.argv)
  except flags.Error as e:
    missing = re.search(r"Flag --(\w+) must have a value other than None", str(e))
    fail(f"--{missing[1]} is required: {flags.FLAGS[missing[1]].help}" if missing else e)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    bad = " ".join(a for a in argv[1:] if re.match(r"--?(no)?config\.", a))
    message = re.sub(r"\\n|[\\'\"]", " ", str(e))
    fail(f"bad config override {bad}: {message} ({type(e).__name__})")


def app_run(main, config: str | None = None) -> None:
  """absl app.run with the launch checks first, before any compute (see the module doc);
  `config` is the launch's default --config."""
  from absl import app, logging
  argv = list(sys.argv)
  spec = _config_spec(argv)
  target = spec if spec is not None else config
  if any(a in _HELP for a in argv[1:]):
    print(help_text(target, config) if target else (sys.modules["__main__"].__doc__ or "").strip())
    sys.exit(0)
  if target is not None:
    check_overrides(load_config(target, config)[1], argv)
    if spec is None:   # absl then parses the default with the overrides, as a given one
      sys.argv = [argv[0], f"--config={config}", *argv[1:]]
  remaining = _parse_flags(argv)
  quiet = not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:])

  def wrapped(argv):
    if quiet:   # orbax logs every save at INFO; keep the progress lines readable
      logging.set_verbosity(logging.WARNING)
    return main(argv)

  app.run(wrapped, flags_parser=lambda argv: remaining)


def absolute_workdir(workdir: str | None) -> str:
  """The --workdir flag as an absolute path (stages store paths relative to it)."""
  if not workdir:
    raise ConfigError("--workdir is empty: expected a directory to write the run into")
  return os.path.abspath(os.path.expanduser(workdir))


def launch_experiment(name: str, config: str) -> None:
  """The main of `python -m launch.<name>`: defines --config (default `config`) and
  --workdir, then runs jaxcode.experiments.<name>.run(config, absolute workdir) under
  run_main, after app_run's checks."""
  import importlib
  from absl import app, flags
  from ml_collections import config_flags
  cfg = config_flags.DEFINE_config_file("config", None, f"Experiment config (default {config}).",
                                        lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    experiment = importlib.import_module(f"jaxcode.experiments.{name}")
    run_main(lambda: experiment.run(cfg.value, absolute_workdir(workdir.value)))

  flags.mark_flag_as_required("workdir")
  app_run(main, config)
