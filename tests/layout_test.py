"""The house rules of ../shared/DESIGN.md, checked on the source: layers import only from
below, experiments never import each other, configs import no JAX, no function is over 60
lines."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

from tests.launch_util import REPO

PKG = pathlib.Path(REPO) / "jaxcode"
# layer of each top-level part of jaxcode (DESIGN.md: a module imports only lower layers;
# report/ imports layers 0-3, bench/ 0-4; experiments call report/ for their figures)
LAYERS = {"errors": 0, "faults": 0, "parallel": 0, "workdir": 0, "cli": 0, "models": 1,
          "estimators": 1, "data": 2, "train": 2, "analysis": 3, "pipeline": 4,
          "experiments": 5, "report": 5, "bench": 5}
CEILING = {"report": 3, "bench": 4}            # the highest layer each may import
ALSO = {("experiments", "report")}             # (importer, imported) allowed beside the layers


def _imports(path: pathlib.Path) -> list[str]:
  tree = ast.parse(path.read_text())
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      out += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    elif isinstance(node, ast.Import):
      out += [a.name for a in node.names]
  return [m for m in out if m.startswith("jaxcode.")]


def _part(module: str) -> str:
  return module.split(".")[1]


def _modules():
  return sorted(p for p in PKG.rglob("*.py") if p.name != "__init__.py")


def test_no_experiment_imports_another():
  for path in (PKG / "experiments").glob("*.py"):
    bad = [m for m in _imports(path) if m.startswith("jaxcode.experiments.")
           and m != f"jaxcode.experiments.{path.stem}"]
    assert not bad, f"{path.name} imports {bad}"


def test_layers_import_only_from_below():
  for path in _modules():
    part = path.relative_to(PKG).parts[0].removesuffix(".py")
    if part not in LAYERS:
      continue
    ceiling = CEILING.get(part, LAYERS[part] - 1)
    for m in _imports(path):
      other = _part(m)
      if other not in LAYERS or other == part or (part, other) in ALSO:
        continue
      same_low_layer = LAYERS[other] == LAYERS[part] < 5 and part not in ("errors", "faults")
      assert LAYERS[other] <= ceiling or same_low_layer, f"{path} imports {m}"


def test_no_function_over_60_lines():
  long = []
  for path in _modules():
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > 60:
          long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
  assert not long, "\n".join(long)


@pytest.mark.parametrize("name", sorted(p.stem for p in (pathlib.Path(REPO) / "configs").glob("*.py")
                                       if p.stem != "__init__"))
def test_configs_import_no_jax(name):
  code = ("import sys; import configs.{0} as c; c.get_config(); "
          "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxcode', 'numpy'));"
          "print(bad); sys.exit(1 if bad else 0)").format(name)
  if name.startswith("_"):
    code = code.replace("c.get_config()", "c.default_train_config()")
  p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=REPO))
  assert p.returncode == 0, p.stdout + p.stderr
