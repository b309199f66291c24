"""The minimal reader of R's XDR serialization (jaxcode.data.rdata) on a hand-built lazy-load
database: the bytes are written here item by item from R's format (serialize.c: the "X\\n"
header, flags with the type in the low byte, attribute bit 9 and tag bit 10, CHARSXP strings
with -1 for NA, a symbol's second use as a REFSXP, gzip index, zlib / bzip2 objects), so the
reader is checked against a layout we spell out, not against its own output. The real
janeaustenr data were checked once against the PyPI `rdata` parser (side script, not a test).
"""

import bz2
import gzip
import struct
import zlib

import pytest

from jaxcode.data import literature as lit
from jaxcode.data import rdata
from jaxcode.errors import ConfigError


def _i(*v):
  return struct.pack(f">{len(v)}i", *v)


def _chars(s):
  if s is None:
    return _i(9, -1)
  b = s.encode()
  return _i(9 | (64 << 12), len(b)) + b       # CHARSXP, levels: ASCII


def _strs(values, attrs=b""):
  return _i(16 | (0x200 if attrs else 0), len(values)) + b"".join(map(_chars, values)) + attrs


def _names(names, first_use=True):
  """The attribute pairlist names = c(...): LISTSXP with tag; the symbol 'names' is written
  in full the first time and as reference 1 (flags (1 << 8) | 255) afterwards."""
  sym = _i(1) + _chars("names") if first_use else _i((1 << 8) | 255)
  return _i(2 | 0x400) + sym + _strs(names) + _i(254)


def _header(version=3):
  if version == 3:
    return b"X\n" + _i(3, 0x40201, 0x30500, 5) + b"UTF-8"
  return b"X\n" + _i(2, 0x30500, 0x20300)


LINES = ["EMMA", "", "By Jane Austen", None, "Emma Woodhouse, handsome, clever, and rich,"]


def _database(folder):
  """Rdata.rdb with three objects (a character vector with an NA, serialization version 2;
  an integer vector; a bzip2-compressed character vector) and its gzip index."""
  objs = {"emma": zlib.compress(_header(2) + _strs(LINES)),
          "counts": zlib.compress(_header() + _i(13, 3, 1, 2, 3)),
          "verse": b"2" + bz2.compress(_header() + _strs(["Of Mans First Disobedience"]))}
  rdb, offsets = b"", {}
  for name, body in objs.items():
    blob = struct.pack(">I", 999) + body      # the uncompressed length (not used to read)
    offsets[name] = (len(rdb), len(blob))
    rdb += blob
  variables = (_i(19 | 0x200, len(objs)) + b"".join(_i(13, 2, *offsets[n]) for n in objs)
               + _names(list(objs)))
  index = (_header() + _i(19 | 0x200, 3) + variables + _i(19, 0) + _i(10, 1, 1)
           + _i(2 | 0x400) + _i((1 << 8) | 255)
           + _strs(["variables", "references", "compressed"]) + _i(254))
  (folder / "Rdata.rdb").write_bytes(rdb)
  (folder / "Rdata.rdx").write_bytes(gzip.compress(index))


def test_lazyload_strings_of_a_hand_built_database(tmp_path):
  data = tmp_path / "janeaustenr" / "data"
  data.mkdir(parents=True)
  _database(data)
  assert rdata.lazyload_strings(str(data)) == {"emma": LINES,
                                               "verse": ["Of Mans First Disobedience"]}
  obj = rdata.unserialize(_header() + _strs(["a", "b"], attrs=_names(["x", "y"])))
  assert obj.value == ["a", "b"] and obj.attrs == {"names": ["x", "y"]}
  # the literature loader takes every character vector of a folder's databases as a work
  works = lit.read_works(str(tmp_path))
  assert works == [("janeaustenr/data/emma", "EMMA\n\nBy Jane Austen\n\nEmma Woodhouse, "
                                             "handsome, clever, and rich,"),
                   ("janeaustenr/data/verse", "Of Mans First Disobedience")]


def test_bad_r_data(tmp_path):
  with pytest.raises(ConfigError, match="not an R XDR serialization"):
    rdata.unserialize(b"RDX3\n" + _i(3))
  with pytest.raises(ConfigError, match="R object type 3 is not read here"):
    rdata.unserialize(_header() + _i(3))                  # a closure
  with pytest.raises(ConfigError, match="truncated R serialization"):
    rdata.unserialize(_header() + _i(16, 5))
  (tmp_path / "Rdata.rdx").write_bytes(b"not gzip")
  (tmp_path / "Rdata.rdb").write_bytes(b"")
  with pytest.raises(ConfigError, match="Rdata.rdx: not a readable R lazy-load index"):
    rdata.lazyload_strings(str(tmp_path))
