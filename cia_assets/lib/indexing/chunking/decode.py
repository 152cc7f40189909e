"""From file bytes to cited lines: which files are skipped (binary, minified, ...), decoding, lines."""

from __future__ import annotations

from pathlib import PurePosixPath

from cia_assets.lib.indexing.chunking.languages import DOCUMENT_LANGUAGES, sniff_language

_BINARY_EXTENSION_GROUPS: tuple[str, ...] = (
    ".png .jpg .jpeg .gif .bmp .ico .icns .tif .tiff .webp .psd .xcf .heic .avif",
    ".pdf .doc .docx .xls .xlsx .ppt .pptx .odt .ods .odp .epub",
    ".zip .gz .tgz .bz2 .xz .zst .7z .rar .tar .lz .lz4 .jar .war .ear .whl .egg .apk .aar .ipa",
    ".dmg .iso .img .deb .rpm .msi .cab",
    ".exe .dll .so .dylib .a .lib .o .obj .ko .elf .bin .dat .class .pyc .pyo .pyd .wasm .beam",
    ".mp3 .mp4 .m4a .aac .ogg .oga .wav .flac .mov .avi .mkv .webm .wmv .mpg .mpeg",
    ".ttf .otf .woff .woff2 .eot",
    ".db .sqlite .sqlite3 .mdb .parquet .avro .orc .feather .arrow .npy .npz .pkl .pickle .h5",
    ".hdf5 .pt .pth .onnx .tflite .pb .ckpt .safetensors .joblib",
    ".jks .keystore .p12 .pfx .der .gpg",
)
_BINARY_EXTENSIONS: frozenset[str] = frozenset(
    ext for group in _BINARY_EXTENSION_GROUPS for ext in group.split()
)

_MINIFIED_SUFFIXES: tuple[str, ...] = (".min.js", ".min.mjs", ".min.css", ".js.map", ".css.map")

# Long lines are normal in prose, CSV and text; only code/data files are judged minified.
_NO_MINIFIED_CHECK: frozenset[str | None] = frozenset({*DOCUMENT_LANGUAGES, None})

MAX_AVERAGE_LINE_LENGTH = 300
MAX_LINE_LENGTH = 5000


def classify_file(path: str, data: bytes, *, max_bytes: int) -> str | None:
    """Why a file should not be chunked ("empty", "too_large", "binary", "minified"), or None."""
    if not data.strip():
        return "empty"
    if len(data) > max_bytes:
        return "too_large"
    lower = path.lower()
    # The whole file (at most max_bytes): a NUL byte anywhere means binary, not only early on.
    if PurePosixPath(lower).suffix in _BINARY_EXTENSIONS or b"\x00" in data:
        return "binary"
    if lower.endswith(_MINIFIED_SUFFIXES):
        return "minified"
    if sniff_language(path, data[:4096]) not in _NO_MINIFIED_CHECK:
        line_count = data.count(b"\n") + 1
        if len(data) / line_count > MAX_AVERAGE_LINE_LENGTH:
            return "minified"
        if len(data) > MAX_LINE_LENGTH and max(map(len, data.split(b"\n"))) > MAX_LINE_LENGTH:
            return "minified"
    return None


UTF8_BOM = b"\xef\xbb\xbf"


def decode_source(data: bytes) -> str:
    """Decode file bytes to text without ever raising; the "\\n" count is preserved.

    UTF-8 (a leading BOM is dropped); otherwise UTF-8 with U+FFFD for the bad bytes when the
    file is mostly valid UTF-8, else Windows-1252 (a superset of printable Latin-1). All of these
    map b"\\n" and b"\\r" to themselves, so line numbers match the raw file.
    """
    if data.startswith(UTF8_BOM):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    replaced = data.decode("utf-8", errors="replace")
    bad = replaced.count("\ufffd")
    # Valid multi-byte sequences outnumbering the bad bytes means "UTF-8 with a few bad bytes";
    # otherwise it is a legacy single-byte encoding.
    non_ascii = sum(1 for ch in replaced if ord(ch) > 127) - bad
    if non_ascii > bad:
        return replaced
    return data.decode("cp1252", errors="replace")


def split_lines(text: str) -> list[str]:
    """Lines as cited: split on "\\n" only, one trailing "\\r" removed from each line."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
