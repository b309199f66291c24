"""SAEBench's feature-absorption eval (first-letter task, eval_type_id absorption_first_letter).

Method of Chanin et al. (arXiv 2409.14507) as SAEBench implements it (shared/notes/evals.md
section 2), built from the model's own vocabulary and prompts:

1. Vocabulary: tokens whose decoded string, one leading space stripped, is ASCII letters only
   (`letter_vocab`). Split by token into train / test (`test_fraction`, seeded).
2. Prompts (`prompt_ids`): "\\n" + n_icl examples "{ex} has the first letter: {EX[0]}" (from
   the same split, the word itself excluded) joined by "\\n", then the word token and
   " has the first letter:". The word goes in as its own token id, so the read position is
   that token's index (SAEBench assumes -6 for its tokenizers); the activation is read there.
3. Ground-truth probe per letter on the activations: scikit-learn LogisticRegression with
   balanced class weights, one-vs-rest (SAEBench: 26 BCE outputs with pos_weight, Adam); a
   letter counts when its test F1 (decision > 0) exceeds min_probe_f1; fewer than
   min_letters such letters: the eval reports itself aborted (null metrics), as SAEBench
   aborts, instead of lowering the thresholds.
4. Split latents per letter: latents ranked by the weight of an L1 logistic probe on the codes
   (liblinear, C = l1_c); for k = 1 .. k_max a balanced LogisticRegression on the top k;
   the split set is the top k at the largest k reached while every step raised test F1 by
   more than f1_jump (k = 1 always taken).
5. Per test token that the probe gets right (true letter, decision > 0), with u the probe's
   unit direction, a = x.u, c_i = cos(u, W_dec[i]), p_i = f_i c_i (f_i in the units of x:
   SAEBench assumes unit-norm decoder rows; pipeline.evals passes f_i ||W_dec[i]||, the
   decoder's raw-unit row norm folded into the code), M the split set,
   P_M = sum_{i in M} p_i (`token_scores`):
     absorption fraction: absorbers = latents outside M with c_i >= 0.1 and p_i > 0, the top
       3 by p_i, S their sum; 0 if P_M >= a or S / a < 0.4; else 1 if P_M <= 0; else
       A = min(S, a - P_M), fraction A / (A + P_M) clipped to [0, 1];
     full absorption: every split latent has f < 1e-8, the latent with the largest p has
       c >= 0.025, a >= 0 and p_top / a >= 0.4.
6. Per letter: fraction sum / #true positives, full count / #true positives; the scores are
   means over letters with their sample standard deviations.
"""

from __future__ import annotations

import dataclasses
import statistics
import string

import numpy as np

from jaxcode.errors import ConfigError

LETTERS = string.ascii_lowercase
TEMPLATE = " has the first letter:"


@dataclasses.dataclass(frozen=True)
class AbsorptionSettings:
  max_words: int = 2000        # vocabulary tokens used (evenly spaced over the letter tokens)
  n_icl: int = 10              # in-context examples per prompt
  test_fraction: float = 0.2   # share of tokens held out
  min_probe_f1: float = 0.6    # a letter counts when its ground-truth probe beats this F1
  min_letters: int = 20        # fewer counted letters: aborted
  k_max: int = 10              # largest k-sparse probe
  f1_jump: float = 0.03        # F1 gain that takes a further latent into the split set
  l1_c: float = 0.1            # inverse L1 strength of the latent-ranking probe
  seed: int = 42

  def check(self, where: str = "absorption.") -> None:
    for name in ("max_words", "n_icl", "min_letters", "k_max"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(f"{where}{name}={v!r}: expected a positive integer")
    if not 0 < self.test_fraction < 1:
      raise ConfigError(f"{where}test_fraction={self.test_fraction!r}: expected 0 < x < 1")
    for name in ("min_probe_f1", "f1_jump"):
      if not 0 <= getattr(self, name) < 1:
        raise ConfigError(f"{where}{name}={getattr(self, name)!r}: expected 0 <= x < 1")
    if not self.l1_c > 0:
      raise ConfigError(f"{where}l1_c={self.l1_c!r}: expected a positive number")


def letter_vocab(tokenizer, max_words: int) -> list[tuple[int, str]]:
  """(token id, word) of tokens decoding to ASCII letters (one leading space stripped),
  max_words of them evenly spaced over the id order."""
  out = []
  for i in range(len(tokenizer)):
    s = tokenizer.decode([i])
    w = s[1:] if s.startswith(" ") else s
    if w and w.isascii() and w.isalpha():
      out.append((i, w))
  if len(out) > max_words:
    idx = np.unique(np.round(np.linspace(0, len(out) - 1, max_words)).astype(int))
    out = [out[j] for j in idx]
  return out


def prompt_ids(tokenizer, words: list[tuple[int, str]], n_icl: int, seed: int,
               prefix: list[int]) -> tuple[list[list[int]], list[int]]:
  """Token ids of every word's ICL prompt and the read position (the word token's index);
  ICL examples drawn (seeded) from `words` without the word itself."""
  rng = np.random.default_rng(seed)
  tail = tokenizer(TEMPLATE, add_special_tokens=False)["input_ids"]
  ids, pos = [], []
  for j, (tid, _) in enumerate(words):
    pick = rng.choice(len(words) - 1, size=min(n_icl, len(words) - 1), replace=False)
    pick = np.where(pick >= j, pick + 1, pick)
    text = "\n" + "\n".join(f"{words[q][1]}{TEMPLATE} {words[q][1][0].upper()}"
                            for q in pick) + "\n"
    head = prefix + tokenizer(text, add_special_tokens=False)["input_ids"]
    ids.append(head + [tid] + tail)
    pos.append(len(head))
  return ids, pos


def token_scores(a_N, f_NM, c_M, main) -> tuple[np.ndarray, np.ndarray]:
  """(absorption fraction [N], full absorption [N] bool) per token (module doc, step 5)."""
  a_N, f_NM, c_M = (np.asarray(v, np.float64) for v in (a_N, f_NM, c_M))
  main = np.asarray(main, np.int64)
  p = f_NM * c_M
  pm = p[:, main].sum(1)
  cand = np.where((c_M >= 0.1) & (p > 0), p, 0.0)
  cand[:, main] = 0.0
  s = -np.sort(-cand, axis=1)[:, :3].sum(1)
  with np.errstate(divide="ignore", invalid="ignore"):
    small = (pm >= a_N) | (s / a_N < 0.4) | (a_N <= 0)
    amount = np.minimum(s, a_N - pm)
    frac = np.where(pm <= 0, 1.0, amount / (amount + pm))
  frac = np.where(small, 0.0, np.clip(frac, 0.0, 1.0))
  top = np.argmax(p, axis=1)
  p_top = p[np.arange(len(top)), top]
  with np.errstate(divide="ignore", invalid="ignore"):
    full = ((f_NM[:, main] < 1e-8).all(1) & (c_M[top] >= 0.025) & (a_N >= 0)
            & (p_top / a_N >= 0.4))
  return frac, full


def _f1(y_true, y_pred) -> float:
  from sklearn.metrics import f1_score
  return float(f1_score(y_true, y_pred, zero_division=0.0))


def split_latents(f_train, y_train, f_test, y_test, s: AbsorptionSettings) -> list[int]:
  """The split set of one letter (module doc, step 4)."""
  from sklearn.linear_model import LogisticRegression
  l1 = LogisticRegression(l1_ratio=1.0, solver="liblinear", C=s.l1_c, max_iter=500,
                          class_weight="balanced").fit(f_train, y_train)
  gap = f_train[y_train].mean(0) - f_train[~y_train].mean(0)
  order = np.lexsort((-gap, -l1.coef_[0]))       # L1 weight first, mean gap breaks ties
  chosen, best = [], -1.0
  for k in range(1, min(s.k_max, f_train.shape[1]) + 1):
    top = order[:k]
    lr = LogisticRegression(max_iter=500, class_weight="balanced").fit(f_train[:, top], y_train)
    f1 = _f1(y_test, lr.predict(f_test[:, top]))
    if k > 1 and f1 - best <= s.f1_jump:
      break
    chosen, best = [int(i) for i in top], f1
  return chosen


def split_tokens(n: int, test_fraction: float, seed: int) -> np.ndarray:
  """[n] bool: held-out tokens (a seeded share)."""
  rng = np.random.default_rng(seed)
  test = np.zeros(n, bool)
  test[rng.permutation(n)[:max(1, int(round(n * test_fraction)))]] = True
  return test


def absorption(x_ND, codes_NM, w_dec_MD, letters_N, test_N, s: AbsorptionSettings) -> dict:
  """The eval on activations at the read position: x [N, D], codes [N, M], W_dec [M, D],
  letters [N] (0..25), test [N] bool. Returns {'metrics', 'details', 'probe_f1', 'aborted'}."""
  from sklearn.linear_model import LogisticRegression
  x, f = np.asarray(x_ND, np.float64), np.asarray(codes_NM, np.float64)
  letters, test = np.asarray(letters_N), np.asarray(test_N, bool)
  w_unit = np.asarray(w_dec_MD, np.float64)
  w_unit = w_unit / np.maximum(np.linalg.norm(w_unit, axis=-1, keepdims=True), 1e-12)
  details, probe_f1 = [], {}
  for li in np.unique(letters):
    y = letters == li
    if y[~test].sum() < 2 or y[test].sum() < 1 or (~y[~test]).sum() < 2:
      continue
    probe = LogisticRegression(max_iter=1000, class_weight="balanced").fit(x[~test], y[~test])
    dec = probe.decision_function(x[test])
    f1 = _f1(y[test], dec > 0)
    probe_f1[LETTERS[li]] = f1
    if f1 <= s.min_probe_f1:
      continue
    main = split_latents(f[~test], y[~test], f[test], y[test], s)
    u = probe.coef_[0] / np.linalg.norm(probe.coef_[0])
    tp = test & y
    tp[test] = y[test] & (dec > 0)
    frac, full = token_scores(x[tp] @ u, f[tp], w_unit @ u, main)
    n_tp = int(tp.sum())
    details.append({"first_letter": LETTERS[li], "mean_absorption_fraction": frac.sum() / n_tp,
                    "full_absorption_rate": full.sum() / n_tp,
                    "num_full_absorption": int(full.sum()), "num_probe_true_positives": n_tp,
                    "num_split_features": len(main)})
  aborted = len(details) < s.min_letters
  return {"metrics": summary(details, aborted), "details": details, "probe_f1": probe_f1,
          "aborted": aborted}


def summary(details: list[dict], aborted: bool) -> dict:
  """SAEBench's `mean` category: means over letters and sample standard deviations (null
  when aborted; a standard deviation of one letter is null)."""
  out = {}
  for key, col in (("absorption_fraction_score", "mean_absorption_fraction"),
                   ("full_absorption_score", "full_absorption_rate"),
                   ("num_split_features", "num_split_features")):
    vals = [float(d[col]) for d in details]
    ok = not aborted and len(vals) > 0
    out[f"mean_{key}"] = statistics.mean(vals) if ok else None
    out[f"std_dev_{key}"] = statistics.stdev(vals) if ok and len(vals) > 1 else None
  return {"mean": out}
