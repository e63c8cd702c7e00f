"""Copy files out of a compiled Qt resource bundle (``.rcc``), as ``scripts/fetch_paintings.sh`` needs.

    python scripts/qt_resources.py BUNDLE.rcc /path/inside/the/bundle.webp OUT_FILE

The format (Qt's ``rcc``, versions 1-3): a ``qres`` header with the offsets of a tree of nodes, of the
file data and of the names. A node is its name's offset and flags, then, for a folder, its child count
and first child; for a file, its locale and data offset (and, from version 2, a modification time).
Names are UTF-16 with a length and a hash; file data is a length, then the bytes, zlib-compressed
(behind a 4-byte size) where the node's flags say so.
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

COMPRESSED, DIRECTORY, COMPRESSED_ZSTD = 1, 2, 4


class Bundle:
    def __init__(self, raw: bytes):
        if raw[:4] != b"qres":
            raise ValueError("not a Qt resource bundle (no 'qres' header)")
        self.raw = raw
        self.version, self.tree, self.data, self.names = struct.unpack_from(">4I", raw, 4)
        self.node_size = 22 if self.version >= 2 else 14

    def _u32(self, off: int) -> int:
        return struct.unpack_from(">I", self.raw, off)[0]

    def _u16(self, off: int) -> int:
        return struct.unpack_from(">H", self.raw, off)[0]

    def _name(self, node: int) -> str:
        off = self.names + self._u32(self.tree + node * self.node_size)
        n = self._u16(off)
        return self.raw[off + 6: off + 6 + 2 * n].decode("utf-16-be")

    def _children(self, node: int) -> dict[str, int]:
        at = self.tree + node * self.node_size
        count, first = self._u32(at + 6), self._u32(at + 10)
        return {self._name(i): i for i in range(first, first + count)}

    def read(self, member: str) -> bytes:
        node = 0
        for part in [p for p in member.split("/") if p]:
            at = self.tree + node * self.node_size
            if not self._u16(at + 4) & DIRECTORY:
                raise KeyError(member)
            node = self._children(node).get(part)
            if node is None:
                raise KeyError(member)
        at = self.tree + node * self.node_size
        flags = self._u16(at + 4)
        if flags & DIRECTORY:
            raise KeyError(f"{member} is a folder")
        off = self.data + self._u32(at + 10)
        blob = self.raw[off + 4: off + 4 + self._u32(off)]
        if flags & COMPRESSED:
            return zlib.decompress(blob[4:])
        if flags & COMPRESSED_ZSTD:
            raise ValueError(f"{member} is zstd-compressed (not supported)")
        return blob


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    bundle, member, out = argv
    try:
        data = Bundle(Path(bundle).read_bytes()).read(member)
    except KeyError:
        print(f"error: '{member}' is not in '{bundle}'", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    Path(out).write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
