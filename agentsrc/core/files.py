"""Remote files (relay protocol ``5``): MeshCentral's file-manager messages on the agent.

After ``c`` and the text ``"5"`` on the relay (see :mod:`.tunnel`), the user side sends JSON
commands (text or binary frames; ``ctrlChannel`` frames are taken by the tunnel first) and
upload data as binary frames.  The agent answers with JSON in **binary** frames, except the
``download`` start/cancel notices, which are text — as MeshCentral's core does.

Commands (user → agent), each with an optional ``reqid`` echoed in replies::

    {"action":"ls","path":P}                          → {"path":P,"dir":[…]|null,"reqid":…}
        entries {"n":name,"t":2,"d":mtime} (folder) / {"n":name,"t":3,"s":size,"d":mtime}
        (file); mtime as JSON dates ("2024-05-01T12:00:00.000Z"); symlinks followed.
    {"action":"mkdir","path":P}                       (no answer)
    {"action":"rm","path":P,"delfiles":[names],"rec":bool}   (no answer)
    {"action":"rename","path":P,"oldname":a,"newname":b}     (no answer)
    {"action":"copy"|"move","scpath":S,"dspath":D,"names":[…]}  (no answer)
    {"action":"upload","reqid":r,"path":P,"name":n[,"append":true]}
                                                      → {"action":"uploadstart","reqid":r}
      then binary data frames (a leading 0 byte is dropped: it escapes data starting with
      0 or "{"), each answered {"action":"uploadack","reqid":r};
    {"action":"uploaddone"}                           → {"action":"uploaddone","reqid":r}
    {"action":"uploadcancel"}                         → {"action":"uploadcancel","reqid":r}
    {"action":"uploadhash","reqid":r,"path":P,"name":n,"tag":t}
                                                      → {…,"hash":hex SHA-384|null}
    {"action":"download","sub":"start","id":i,"path":F} → text {"action":"download",
                                                         "sub":"start"|"cancel","id":i}
    {"action":"download","sub":"startack"[,"ack":n],"id":i} / {"sub":"ack","id":i}
      → binary blocks: 4-byte big-endian flags (0x01000000, or 0x01000001 on the last
        block) + at most 16380 bytes of the file; the last block is the first short one.
    {"action":"download","sub":"stop"|"cancel","id":i}

Flow control: an upload is acknowledged frame by frame after the bytes are written (the
sender keeps a bounded number in flight); a download keeps a window of blocks in flight,
opened by ``startack`` (``ack`` blocks, default 8, at most :data:`MAX_WINDOW`) and
advanced one block per ``ack``.  MeshCentral's core sends a single block per command; a
client that acknowledges every block — meshctrl and the web app do — works with both.
Neither side ever holds more than a window of a file in memory.

Paths: on this (POSIX) agent a path without a leading ``/`` gets one, as in the real
core, and is normalised.  Names inside a command (``delfiles``, ``oldname``, ``newname``,
``name``, ``names``) must be single path components (no ``/``, not ``.`` or ``..``), so a
command cannot reach outside the folder it names.  Recursive deletes never follow
symbolic links.  Downloads read regular files only.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import stat
import struct
from datetime import datetime, timezone
from typing import Any, Callable, Optional

__all__ = ["BLOCK", "FileSession", "files_allowed", "request_path", "child_path"]

BLOCK = 16380  # file bytes in one download block (plus 4 flag bytes: 16 KiB frames)
DEFAULT_WINDOW = 8
MAX_WINDOW = 16
FLAG_DATA = 0x01000000
FLAG_LAST = 0x01000001
MAX_PATH = 4096
MAX_NAMES = 10000
HASH_CHUNK = 1024 * 1024

RIGHT_FULL = 0xFFFFFFFF
RIGHT_REMOTE_CONTROL = 8
RIGHT_NO_FILES = 1024


def files_allowed(rights: Any) -> bool:
    """Files need REMOTECONTROL and not NOFILES, unless the rights are full."""
    if not isinstance(rights, int) or isinstance(rights, bool):
        return False
    if rights == RIGHT_FULL:
        return True
    return bool(rights & RIGHT_REMOTE_CONTROL) and not rights & RIGHT_NO_FILES


def request_path(value: Any) -> Optional[str]:
    """A command's ``path``: absolute and normalised; None when unusable."""
    if not isinstance(value, str) or len(value) > MAX_PATH or "\0" in value:
        return None
    if not value.startswith("/"):
        value = "/" + value
    normal = posixpath.normpath(value)
    return "/" + normal.lstrip("/")


def child_path(folder: str, name: Any) -> Optional[str]:
    """``folder/name`` when ``name`` is one path component; else None."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name \
            or "\0" in name or len(name) > 1024:
        return None
    return posixpath.join(folder, name)


def json_date(seconds: float) -> str:
    """A time as JavaScript's ``Date.toJSON()`` writes it."""
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def list_folder(path: str) -> Optional[list[dict[str, Any]]]:
    """The entries of a folder in MeshCentral's ``ls`` shape; None if it cannot be read."""
    try:
        names = os.listdir(path)
    except OSError:
        return None
    entries: list[dict[str, Any]] = []
    for name in names:
        try:
            info = os.stat(os.path.join(path, name))
        except OSError:
            continue  # a broken link or a file gone meanwhile, as the real core skips it
        if stat.S_ISDIR(info.st_mode):
            entries.append({"n": name, "t": 2, "d": json_date(info.st_mtime)})
        else:
            entries.append({"n": name, "t": 3, "s": info.st_size,
                            "d": json_date(info.st_mtime)})
    return entries


def delete(path: str, recursive: bool) -> int:
    """Delete a file, link or (empty, or with ``recursive``) folder; the count removed.
    Links are removed, never followed."""
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(path)
        return 1
    if not recursive:
        os.rmdir(path)
        return 1
    count = 0
    with os.scandir(path) as entries:
        children = [(entry.path, entry.is_dir(follow_symlinks=False)) for entry in entries]
    for child, is_dir in children:
        if is_dir:
            count += delete(child, True)
        else:
            os.unlink(child)
            count += 1
    os.rmdir(path)
    return count + 1


class _Upload:
    def __init__(self, reqid: Any, path: str, fd: int) -> None:
        self.reqid = reqid
        self.path = path
        self.fd = fd
        self.size = 0


class _Download:
    def __init__(self, download_id: Any, path: str, fd: int) -> None:
        self.id = download_id
        self.path = path
        self.fd = fd
        self.sent = 0
        self.started = False


class FileSession:
    """One files session on a tunnel.

    ``send(payload, binary)`` writes one relay frame; ``log(message)`` sends a JSON
    message to the server (``{"action":"log",…}`` audit lines); ``request`` is the
    tunnel request (for the user fields of those lines); ``reactor`` runs hashing in
    slices so a big file does not stall the agent.
    """

    def __init__(self, send: Callable[[bytes, bool], None], *, reactor: Any, log: Any,
                 request: Optional[dict[str, Any]] = None,
                 server_log: Optional[Callable[[dict[str, Any]], None]] = None) -> None:
        self._send = send
        self._reactor = reactor
        self._log = log
        self._request = request or {}
        self._server_log = server_log
        self._upload: Optional[_Upload] = None
        self._download: Optional[_Download] = None
        self._hashing: list[Any] = []
        self.closed = False

    # -- input ---------------------------------------------------------------------------

    def received(self, payload: bytes, binary: bool) -> None:
        """One relay frame (``ctrlChannel`` frames already taken by the tunnel)."""
        if self.closed:
            return
        if self._upload is not None and binary and payload[:1] != b"{":
            self._upload_data(payload[1:] if payload[:1] == b"\0" else payload)
            return
        try:
            command = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return
        if not isinstance(command, dict):
            return
        handler = _ACTIONS.get(command.get("action"))  # type: ignore[arg-type]
        if handler is None:
            return  # unknown actions are ignored, like the real core
        try:
            handler(self, command)
        except Exception:
            self._log.failure("files command {action} failed",
                              action=str(command.get("action"))[:32])

    def close(self) -> None:
        """The tunnel ended: close open files (an unfinished upload is kept, as written)."""
        if self.closed:
            return
        self.closed = True
        self._end_upload()
        self._end_download()
        for call in self._hashing:
            if call.active():
                call.cancel()
        self._hashing = []

    # -- output --------------------------------------------------------------------------

    def _reply(self, message: dict[str, Any]) -> None:
        self._send(json.dumps(message).encode(), True)

    def _notice(self, message: dict[str, Any]) -> None:
        self._send(json.dumps(message).encode(), False)

    def _audit(self, msgid: int, args: list[Any], text: str) -> None:
        """MeshCentral's agent log line for the server's audit trail."""
        if self._server_log is None:
            return
        message: dict[str, Any] = {"action": "log", "msgid": msgid, "msgArgs": args,
                                   "msg": text}
        for key in ("userid", "username", "sessionid", "remoteaddr"):
            value = self._request.get(key)
            if isinstance(value, str) and value:
                message[key] = value
        self._server_log(message)

    # -- folders -------------------------------------------------------------------------

    def _ls(self, command: dict[str, Any]) -> None:
        """``{"action":"ls","path":P,"reqid":r}`` → ``{"path":P,"dir":[…]|null,"reqid":r}``."""
        raw = command.get("path")
        if raw is None or raw == "":
            raw = "/"
        path = request_path(raw)
        shown = (raw if raw.startswith("/") else "/" + raw) if isinstance(raw, str) else None
        entries = list_folder(path) if path is not None else None
        self._reply({"path": shown, "dir": entries, "reqid": command.get("reqid")})

    def _mkdir(self, command: dict[str, Any]) -> None:
        """``{"action":"mkdir","path":P}``: create one folder."""
        path = request_path(command.get("path"))
        if path is None:
            return
        try:
            os.mkdir(path)
        except OSError as e:
            self._log.info("mkdir {path} failed: {why}", path=path, why=e.strerror)
            return
        self._audit(44, [path], f'Create folder: "{path}"')

    def _rm(self, command: dict[str, Any]) -> None:
        """``{"action":"rm","path":P,"delfiles":[name…],"rec":bool}``: delete names in P."""
        folder = request_path(command.get("path"))
        names = command.get("delfiles")
        if folder is None or not isinstance(names, list) or len(names) > MAX_NAMES:
            return
        recursive = command.get("rec") is True
        for name in names:
            path = child_path(folder, name)
            if path is None:
                self._log.info("rm: refused name {name!r}", name=str(name)[:200])
                continue
            try:
                count = delete(path, recursive)
            except OSError as e:
                self._log.info("rm {path} failed: {why}", path=path, why=e.strerror)
                continue
            if recursive:
                self._audit(46, [path, count],
                            f'Delete recursive: "{path}", {count} element(s) removed')
            else:
                self._audit(45, [path], f'Delete: "{path}"')

    def _rename(self, command: dict[str, Any]) -> None:
        """``{"action":"rename","path":P,"oldname":a,"newname":b}``: P/a → P/b."""
        folder = request_path(command.get("path"))
        if folder is None:
            return
        old = child_path(folder, command.get("oldname"))
        new = child_path(folder, command.get("newname"))
        if old is None or new is None:
            return
        try:
            os.rename(old, new)
        except OSError as e:
            self._log.info("rename {path} failed: {why}", path=old, why=e.strerror)
            return
        self._audit(48, [old, command.get("newname")],
                    f'Rename: "{old}" to "{command.get("newname")}"')

    def _copy_or_move(self, command: dict[str, Any]) -> None:
        """``{"action":"copy"|"move","scpath":S,"dspath":D,"names":[…]}``: files only."""
        source = request_path(command.get("scpath"))
        target = request_path(command.get("dspath"))
        names = command.get("names")
        if source is None or target is None or not isinstance(names, list) \
                or len(names) > MAX_NAMES:
            return
        move = command.get("action") == "move"
        for name in names:
            src, dst = child_path(source, name), child_path(target, name)
            if src is None or dst is None or src == dst:
                continue
            try:
                if move:
                    shutil.move(src, dst)
                else:
                    shutil.copyfile(src, dst)
            except OSError as e:
                self._log.info("{what} {path} failed: {why}", what=command.get("action"),
                               path=src, why=e.strerror)
                continue
            self._audit(52 if move else 51, [src, dst],
                        f'{"Move" if move else "Copy"}: "{src}" to "{dst}"')

    # -- upload --------------------------------------------------------------------------

    def _upload_start(self, command: dict[str, Any]) -> None:
        """``{"action":"upload","reqid":r,"path":P,"name":n[,"append":true]}`` →
        ``{"action":"uploadstart","reqid":r}`` or ``{"action":"uploaderror","reqid":r}``."""
        self._end_upload()
        reqid = command.get("reqid")
        folder = request_path(command.get("path"))
        name = command.get("name")
        path = folder if not name else (child_path(folder, name) if folder else None)
        if path is None:
            self._reply({"action": "uploaderror", "reqid": reqid})
            return
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | (
            os.O_APPEND if command.get("append") else os.O_TRUNC)
        try:
            fd = os.open(path, flags, 0o666)
        except OSError as e:
            self._log.info("upload to {path} refused: {why}", path=path, why=e.strerror)
            self._reply({"action": "uploaderror", "reqid": reqid})
            return
        self._upload = _Upload(reqid, path, fd)
        self._reply({"action": "uploadstart", "reqid": reqid})

    def _upload_data(self, data: bytes) -> None:
        upload = self._upload
        assert upload is not None
        try:
            view = memoryview(data)
            while view:
                written = os.write(upload.fd, view)
                view = view[written:]
        except OSError as e:
            self._log.info("upload to {path} failed: {why}", path=upload.path, why=e.strerror)
            self._end_upload()
            self._reply({"action": "uploaderror", "reqid": upload.reqid})
            return
        upload.size += len(data)
        self._reply({"action": "uploadack", "reqid": upload.reqid})

    def _upload_done(self, command: dict[str, Any]) -> None:
        """``{"action":"uploaddone"}`` → ``{"action":"uploaddone","reqid":r}``."""
        upload = self._end_upload()
        if upload is not None:
            self._reply({"action": "uploaddone", "reqid": upload.reqid})

    def _upload_cancel(self, command: dict[str, Any]) -> None:
        """``{"action":"uploadcancel"}``: the partial file is deleted →
        ``{"action":"uploadcancel","reqid":r}``."""
        upload = self._end_upload(audit=False)
        if upload is None:
            return
        try:
            os.unlink(upload.path)
        except OSError:
            pass
        self._reply({"action": "uploadcancel", "reqid": upload.reqid})

    def _end_upload(self, audit: bool = True) -> Optional[_Upload]:
        upload, self._upload = self._upload, None
        if upload is None:
            return None
        try:
            os.close(upload.fd)
        except OSError:
            pass
        if audit:
            self._audit(105, [upload.path, upload.size],
                        f'Upload: "{upload.path}", Size: {upload.size}')
        return upload

    def _upload_hash(self, command: dict[str, Any]) -> None:
        """``{"action":"uploadhash","reqid":r,"path":P,"name":n,"tag":t}`` →
        the same fields plus ``"hash"`` (hex SHA-384 of the file, null if unreadable)."""
        folder = request_path(command.get("path"))
        name = command.get("name")
        path = folder if not name else (child_path(folder, name) if folder else None)
        answer = {"action": "uploadhash", "reqid": command.get("reqid"),
                  "path": command.get("path"), "name": name, "tag": command.get("tag")}
        try:
            handle = open(path, "rb") if path is not None else None
        except OSError:
            handle = None
        if handle is None:
            answer["hash"] = None
            self._reply(answer)
            return
        digest = hashlib.sha384()

        def step() -> None:
            if self.closed:
                handle.close()
                return
            try:
                chunk = handle.read(HASH_CHUNK)
            except OSError:
                handle.close()
                answer["hash"] = None
                self._reply(answer)
                return
            if chunk:
                digest.update(chunk)
                self._hashing = [c for c in self._hashing if c.active()]
                self._hashing.append(self._reactor.callLater(0, step))
                return
            handle.close()
            answer["hash"] = digest.hexdigest()
            self._reply(answer)

        step()

    # -- download ------------------------------------------------------------------------

    def _download_command(self, command: dict[str, Any]) -> None:
        """``{"action":"download","sub":"start"|"startack"|"ack"|"stop"|"cancel","id":i,…}``
        (layouts in the module docstring)."""
        sub = command.get("sub")
        download_id = command.get("id")
        if sub == "start":
            self._download_start(download_id, command.get("path"))
            return
        download = self._download
        if download is None or download.id != download_id:
            return
        if sub == "startack" and not download.started:
            download.started = True
            window = command.get("ack")
            if not isinstance(window, int) or isinstance(window, bool) or window < 1:
                window = DEFAULT_WINDOW
            self._send_blocks(min(window, MAX_WINDOW))
        elif sub == "ack" and download.started:
            self._send_blocks(1)
        elif sub in ("stop", "cancel"):
            self._end_download()

    def _download_start(self, download_id: Any, raw_path: Any) -> None:
        if self._download is not None:
            self._notice({"action": "download", "sub": "cancel", "id": self._download.id})
            self._end_download()
        path = request_path(raw_path)
        fd = -1
        if path is not None:
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    os.close(fd)
                    fd = -1
            except OSError:
                fd = -1
        if path is None or fd < 0:
            self._notice({"action": "download", "sub": "cancel", "id": download_id})
            return
        self._download = _Download(download_id, path, fd)
        self._audit(49, [path], f'Download: "{path}"')
        self._notice({"action": "download", "sub": "start", "id": download_id})

    def _send_blocks(self, count: int) -> None:
        for _ in range(count):
            download = self._download
            if download is None:
                return
            try:
                data = _read_block(download.fd)
            except OSError as e:
                self._log.info("download of {path} failed: {why}", path=download.path,
                               why=e.strerror)
                self._notice({"action": "download", "sub": "cancel", "id": download.id})
                self._end_download()
                return
            download.sent += len(data)
            last = len(data) < BLOCK
            self._send(struct.pack(">I", FLAG_LAST if last else FLAG_DATA) + data, True)
            if last:
                self._end_download()
                return

    def _end_download(self) -> None:
        download, self._download = self._download, None
        if download is not None:
            try:
                os.close(download.fd)
            except OSError:
                pass


def _read_block(fd: int) -> bytes:
    """Up to :data:`BLOCK` bytes; short only at the end of the file."""
    parts: list[bytes] = []
    wanted = BLOCK
    while wanted:
        chunk = os.read(fd, wanted)
        if not chunk:
            break
        parts.append(chunk)
        wanted -= len(chunk)
    return b"".join(parts)


# The commands by ``action`` (MeshCentral's names); anything else is ignored.
_ACTIONS: dict[str, Callable[[FileSession, dict[str, Any]], None]] = {
    "ls": FileSession._ls,
    "mkdir": FileSession._mkdir,
    "rm": FileSession._rm,
    "rename": FileSession._rename,
    "copy": FileSession._copy_or_move,
    "move": FileSession._copy_or_move,
    "upload": FileSession._upload_start,
    "uploaddone": FileSession._upload_done,
    "uploadcancel": FileSession._upload_cancel,
    "uploadhash": FileSession._upload_hash,
    "download": FileSession._download_command,
}
