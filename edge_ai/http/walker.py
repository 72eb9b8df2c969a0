"""A streaming walk over a data set's element structure: tells whether the bytes end where the data set
does (an element or sequence longer than the bytes that follow it is a body cut short), and picks up a few
small top-level values on the way. Values are skipped by counting, never buffered, so memory stays flat
whatever the size of the pixel data.
"""

from __future__ import annotations

import struct

from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
BIG_ENDIAN = "1.2.840.10008.1.2.2"
_CAPTURE_MAX = 128


class CutShort(ValueError):
    """The data set's bytes end inside an element or an open sequence."""


class Walker:
    """Feed the data set's bytes in any fragments; `end()` raises CutShort where they stop too early.

    Args:
        transfer_syntax: the File Meta's; a deflated data set is not walked (ingest inflates it).
        capture: top-level tags (as ints, e.g. 0x0020000D) whose short values are kept in `values`.
    """

    def __init__(self, transfer_syntax: str, capture: frozenset[int] = frozenset()) -> None:
        self.active = transfer_syntax != DeflatedExplicitVRLittleEndian
        self.explicit = transfer_syntax != ImplicitVRLittleEndian
        self.order = ">" if transfer_syntax == BIG_ENDIAN else "<"
        self.capture = capture
        self.values: dict[int, bytes] = {}
        self._buf = bytearray()
        self._skip = 0
        self._taking: int | None = None  # tag whose value is being captured
        self._stack: list[str] = []  # "seq" / "item": undefined-length containers open

    def feed(self, data: memoryview | bytes) -> None:
        if not self.active:
            return
        view = memoryview(data)
        while len(view):
            if self._skip:
                n = min(self._skip, len(view))
                if self._taking is not None:
                    self._buf += view[:n]
                self._skip -= n
                view = view[n:]
                if not self._skip and self._taking is not None:
                    self.values[self._taking] = bytes(self._buf)
                    self._taking = None
                    self._buf.clear()
                continue
            need = 8 if len(self._buf) < 8 else self._header_size()
            take = min(need - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) >= 8 and len(self._buf) == self._header_size():
                header = bytes(self._buf)
                self._buf.clear()
                self._element(header)

    def _header_size(self) -> int:
        """8 bytes, or 12 for an explicit VR long-form element (known once the VR is in)."""
        if len(self._buf) < 6 or not self.explicit:
            return 8
        group, _ = struct.unpack(self.order + "HH", self._buf[:4])
        if group == 0xFFFE:
            return 8
        return 12 if bytes(self._buf[4:6]) in _LONG_VRS else 8

    def _element(self, header: bytes) -> None:
        group, elem = struct.unpack(self.order + "HH", header[:4])
        tag = (group << 16) | elem
        vr = b""
        if group == 0xFFFE or not self.explicit:
            (length,) = struct.unpack(self.order + "L", header[4:8])
        elif len(header) == 12:
            vr = header[4:6]
            (length,) = struct.unpack(self.order + "L", header[8:12])
        else:
            vr = header[4:6]
            (length,) = struct.unpack(self.order + "H", header[6:8])
        if tag == _ITEM_END:
            self._pop("item")
        elif tag == _SEQ_END:
            self._pop("seq")
        elif length == _UNDEFINED:
            self._stack.append("item" if tag == _ITEM else "seq")
        else:
            if not self._stack and tag in self.capture and length <= _CAPTURE_MAX and vr != b"SQ":
                self._taking = tag
                if length == 0:
                    self.values[tag] = b""
                    self._taking = None
            self._skip = length

    def _pop(self, kind: str) -> None:
        if not self._stack or self._stack[-1] != kind:
            raise CutShort(f"unexpected {kind} delimiter")
        self._stack.pop()

    def end(self) -> None:
        """Raises: CutShort naming what was left open."""
        if not self.active:
            return
        if self._skip:
            raise CutShort(f"data set cut short: an element needs {self._skip} more bytes than were sent")
        if self._buf:
            raise CutShort("data set cut short inside an element header")
        if self._stack:
            raise CutShort("data set cut short: a sequence or encapsulated pixel data is not closed")

    def text(self, tag: int) -> str | None:
        value = self.values.get(tag)
        return None if value is None else value.rstrip(b"\x00 ").decode("ascii", "replace")
