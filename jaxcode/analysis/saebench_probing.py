"""SAEBench's sparse probing (eval_type_id sparse_probing) on offline labelled tasks.

SAEBench (shared/notes/evals.md section 1.3) probes mean-pooled activations of labelled texts:
per class a binary task, positives against an equal number of negatives drawn evenly from the
other classes; on the model's activations (`llm`) and on the dictionary's mean-pooled codes
(`sae`): the k dimensions with the largest |mean_pos - mean_neg| on the train split, then
scikit-learn LogisticRegression (L2, C = 1, max_iter 1000) on features standardised with the
train split's mean and standard deviation (ours: SAEBench fits raw features, so its C = 1
penalty depends on the activations' scale; small codes of a rescaled dictionary then fit
nothing); test accuracy, mean over classes,
then over tasks. Full-width probes use the same LogisticRegression on every dimension (SAEBench
trains a GPU probe and keeps its best test epoch, notes 5.5; ours never sees the test set).

Tasks here are offline (SAEBench's HF datasets are not): built by jaxcode.experiments.evaluate
from the corpus' source labels (prose / code), the concept categories of
resources/concepts/categories.json in sentence templates, and first letters of vocabulary
words. Examples carry a group id (a document, a word) and the split keeps groups whole.
"""

from __future__ import annotations

import numpy as np

from jaxcode.errors import ConfigError

TOP_KS = (1, 2, 5, 10, 20, 50, 100)   # the k of SAEBench's output keys (not run: null)


def check_labels(task: str, labels) -> None:
  """A task needs at least two classes, each with at least two groups' worth of examples."""
  classes = sorted(set(labels))
  if len(classes) < 2:
    raise ConfigError(f"probing task {task!r}: its labels hold one class "
                      f"({classes[0] if classes else 'none'!r}): expected at least two")


def check_ks(ks) -> tuple[int, ...]:
  ks = tuple(ks)
  if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
    raise ConfigError(f"probing.ks={ks!r}: expected positive integers")
  return ks


def split_groups(groups_N, test_fraction: float, seed: int) -> np.ndarray:
  """[N] bool test mask: a seeded share of the groups, whole, per class-free permutation."""
  g = np.asarray(groups_N)
  uniq = np.unique(g)
  rng = np.random.default_rng(seed)
  n_test = max(1, int(round(len(uniq) * test_fraction)))
  test_groups = rng.permutation(uniq)[:n_test]
  return np.isin(g, test_groups)


def binary_rows(labels_N, cls, rng) -> tuple[np.ndarray, np.ndarray]:
  """(rows, y): the positives of `cls` and as many negatives, drawn evenly (round robin over
  the other classes, seeded)."""
  labels = np.asarray(labels_N)
  pos = np.nonzero(labels == cls)[0]
  pools = [list(rng.permutation(np.nonzero(labels == c)[0])) for c in np.unique(labels)
           if c != cls]
  neg = []
  while len(neg) < len(pos) and any(pools):
    for p in pools:
      if p and len(neg) < len(pos):
        neg.append(p.pop())
  rows = np.concatenate([pos, np.asarray(neg, np.int64)])
  return rows, np.concatenate([np.ones(len(pos), bool), np.zeros(len(neg), bool)])


def probe_accuracy(x_train, y_train, x_test, y_test, k: int | None) -> float:
  """Test accuracy of LogisticRegression on the top-k dims by |mean gap| (None: all),
  standardised by the train split."""
  from sklearn.linear_model import LogisticRegression
  if k is not None:
    gap = np.abs(x_train[y_train].mean(0) - x_train[~y_train].mean(0))
    dims = np.argsort(-gap, kind="stable")[:k]
    x_train, x_test = x_train[:, dims], x_test[:, dims]
  mu, sd = x_train.mean(0), x_train.std(0)
  sd = np.where(sd > 0, sd, 1.0)
  lr = LogisticRegression(C=1.0, max_iter=1000).fit((x_train - mu) / sd, y_train)
  return float(np.mean(lr.predict((x_test - mu) / sd) == y_test))


def class_splits(labels_N, test_N, seed: int) -> list[tuple]:
  """(class, rows, y, train mask, test mask) of each one-vs-rest task of one labelled task;
  a class whose train or test split lacks positives or negatives is refused in one line (it
  depends on the labels and the split only, so it is checked before compute)."""
  labels, test = np.asarray(labels_N), np.asarray(test_N, bool)
  classes = np.unique(labels)
  if len(classes) == 2:          # the two one-vs-rest tasks are one task
    classes = classes[:1]
  out = []
  for ci, cls in enumerate(classes):
    rng = np.random.default_rng([seed, ci])
    rows, y = binary_rows(labels, cls, rng)
    tr, te = ~test[rows], test[rows]
    if len(set(y[tr])) < 2 or len(set(y[te])) < 2:
      raise ConfigError(f"class {str(cls)!r}: its train or test split lacks positives or "
                        "negatives: expected more examples per class")
    out.append((cls, rows, y, tr, te))
  return out


def task_accuracies(spaces: dict, labels_N, test_N, ks, seed: int) -> dict:
  """{'<space>_test_accuracy', '<space>_top_<k>_test_accuracy'} averaged over the classes of
  one task; spaces: name -> [N, F] pooled features (e.g. 'llm', 'sae')."""
  out: dict = {}
  for cls, rows, y, tr, te in class_splits(labels_N, test_N, seed):
    for name, x in spaces.items():
      x = np.asarray(x, np.float64)[rows]
      acc = {f"{name}_test_accuracy": probe_accuracy(x[tr], y[tr], x[te], y[te], None)}
      for k in ks:
        acc[f"{name}_top_{k}_test_accuracy"] = probe_accuracy(x[tr], y[tr], x[te], y[te],
                                                              min(k, x.shape[1]))
      for key, v in acc.items():
        out.setdefault(key, []).append(v)
  return {k: float(np.mean(v)) for k, v in out.items()}


def result_parts(per_task: dict, ks) -> tuple[dict, list]:
  """(metrics {'llm': .., 'sae': ..}, details rows) from {task: task_accuracies(...)}: every
  SAEBench key present, those not run null."""
  metrics: dict = {"llm": {}, "sae": {}}
  for space in metrics:
    keys = [f"{space}_test_accuracy"] + [f"{space}_top_{k}_test_accuracy"
                                         for k in sorted(set(TOP_KS) | set(ks))]
    for key in keys:
      vals = [r[key] for r in per_task.values() if key in r]
      metrics[space][key] = float(np.mean(vals)) if vals else None
  details = [{"dataset_name": t, **{k: r.get(k) for space in metrics for k in metrics[space]}}
             for t, r in per_task.items()]
  return metrics, details
