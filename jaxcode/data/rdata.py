"""A minimal reader of R's XDR serialization, for the character vectors of R data packages.

R stores a package's data sets as a lazy-load database, `data/Rdata.rdb` with its index
`data/Rdata.rdx` (Debian's r-cran-janeaustenr: Jane Austen's six novels, one character vector
of lines each). The index is a gzip-compressed serialized list(variables = named list of
c(offset, length), references, compressed); each object in the .rdb sits at its offset as a
4-byte big-endian uncompressed length followed by zlib data (R's default compression; with
compress = 2 or 3 a type byte follows the length, as R's R_decompress2/3 read it: '2' bzip2,
'Z' xz, '1' zlib, '0' stored). A serialized
object is "X\\n", the format version (2 or 3; version 3 adds the native encoding), then items:
an int of flags (type in the low byte; bit 9: has attributes; bit 10: has a tag) and the
type's payload. Read here: NULL, symbols and references to them, pairlists, logical /
integer / double vectors, character vectors (CHARSXP strings, NA as None) and lists, with
their attributes. Anything else (closures, environments, ALTREP) is a ConfigError: only data
sets of strings and numbers are meant to be read.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
import zlib

from jaxcode.errors import ConfigError

NILSXP, SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = (
    0, 1, 2, 9, 10, 13, 14, 16, 19)
REFSXP, NILVALUE_SXP = 255, 254


class _Reader:
  def __init__(self, data: bytes, where: str):
    self.b, self.i, self.where, self.refs = data, 0, where, []

  def ints(self, n: int) -> tuple:
    if self.i + 4 * n > len(self.b):
      raise ConfigError(f"{self.where}: truncated R serialization")
    out = struct.unpack_from(f">{n}i", self.b, self.i)
    self.i += 4 * n
    return out

  def length(self) -> int:
    n = self.ints(1)[0]
    if n == -1:                       # a long vector: two more ints
      hi, lo = self.ints(2)
      n = (hi << 32) + (lo & 0xFFFFFFFF)
    return n

  def item(self):
    flags = self.ints(1)[0]
    kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
    if kind in (NILVALUE_SXP, NILSXP):
      return None
    if kind == REFSXP:
      idx = flags >> 8 or self.ints(1)[0]
      return self.refs[idx - 1]
    if kind == SYMSXP:
      sym = self.item()
      self.refs.append(sym)
      return sym
    if kind == LISTSXP:
      return self.pairlist(has_attr, has_tag)
    if kind == CHARSXP:
      n = self.ints(1)[0]
      if n == -1:
        return None                   # NA_character_
      if self.i + n > len(self.b):
        raise ConfigError(f"{self.where}: truncated R serialization")
      s = self.b[self.i:self.i + n].decode("utf-8" if not flags & (1 << 14) else "latin-1",
                                          errors="replace")
      self.i += n
      return s
    value = self.vector(kind)
    attrs = self.item() if has_attr else None
    return RObject(value, attrs) if attrs else value

  def pairlist(self, has_attr: bool, has_tag: bool) -> dict:
    out = {}
    while True:                        # a chain of LISTSXP cells: (attr) (tag) car, cdr
      if has_attr:
        self.item()
      tag = self.item() if has_tag else str(len(out))
      out[tag] = self.item()
      flags = self.ints(1)[0]
      if flags & 0xFF != LISTSXP:
        if flags & 0xFF not in (NILVALUE_SXP, NILSXP):
          raise ConfigError(f"{self.where}: a pairlist ending in type {flags & 0xFF}")
        return out
      has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))

  def vector(self, kind: int):
    if kind not in (LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP):
      raise ConfigError(f"{self.where}: R object type {kind} is not read here (only NULL, "
                        f"symbols, pairlists, logical/integer/double/character vectors, lists)")
    n = self.length()
    if kind in (LGLSXP, INTSXP):
      return list(self.ints(n))
    if kind == REALSXP:
      if self.i + 8 * n > len(self.b):
        raise ConfigError(f"{self.where}: truncated R serialization")
      out = struct.unpack_from(f">{n}d", self.b, self.i)
      self.i += 8 * n
      return list(out)
    return [self.item() for _ in range(n)]


class RObject:
  """A vector with attributes (names, class ...): `value` and the `attrs` dict."""

  def __init__(self, value, attrs: dict):
    self.value, self.attrs = value, attrs


def unserialize(data: bytes, where: str = "R data"):
  """The object of one XDR serialization ("X\\n" header, versions 2 and 3)."""
  if data[:2] != b"X\n":
    raise ConfigError(f"{where}: not an R XDR serialization (starts with {data[:2]!r})")
  r = _Reader(data, where)
  r.i = 2
  version = r.ints(3)[0]
  if version not in (2, 3):
    raise ConfigError(f"{where}: R serialization version {version}: expected 2 or 3")
  if version == 3:
    n = r.ints(1)[0]
    r.i += n                            # the native encoding's name
  return r.item()


def _named(obj) -> dict:
  """{name: element} of an R list with a names attribute."""
  if not isinstance(obj, RObject) or "names" not in obj.attrs:
    raise ConfigError("R lazy-load index: expected a named list")
  return dict(zip(obj.attrs["names"], obj.value))


def _blob(raw: bytes, where: str) -> bytes:
  """A .rdb object: 4-byte length, then zlib data (or a type byte '2' / 'Z' / '1' / '0'
  first; a zlib stream starts with 0x78, never one of those)."""
  kind = raw[4:5]
  try:
    if kind == b"2":
      return bz2.decompress(raw[5:])
    if kind == b"Z":
      return lzma.decompress(raw[5:])
    if kind == b"1":
      return zlib.decompress(raw[5:])
    if kind == b"0":
      return raw[5:]
    return zlib.decompress(raw[4:])
  except (OSError, zlib.error, lzma.LZMAError, ValueError) as e:
    raise ConfigError(f"{where}: an object does not decompress ({e})") from None


def lazyload_strings(folder: str, name: str = "Rdata") -> dict[str, list]:
  """{object name: its strings} of every character vector in the lazy-load database
  folder/name.rdb (+ .rdx), in the index's order; other objects are skipped."""
  rdx, rdb = (os.path.join(folder, f"{name}.{ext}") for ext in ("rdx", "rdb"))
  try:
    index = _named(unserialize(gzip.decompress(open(rdx, "rb").read()), rdx))
  except (OSError, EOFError, zlib.error) as e:
    raise ConfigError(f"{rdx}: not a readable R lazy-load index ({e})") from None
  out = {}
  with open(rdb, "rb") as f:
    for var, (offset, length) in _named(index["variables"]).items():
      f.seek(offset)
      obj = unserialize(_blob(f.read(length), rdb), f"{rdb}:{var}")
      value = obj.value if isinstance(obj, RObject) else obj
      if isinstance(value, list) and value and all(isinstance(s, str) or s is None
                                                   for s in value):
        out[var] = value
  return out
