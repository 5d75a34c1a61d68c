"""The Python core blob that a meshd server pushes with command 10, and its in-process loader.

Wire (spec: agent-protocol.md §4; the same framing MeshCentral uses for its JavaScript core)::

    command 10:  00 0A | 00 00 | SHA-384(blob) (48) | blob
    blob      =  00 00 00 00 | ZIP archive

* The 4 zero bytes are the prefix every core blob carries; the hash covers the **whole blob,
  prefix included** (as for MeshCentral's cores). The agent confirms a loaded core with
  ``00 0B | 00 00 | SHA-384(blob)``.
* The ZIP archive holds the files of the core package, paths relative to the package root
  (``__init__.py``, ``agentcore.py``, ``sub/__init__.py``…), ``/``-separated, ``.py`` only.
  :func:`build_core_blob` makes it byte-for-byte reproducible: entries sorted by path,
  ``ZIP_STORED`` (no zlib-version dependence), timestamp 1980-01-01 00:00:00, mode 0644,
  ``create_system`` 3, no comment, no directory entries, ``__pycache__`` skipped. So every
  server with the same ``agentsrc/core`` pushes the same hash, and agents that already run it
  just get CoreOk.
* A blob whose archive does not start with ``PK\\x03\\x04`` is not a Python core (for example
  MeshCentral's JavaScript core, which starts ``var addedModules``); the agent declines it.

Limits checked before anything is imported: blob ≤ :data:`MAX_BLOB`, ≤ :data:`MAX_FILES`
entries, ≤ :data:`MAX_UNCOMPRESSED` bytes in all, safe relative names, ``__init__.py`` present.

Loading (:func:`load_core`) happens in-process and in memory: the files are served by a
``sys.meta_path`` finder under a package name unique to the hash (``_meshd_core_<hash16>``), so
relative imports inside the core work and two cores never share modules. The package must
define ``CORE_API == 1`` and ``create_core(context)`` (see :mod:`agentsrc.core`). A pushed core
runs with the agent's privileges: it is accepted only on a connection whose server proved the
pinned ServerID key (the handshake), exactly as the real agent trusts a pushed JavaScript core.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
import os
import re
import sys
import types
import zipfile
from typing import Optional, Sequence

__all__ = [
    "PREFIX",
    "CORE_API",
    "MAX_BLOB",
    "MAX_FILES",
    "MAX_UNCOMPRESSED",
    "CoreBlobError",
    "build_core_blob",
    "core_hash",
    "is_python_core",
    "parse_core_blob",
    "load_core",
    "unload_core",
    "builtin_core_dir",
]

PREFIX = b"\0\0\0\0"
ZIP_MAGIC = b"PK\x03\x04"
CORE_API = 1
MAX_BLOB = 16 * 1024 * 1024
MAX_FILES = 512
MAX_UNCOMPRESSED = 32 * 1024 * 1024
_NAME = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*/)*[A-Za-z_][A-Za-z0-9_]*\.py$")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class CoreBlobError(Exception):
    """The blob is not a valid Python core (format, limits, or its package)."""


def builtin_core_dir() -> str:
    """The folder of the built-in core package, :mod:`agentsrc.core`."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "core")


def _core_files(directory: str) -> list[tuple[str, str]]:
    files: list[tuple[str, str]] = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in names:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            relative = os.path.relpath(path, directory).replace(os.sep, "/")
            files.append((relative, path))
    files.sort()
    return files


def build_core_blob(directory: Optional[str] = None) -> bytes:
    """The reproducible blob for a core package folder (default: the built-in core)."""
    folder = directory if directory is not None else builtin_core_dir()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for relative, path in _core_files(folder):
            if not _NAME.match(relative):
                raise CoreBlobError(f"{relative}: not a valid module path")
            with open(path, "rb") as handle:
                data = handle.read()
            info = zipfile.ZipInfo(relative, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            archive.writestr(info, data)
    blob = PREFIX + buffer.getvalue()
    parse_core_blob(blob)  # refuse to produce something an agent would refuse
    return blob


def core_hash(blob: bytes) -> bytes:
    """SHA-384 of the whole blob (prefix included): the hash in commands 10 and 11."""
    return hashlib.sha384(blob).digest()


def is_python_core(blob: bytes) -> bool:
    """True if the blob is framed as a Python core (prefix + ZIP local-file header)."""
    return blob[:4] == PREFIX and blob[4:8] == ZIP_MAGIC


def parse_core_blob(blob: bytes) -> dict[str, bytes]:
    """Check a blob and return its files ``{relative path: source bytes}``."""
    if len(blob) > MAX_BLOB:
        raise CoreBlobError(f"blob of {len(blob)} bytes exceeds {MAX_BLOB}")
    if not is_python_core(blob):
        raise CoreBlobError("not a Python core blob (prefix + ZIP expected)")
    try:
        archive = zipfile.ZipFile(io.BytesIO(blob[4:]))
    except (zipfile.BadZipFile, ValueError) as error:
        raise CoreBlobError(f"bad ZIP archive: {error}") from None
    with archive:
        entries = archive.infolist()
        if len(entries) > MAX_FILES:
            raise CoreBlobError(f"more than {MAX_FILES} files")
        total = 0
        files: dict[str, bytes] = {}
        for entry in entries:
            if not _NAME.match(entry.filename):
                raise CoreBlobError(f"bad file name {entry.filename[:80]!r}")
            if entry.filename in files:
                raise CoreBlobError(f"duplicate file {entry.filename!r}")
            if entry.flag_bits & 0x1:
                raise CoreBlobError("encrypted entries are not supported")
            total += entry.file_size
            if total > MAX_UNCOMPRESSED:
                raise CoreBlobError(f"more than {MAX_UNCOMPRESSED} bytes uncompressed")
            try:
                with archive.open(entry) as stream:
                    data = stream.read(entry.file_size + 1)
            except (zipfile.BadZipFile, NotImplementedError, ValueError, OSError) as error:
                raise CoreBlobError(f"{entry.filename}: {error}") from None
            if len(data) != entry.file_size:
                raise CoreBlobError(f"{entry.filename}: size mismatch")
            files[entry.filename] = data
    if "__init__.py" not in files:
        raise CoreBlobError("no __init__.py at the root of the archive")
    return files


class _BlobLoader(importlib.abc.Loader):
    """Executes one file of the blob as a module."""

    def __init__(self, source: bytes, origin: str) -> None:
        self._source = source
        self._origin = origin

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[types.ModuleType]:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        code = compile(self._source, self._origin, "exec", dont_inherit=True)
        exec(code, module.__dict__)

    def get_source(self, fullname: str) -> str:
        return self._source.decode("utf-8", "replace")


class _BlobFinder(importlib.abc.MetaPathFinder):
    """Serves ``<package>`` and ``<package>.x.y`` from the blob's files."""

    def __init__(self, package: str, files: dict[str, bytes], label: str) -> None:
        self.package = package
        self._files = files
        self._label = label

    def find_spec(
        self,
        fullname: str,
        path: Optional[Sequence[str]],
        target: Optional[types.ModuleType] = None,
    ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname == self.package:
            relative, is_package = "__init__.py", True
        elif fullname.startswith(self.package + "."):
            base = fullname[len(self.package) + 1 :].replace(".", "/")
            if base + "/__init__.py" in self._files:
                relative, is_package = base + "/__init__.py", True
            elif base + ".py" in self._files:
                relative, is_package = base + ".py", False
            else:
                return None
        else:
            return None
        origin = f"<{self._label}>/{relative}"
        loader = _BlobLoader(self._files[relative], origin)
        return importlib.util.spec_from_loader(
            fullname, loader, origin=origin, is_package=is_package
        )


def _package_name(digest: bytes) -> str:
    return "_meshd_core_" + digest.hex()[:16]


def load_core(blob: bytes, digest: Optional[bytes] = None) -> types.ModuleType:
    """Import the blob's package in-process and return it (checked for ``create_core``).

    ``digest`` is the blob's SHA-384 if already known; it names the package. Raises
    :class:`CoreBlobError` for a bad blob or a package that fails to import.
    """
    files = parse_core_blob(blob)
    digest = digest if digest is not None else core_hash(blob)
    package = _package_name(digest)
    unload_core(package)
    finder = _BlobFinder(package, files, f"meshd core {digest.hex()[:16]}")
    sys.meta_path.insert(0, finder)
    try:
        module = importlib.import_module(package)
        if getattr(module, "CORE_API", None) != CORE_API or not callable(
            getattr(module, "create_core", None)
        ):
            raise CoreBlobError(f"the core does not provide CORE_API == {CORE_API} and create_core")
    except CoreBlobError:
        unload_core(package)
        raise
    except Exception as error:  # the pushed code failed to import: any exception is possible
        unload_core(package)
        raise CoreBlobError(f"the core failed to import: {type(error).__name__}: {error}") from None
    return module


def unload_core(package: str) -> None:
    """Forget a loaded core package: its finder and its modules."""
    sys.meta_path[:] = [
        finder
        for finder in sys.meta_path
        if not (isinstance(finder, _BlobFinder) and finder.package == package)
    ]
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]
