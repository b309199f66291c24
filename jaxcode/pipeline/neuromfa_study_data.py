"""The NeuroMFA study's data: the offline corpus split by document, and held-out tasks.

`study_data(block, seed)` returns the training rows and the held-out evaluation of
launch.neuromfa_study: documents of the default corpus (jaxcode.data.corpus; prose and
code) are split into train and held-out *documents* per source, each side packed into
[N, seq_len + 1] rows with MiniLM's WordPiece tokenizer (the one full tokenizer offline),
the vocabulary compacted to the token ids used (as launch.emergence does).

Held-out tasks, all with left context only (the models are decoder-only):
  next-token   loss and accuracy on held-out rows (prose and code).
  cloze_code   a masked identifier in held-out code: at a position whose token is a whole
               identifier (letters, digits, _ ; >= 3 characters; not a Python keyword;
               neither it nor the next token a '##' piece) that already occurred earlier
               in the row, choose among it and 3 other identifiers of the same row seen
               before (chance 1/4).
  cloze_prose  a word in held-out prose: a whole alphabetic word of >= 4 letters, not a
               stop word, against 3 distractor words drawn from the training prose's words
               (chance 1/4).
`degrade(train, mask, block, seed)` is the duplicated corpus of claim (5); `shuffle_tokens`
the contaminated (token-shuffled) text.
"""

from __future__ import annotations

import keyword
import re

import numpy as np

from jaxcode.data import corpus
from jaxcode.errors import ConfigError

N_CAND = 4   # candidates per cloze item (the true token first)
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{2,}$")
_WORD = re.compile(r"^[a-z]{4,}$")
_STOP = frozenset("that this with from have were been which their there what when where will "
                  "would them they these those than then into also each such only other more "
                  "some most must same does used".split())


def _tokenizer():
  from jaxcode.models.lm import hf
  from jaxcode.pipeline import model as model_lib
  return hf.load_tokenizer(model_lib.resolve("minilm").path)


def split_documents(docs, heldout_fraction: float, seed: int):
  """(train, held-out) documents: a seeded fraction of each source held out (>= 1 each)."""
  rng = np.random.default_rng(seed)
  train, held = [], []
  for src in dict.fromkeys(d.source for d in docs):
    mine = [d for d in docs if d.source == src]
    n = min(len(mine) - 1, max(1, int(round(heldout_fraction * len(mine)))))
    if n < 1:
      raise ConfigError(f"corpus source {src!r} has {len(mine)} document: expected >= 2 to "
                        f"hold one out")
    pick = set(rng.choice(len(mine), n, replace=False).tolist())
    train += [d for i, d in enumerate(mine) if i not in pick]
    held += [d for i, d in enumerate(mine) if i in pick]
  return train, held


def _is_ident(tok: str) -> bool:
  return bool(_IDENT.match(tok)) and not keyword.iskeyword(tok)


def code_cloze(rows, tokens_of, n_items: int, min_context: int = 8) -> np.ndarray:
  """[n, 2 + N_CAND] items (row, position, candidates...) of the identifier task."""
  items = []
  for r, row in enumerate(rows):
    toks = tokens_of(row)
    for t in range(min_context, len(row) - 1):
      if not _is_ident(toks[t]) or toks[t + 1].startswith("##"):
        continue
      seen = [row[j] for j in range(t) if _is_ident(toks[j]) and not toks[j + 1].startswith("##")]
      others = list(dict.fromkeys(i for i in seen if i != row[t]))
      if row[t] in seen and len(others) >= N_CAND - 1:
        items.append([r, t, row[t]] + others[-(N_CAND - 1):])   # the 3 most recent others
  return _thin(items, n_items)


def prose_cloze(rows, tokens_of, pool: np.ndarray, n_items: int, seed: int,
                min_context: int = 8) -> np.ndarray:
  """[n, 2 + N_CAND] items of the prose word task (distractors from `pool`)."""
  rng = np.random.default_rng(seed)
  items = []
  for r, row in enumerate(rows):
    toks = tokens_of(row)
    for t in range(min_context, len(row) - 1):
      if _WORD.match(toks[t]) and toks[t] not in _STOP and not toks[t + 1].startswith("##"):
        cand = rng.choice(pool[pool != row[t]], N_CAND - 1, replace=False)
        items.append([r, t, row[t]] + cand.tolist())
  return _thin(items, n_items)


def _thin(items: list, n: int) -> np.ndarray:
  if not items:
    return np.zeros((0, 2 + N_CAND), np.int32)
  arr = np.asarray(items, np.int32)
  return arr[corpus.evenly_spaced(len(arr), n)] if len(arr) > n else arr


def word_pool(rows, tokens_of, max_words: int = 2000) -> np.ndarray:
  """Distinct whole words (>= 4 letters, not stop words) of training prose rows."""
  found = {}
  for row in rows:
    toks = tokens_of(row)
    for t in range(len(row) - 1):
      if _WORD.match(toks[t]) and toks[t] not in _STOP and not toks[t + 1].startswith("##"):
        found[int(row[t])] = None
  return np.asarray(list(found)[:max_words], np.int32)


def _pack(docs, tok, seq_len: int):
  p = corpus.pack(docs, tok, seq_len + 1, concat=True)
  return p.input_ids.astype(np.int64), p.attention_mask.astype(np.int32)


def study_data(block, seed: int) -> dict:
  """Train rows, held-out rows and cloze items (compacted vocabulary); see the module doc.

  block: the config's `data` block (seq_len, max_docs_per_source, heldout_fraction,
  eval_sequences, cloze_items)."""
  tok = _tokenizer()
  docs = corpus.default_corpus(int(block.max_docs_per_source) or None)
  train_docs, held = split_documents(docs, float(block.heldout_fraction), seed)
  T = int(block.seq_len)
  train, train_mask = _pack(train_docs, tok, T)
  code, code_mask = _pack([d for d in held if d.source == corpus.CODE], tok, T)
  prose, prose_mask = _pack([d for d in held if d.source != corpus.CODE], tok, T)
  names = tok.convert_ids_to_tokens
  tokens_of = lambda row: names([int(i) for i in row])
  n = int(block.cloze_items)
  train_prose = train[: max(1, len(train) // 4)]         # the stream starts with prose
  items_code = code_cloze(code, tokens_of, n)
  items_prose = prose_cloze(prose, tokens_of, word_pool(train_prose, tokens_of), n, seed)
  used = np.unique(np.concatenate([a.ravel() for a in (train, code, prose)]))
  remap = lambda a: np.searchsorted(used, a).astype(np.int32)
  k = int(block.eval_sequences) // 2
  ev = np.concatenate([code[corpus.evenly_spaced(len(code), min(k, len(code)))],
                       prose[corpus.evenly_spaced(len(prose), min(k, len(prose)))]])
  ev_mask = np.concatenate([code_mask[corpus.evenly_spaced(len(code), min(k, len(code)))],
                            prose_mask[corpus.evenly_spaced(len(prose), min(k, len(prose)))]])
  out = {"train": remap(train), "train_mask": train_mask, "eval": remap(ev), "eval_mask": ev_mask,
         "cloze_code_rows": remap(code), "cloze_prose_rows": remap(prose),
         "vocab": int(len(used)), "n_train_docs": len(train_docs), "n_heldout_docs": len(held),
         "train_tokens": int(train_mask.sum())}
  for name, items in (("cloze_code", items_code), ("cloze_prose", items_prose)):
    if len(items) == 0:
      raise ConfigError(f"data: no {name} item in the held-out text, expected more held-out "
                        f"documents (data.heldout_fraction={block.heldout_fraction}) or longer "
                        f"rows (data.seq_len={T})")
    out[name] = np.concatenate([items[:, :2], remap(items[:, 2:])], axis=1)
  return out


def degrade(train: np.ndarray, mask: np.ndarray, dup_fraction: float, dup_copies: int,
            seed: int):
  """The duplicated corpus: a seeded `dup_fraction` of the rows repeated `dup_copies` more
  times (so a uniform sampler sees them (1 + dup_copies) times as often; the number of
  distinct rows is unchanged)."""
  rng = np.random.default_rng(seed)
  k = max(1, int(round(dup_fraction * len(train))))
  sub = np.sort(rng.choice(len(train), k, replace=False))
  reps = np.repeat(sub, int(dup_copies))
  return np.concatenate([train, train[reps]]), np.concatenate([mask, mask[reps]])


def shuffle_tokens(train: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
  """Every row's real tokens in a seeded random order (padding stays in place)."""
  rng = np.random.default_rng(seed)
  out = train.copy()
  for r in range(len(out)):
    idx = np.nonzero(mask[r])[0]
    out[r, idx] = out[r, rng.permutation(idx)]
  return out
