"""Text files on disk: binary detection, line-ending and BOM preservation, atomic writes."""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tools.base import ToolError

BINARY_SNIFF_BYTES = 8192
UTF8_BOM = b"\xef\xbb\xbf"


def looks_binary(data: bytes) -> bool:
    return b"\0" in data[:BINARY_SNIFF_BYTES]


@dataclass(slots=True)
class TextFile:
    """A decoded text file: ``text`` always uses '\\n'; the rest says how to write it back."""

    text: str
    crlf: bool = False
    bom: bool = False

    def encode(self, text: str | None = None) -> bytes:
        body = self.text if text is None else text
        if self.crlf:
            body = body.replace("\r\n", "\n").replace("\n", "\r\n")
        return (UTF8_BOM if self.bom else b"") + body.encode("utf-8", "surrogateescape")


def decode_text(data: bytes, display: str, strict: bool = True) -> TextFile:
    """Decode bytes to a TextFile; refuse binary data (and non-UTF-8 when ``strict``)."""
    if looks_binary(data):
        raise ToolError(f"{display} is a binary file ({len(data)} bytes); not shown")
    bom = data.startswith(UTF8_BOM)
    if bom:
        data = data[len(UTF8_BOM):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if strict:
            raise ToolError(f"{display} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                            "it cannot be edited safely") from exc
        text = data.decode("utf-8", "replace")
    crlf_count = text.count("\r\n")
    lf_only_count = text.count("\n") - crlf_count
    crlf = crlf_count > 0 and crlf_count >= lf_only_count
    return TextFile(text=text.replace("\r\n", "\n"), crlf=crlf, bom=bom)


def read_text(path: Path, display: str, strict: bool = True) -> TextFile:
    if path.is_dir():
        raise ToolError(f"{display} is a directory; use list_files to see what it holds")
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ToolError(f"{display} does not exist") from exc
    except PermissionError as exc:
        raise ToolError(f"{display} cannot be read: permission denied") from exc
    return decode_text(data, display, strict=strict)


def _current_umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and os.replace.

    An existing file keeps its permission bits; a new file gets the usual 0o666 & ~umask.
    Readers never see a half-written file, and a crash leaves the old content in place.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_current_umask()
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".v4tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def count_lines(text: str) -> int:
    if not text:
        return 0
    return text.count("\n") + (0 if text.endswith("\n") else 1)
