"""Text corpora and packing them into fixed-length token sequences.

The default corpus needs nothing but the Python installation: English prose from
Python's own documentation (`pydoc_data.topics`) and standard-library docstrings, and
code from standard-library source files. Every document has an id and a source label
("prose" or "code"), which per-token document ids carry through tokenisation so that
activations can be grouped by source later. User corpora: plain-text files, JSONL
with a text field, and Hugging Face datasets (optional `datasets` package, online).
Everything is in a deterministic order.
"""

from __future__ import annotations

import ast
import glob
import itertools
import json
import os
import sysconfig
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from jaxcode.errors import ConfigError

PROSE, CODE = "prose", "code"


@dataclass(frozen=True)
class Document:
  id: str       # unique within a corpus, e.g. "pydoc:for", "code:json/decoder.py"
  source: str   # label: "prose", "code", or a user label
  text: str


# ---------------------------------------------------------------- the default corpus

def pydoc_documents() -> list[Document]:
  """Python's language reference topics (the text `help('for')` shows), one per topic."""
  from pydoc_data import topics
  return [Document(f"pydoc:{k}", PROSE, v.strip()) for k, v in sorted(topics.topics.items())
          if v.strip()]


def stdlib_files(include_packages: bool = False) -> list[str]:
  """Sorted standard-library .py files (top level; with packages, one level of packages)."""
  root = sysconfig.get_paths()["stdlib"]
  files = glob.glob(os.path.join(root, "*.py"))
  if include_packages:
    files += glob.glob(os.path.join(root, "*", "*.py"))
  skip = ("site-packages", "test", "idlelib", "lib2to3", "__phello__", "tkinter", "turtledemo")
  rel = sorted(os.path.relpath(f, root) for f in files)
  return [os.path.join(root, r) for r in rel if not r.split(os.sep)[0] in skip
          and not r.startswith("_") and "-" not in r]


def docstring_documents(files: Sequence[str] | None = None,
                        min_chars: int = 200) -> Iterator[Document]:
  """Module, class and function docstrings of at least min_chars from stdlib sources (lazy)."""
  root = sysconfig.get_paths()["stdlib"]
  for path in files if files is not None else stdlib_files():
    try:
      with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
      continue
    mod = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
    nodes = [(mod, tree)] + [
        (f"{mod}.{n.name}", n) for n in ast.walk(tree)
        if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    seen = set()
    for name, node in nodes:
      doc = ast.get_docstring(node, clean=True)
      if doc and len(doc) >= min_chars and name not in seen:
        seen.add(name)
        yield Document(f"docstring:{name}", PROSE, doc.strip())


def code_documents(files: Sequence[str] | None = None) -> Iterator[Document]:
  """Standard-library source files, one document each (lazy)."""
  root = sysconfig.get_paths()["stdlib"]
  for path in files if files is not None else stdlib_files():
    try:
      with open(path, encoding="utf-8") as f:
        text = f.read().strip()
    except (OSError, UnicodeDecodeError):
      continue
    if text:
      yield Document(f"code:{os.path.relpath(path, root)}", CODE, text)


def default_corpus(max_docs_per_source: int | None = None) -> list[Document]:
  """Prose (pydoc topics, then stdlib docstrings) followed by code (stdlib sources).

  With max_docs_per_source, the first n prose and first n code documents in that order.
  """
  n = max_docs_per_source
  if n is not None and n <= 0:
    raise ConfigError(f"max_docs_per_source={n}: expected a positive count")
  prose = list(itertools.islice(itertools.chain(pydoc_documents(), docstring_documents()), n))
  code = list(itertools.islice(code_documents(), n))
  return check_nonempty(prose + code, "default corpus")


# ---------------------------------------------------------------- user corpora

def check_nonempty(docs: list[Document], what: str) -> list[Document]:
  if not docs:
    raise ConfigError(f"corpus {what!r} has no non-empty documents")
  ids = [d.id for d in docs]
  if len(set(ids)) != len(ids):
    dup = next(i for i in ids if ids.count(i) > 1)
    raise ConfigError(f"corpus {what!r}: document id {dup!r} occurs more than once")
  return docs


def text_documents(paths: str | Sequence[str], source: str = "text") -> list[Document]:
  """Plain-text files (a file, a directory of *.txt, a glob, or a list): one document each."""
  if isinstance(paths, str):
    if os.path.isdir(paths):
      files = sorted(glob.glob(os.path.join(paths, "**", "*.txt"), recursive=True))
    elif any(c in paths for c in "*?["):
      files = sorted(glob.glob(paths, recursive=True))
    else:
      files = [paths]
  else:
    files = list(paths)
  docs = []
  for f in files:
    if not os.path.isfile(f):
      raise ConfigError(f"corpus file {f!r} does not exist")
    with open(f, encoding="utf-8", errors="replace") as fh:
      text = fh.read().strip()
    if text:
      docs.append(Document(f"file:{f}", source, text))
  return check_nonempty(docs, str(paths))


def jsonl_documents(path: str, text_field: str = "text", id_field: str | None = None,
                    source_field: str | None = None, source: str = "text") -> list[Document]:
  """JSON Lines, one object per line with a string `text_field` (optional id/source fields)."""
  if not os.path.isfile(path):
    raise ConfigError(f"corpus file {path!r} does not exist")
  docs = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{n}: not valid JSON ({e.msg})") from None
      if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
        raise ConfigError(f"{path}:{n}: expected an object with a string field {text_field!r}")
      text = obj[text_field].strip()
      if text:
        did = str(obj[id_field]) if id_field and id_field in obj else f"{os.path.basename(path)}:{n}"
        src = str(obj[source_field]) if source_field and source_field in obj else source
        docs.append(Document(did, src, text))
  return check_nonempty(docs, path)


def hf_documents(name: str, split: str = "train", text_field: str = "text",
                 config_name: str | None = None, revision: str | None = None,
                 max_docs: int | None = None, source: str = "text") -> list[Document]:
  """A Hugging Face dataset (needs the optional `datasets` package and, usually, network)."""
  try:
    import datasets
  except ImportError:
    raise ConfigError(f"corpus hf:{name}: the optional package `datasets` is not installed "
                      "(pip install datasets)") from None
  try:
    ds = datasets.load_dataset(name, config_name, split=split, revision=revision, streaming=True)
  except Exception as e:
    raise ConfigError(f"corpus hf:{name} (split {split!r}) could not be loaded: "
                      f"{type(e).__name__}") from None
  docs = []
  for n, row in enumerate(ds):
    if max_docs is not None and len(docs) >= max_docs:
      break
    if text_field not in row:
      raise ConfigError(f"corpus hf:{name}: rows have no field {text_field!r} "
                        f"(fields: {sorted(row)})")
    text = str(row[text_field]).strip()
    if text:
      docs.append(Document(f"hf:{name}:{split}:{n}", source, text))
  return check_nonempty(docs, f"hf:{name}")


def load_corpus(spec: str, text_field: str = "text", max_docs: int | None = None) -> list[Document]:
  """'default', 'default:N' (N docs per source), 'hf:NAME[:SPLIT]', a .jsonl file, or text files."""
  if spec == "default" or spec.startswith("default:"):
    n = spec.partition(":")[2]
    if n and not n.isdigit():
      raise ConfigError(f"corpus {spec!r}: expected 'default' or 'default:<docs per source>'")
    docs = default_corpus(int(n) if n else None)
  elif spec.startswith("hf:"):
    parts = spec[3:].split(":")
    docs = hf_documents(parts[0], parts[1] if len(parts) > 1 else "train", text_field,
                        max_docs=max_docs)
  elif spec.endswith((".jsonl", ".json")):
    docs = jsonl_documents(spec, text_field)
  else:
    docs = text_documents(spec)
  return docs[:max_docs] if max_docs is not None else docs


# ---------------------------------------------------------------- packing into sequences

def evenly_spaced(n_total: int, n: int) -> np.ndarray:
  """Sorted indices of n items evenly spaced over range(n_total) (all when n >= n_total)."""
  if n >= n_total:
    return np.arange(n_total, dtype=np.int64)
  return np.unique(np.round(np.linspace(0, n_total - 1, n)).astype(np.int64))


@dataclass
class Packed:
  """Fixed-length sequences; doc_index[n, t] indexes doc_ids/sources (-1: special or pad)."""
  input_ids: np.ndarray       # [N, T] int32
  attention_mask: np.ndarray  # [N, T] int32, 0 on padding
  doc_index: np.ndarray       # [N, T] int32
  special: np.ndarray         # [N, T] bool: tokens the tokenizer adds (BOS/CLS/SEP/EOS) and pads
  doc_ids: list[str]
  sources: list[str]

  @property
  def n_tokens(self) -> int:
    return int(self.attention_mask.sum())

  def source_of_tokens(self) -> np.ndarray:
    """[N, T] source label per token ('' for special tokens and padding)."""
    lab = np.array(self.sources + [""], dtype=object)
    return lab[self.doc_index]

  def source_of_rows(self) -> np.ndarray:
    """[N] source label of each row: that of the last document the row holds."""
    lab = np.array(self.sources + [""], dtype=object)
    return lab[np.max(self.doc_index, axis=1)]

  def take_rows(self, rows_R: np.ndarray) -> "Packed":
    """These rows, in this order (documents and sources kept whole)."""
    rows_R = np.asarray(rows_R, np.int64)
    return Packed(self.input_ids[rows_R], self.attention_mask[rows_R], self.doc_index[rows_R],
                  self.special[rows_R], self.doc_ids, self.sources)

  def evenly_spaced_rows(self, n_rows: int) -> "Packed":
    """n_rows rows evenly spaced over the corpus (all rows when it has no more)."""
    N = self.input_ids.shape[0]
    if n_rows >= N:
      return self
    return self.take_rows(evenly_spaced(N, n_rows))

  def first_rows_per_source(self, n_rows: int) -> "Packed":
    """The first n_rows rows of each source label, in corpus order (0: all rows)."""
    if n_rows <= 0:
      return self
    src = self.source_of_rows()
    rows = np.concatenate([np.nonzero(src == s)[0][:n_rows] for s in dict.fromkeys(src) if s])
    return self.take_rows(np.sort(rows))


def special_affixes(tokenizer) -> tuple[list[int], list[int]]:
  """Token ids the tokenizer puts before and after a single sequence (e.g. [CLS], [SEP])."""
  for probe in ("a", "the", "x", "0"):
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    if bare:
      for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
          return list(full[:i]), list(full[i + len(bare):])
  raise ConfigError("tokenizer: could not find how it wraps a sequence in special tokens")


def pack(docs: Sequence[Document], tokenizer, seq_len: int, concat: bool | None = None,
         max_sequences: int | None = None) -> Packed:
  """Tokenises documents and packs them into [N, seq_len] rows with masks and document ids.

  concat=True streams all documents, separated by the EOS token when the tokenizer has
  one, and cuts the stream into rows (GPT-style; attention then spans document
  boundaries). concat=False cuts each document into its own rows, the last one padded
  (BERT-style). The default is concat for tokenizers that add no special tokens (causal
  LMs) and per-document rows otherwise. Each row is wrapped in the tokenizer's own
  special tokens ([CLS] ... [SEP] for BERT).
  """
  docs = check_nonempty(list(docs), "pack input")
  prefix, suffix = special_affixes(tokenizer)
  body = seq_len - len(prefix) - len(suffix)
  if body < 1:
    raise ConfigError(f"seq_len={seq_len}: expected more than the {len(prefix) + len(suffix)} "
                      "special tokens the tokenizer adds")
  if max_sequences is not None and max_sequences < 1:
    raise ConfigError(f"max_sequences={max_sequences}: expected a positive count")
  concat = (not prefix and not suffix) if concat is None else concat
  enc = tokenizer([d.text for d in docs], add_special_tokens=False, verbose=False)["input_ids"]
  eos = tokenizer.eos_token_id if concat else None

  pieces = (_stream_pieces(enc, body, eos, max_sequences) if concat
            else _document_pieces(enc, body, max_sequences))
  if not pieces:
    raise ConfigError("corpus: tokenisation produced no tokens")
  return _rows(pieces, tokenizer, seq_len, prefix, suffix, docs)


Piece = tuple[list[int], list[int], list[bool]]   # a row's (ids, doc index, special)


def _stream_pieces(enc, body: int, eos: int | None, max_sequences: int | None) -> list[Piece]:
  """All documents as one stream (EOS between them when there is one), cut into rows."""
  ids, idx, sp = [], [], []
  for j, toks in enumerate(enc):
    if not toks:
      continue
    ids += list(toks)
    idx += [j] * len(toks)
    sp += [False] * len(toks)
    if eos is not None:
      ids.append(eos)
      idx.append(-1)
      sp.append(True)
  pieces = []
  for s in range(0, len(ids), body):
    pieces.append((ids[s:s + body], idx[s:s + body], sp[s:s + body]))
    if max_sequences is not None and len(pieces) >= max_sequences:
      break
  return pieces


def _document_pieces(enc, body: int, max_sequences: int | None) -> list[Piece]:
  """Each document cut into its own rows."""
  pieces = []
  for j, toks in enumerate(enc):
    for s in range(0, len(toks), body):
      chunk = list(toks[s:s + body])
      pieces.append((chunk, [j] * len(chunk), [False] * len(chunk)))
    if max_sequences is not None and len(pieces) >= max_sequences:
      break
  return pieces[:max_sequences] if max_sequences is not None else pieces


def _rows(pieces: list[Piece], tokenizer, seq_len: int, prefix, suffix, docs) -> Packed:
  """The pieces wrapped in the tokenizer's special tokens and padded to seq_len."""
  N = len(pieces)
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  input_ids = np.full((N, seq_len), pad, np.int32)
  mask = np.zeros((N, seq_len), np.int32)
  doc_index = np.full((N, seq_len), -1, np.int32)
  special = np.ones((N, seq_len), bool)
  for n, (ids, idx, sp) in enumerate(pieces):
    row = prefix + ids + suffix
    L = len(row)
    input_ids[n, :L] = row
    mask[n, :L] = 1
    doc_index[n, len(prefix):len(prefix) + len(ids)] = idx
    special[n, len(prefix):len(prefix) + len(ids)] = sp
  return Packed(input_ids, mask, doc_index, special, [d.id for d in docs], [d.source for d in docs])
