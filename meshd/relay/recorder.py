"""Recording relay sessions to ``.mcrec`` files (spec relay.md §6), with quotas and an index.

Used by ``/meshrelay.ashx`` (agent sessions, protocols 1, 2, 5...) and by
``/webrelay.ashx`` (Intel AMT over CIRA, protocols 100 WSMAN and 101 redirection):
one :class:`Recorder` per domain serves both.

When a domain has ``sessionRecording`` (``true`` or an object), a session is recorded if
its protocol is listed (or no list is given) and both the user and the device are known.
The file is opened when the two sides pair; the relay then sends ``cr`` instead of ``c``,
writes every frame with its flags (binary, from the user side) before forwarding it, and
ends the file with the end record.  A file that cannot be opened leaves the session
unrecorded (plain ``c``), with a log line.  Each finished recording gets an index record
in the store (``type: "recording"``: user, device, protocol, start, end, size, file) and
the quotas (count, megabytes, days) delete the oldest files.

File writes are small appends to the page cache, done in the reactor thread; the
quota sweep runs after each session.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Optional

from twisted.logger import Logger

from meshd.config import SessionRecording
from meshd.relay.recording import (
    END_MAGIC,
    FLAG_BINARY,
    FLAG_USER,
    TYPE_DATA,
    TYPE_END,
    encode_record,
    metadata_record,
    recording_filename,
)

_log = Logger(namespace="meshd.relay.recorder")


class RecordingFile:
    """One open recording."""

    recorder: Any = None  # the Recorder that opened it

    def __init__(self, path: str, header: bytes, now_ms: Callable[[], int]) -> None:
        self.path = path
        self._now_ms = now_ms
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = os.fdopen(fd, "wb", buffering=0)  # each record reaches the file at once
        self.size = 0
        self._write(header)
        self.failed = False

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self.size += len(data)

    def frame(self, payload: bytes, binary: bool, from_user: bool) -> None:
        if self.failed:
            return
        flags = (FLAG_BINARY if binary else 0) | (FLAG_USER if from_user else 0)
        try:
            self._write(encode_record(TYPE_DATA, flags, payload, self._now_ms()))
        except (OSError, ValueError) as e:
            self.failed = True
            _log.error("recording {path} stopped: {problem}", path=self.path, problem=str(e))

    def close(self) -> None:
        try:
            if not self.failed:
                self._write(encode_record(TYPE_END, 0, END_MAGIC, self._now_ms()))
            self._file.close()
        except OSError as e:
            _log.error("recording {path} not closed cleanly: {problem}", path=self.path,
                       problem=str(e))


class Recorder:
    """Decides what to record and keeps the folder within its quotas."""

    def __init__(self, policy: SessionRecording, folder: str, *, domain: str,
                 now: Callable[[], float], store: Any = None) -> None:
        self.policy = policy
        self.folder = folder
        self.domain = domain
        self._now = now
        self._store = store

    def wants(self, protocol: Optional[int], user_id: Optional[str],
              node_id: Optional[str]) -> bool:
        if protocol is None or not user_id or not node_id:
            return False
        return not self.policy.protocols or protocol in self.policy.protocols

    def open(self, *, relay_id: str, protocol: int, user_id: str, user_name: Optional[str],
             node_id: str, addresses: tuple[str, str], device_name: Optional[str] = None,
             extra: Optional[Mapping[str, Any]] = None) -> Optional[RecordingFile]:
        """Start a recording; None (and a log line) when the file cannot be made.

        ``device_name`` (the device's display name) names the file and is written as the
        metadata's ``devicename``; without it the file is named by the start of the node
        id.  ``extra`` adds metadata fields (see :func:`metadata_record`).
        """
        now = self._now()
        when = datetime.fromtimestamp(now, timezone.utc)
        name = recording_filename(domain=self.domain, year=when.year, month=when.month,
                                  day=when.day, hour=when.hour, minute=when.minute,
                                  second=when.second, user_id=user_id,
                                  device_name=device_name or node_id.split("/")[-1][:12],
                                  session_id=relay_id)
        header = metadata_record(user_id=user_id, user_name=user_name, session_id=relay_id,
                                 address1=addresses[0], address2=addresses[1],
                                 time_text=when.isoformat(), protocol=protocol,
                                 node_id=node_id, time_ms=int(now * 1000),
                                 device_name=device_name, extra=extra)
        try:
            os.makedirs(self.folder, mode=0o700, exist_ok=True)
            return RecordingFile(os.path.join(self.folder, name), header,
                                 lambda: int(self._now() * 1000))
        except OSError as e:
            _log.error("cannot record relay session {relay_id}: {problem}",
                       relay_id=relay_id[:64], problem=str(e))
            return None

    def finished(self, recording: RecordingFile, *, relay_id: str, protocol: int,
                 user_id: str, node_id: str, started: float) -> None:
        """Close the file, index it, and apply the quotas."""
        recording.close()
        if self._store is not None:
            name = os.path.basename(recording.path)
            d = self._store.set({
                "_id": "recording/" + name, "type": "recording", "domain": self.domain,
                "file": name, "userid": user_id, "nodeid": node_id, "protocol": protocol,
                "sessionid": relay_id, "start": int(started * 1000),
                "end": int(self._now() * 1000), "size": recording.size})
            d.addErrback(lambda failure: _log.failure("recording index not stored", failure))
        self.apply_quotas()

    def apply_quotas(self) -> None:
        policy = self.policy
        try:
            entries = []
            for name in os.listdir(self.folder):
                if name.endswith(".mcrec"):
                    stat = os.stat(os.path.join(self.folder, name))
                    entries.append((stat.st_mtime, stat.st_size, name))
        except OSError:
            return
        entries.sort()
        doomed: list[str] = []
        if policy.max_recording_days:
            limit = self._now() - policy.max_recording_days * 86400
            doomed += [name for mtime, _size, name in entries if mtime < limit]
        kept = [e for e in entries if e[2] not in doomed]
        if policy.max_recordings and len(kept) > policy.max_recordings:
            doomed += [name for _m, _s, name in kept[:len(kept) - policy.max_recordings]]
            kept = kept[len(kept) - policy.max_recordings:]
        if policy.max_recording_size_megabytes:
            budget = policy.max_recording_size_megabytes * 1024 * 1024
            total = sum(size for _m, size, _n in kept)
            for _mtime, size, name in kept:
                if total <= budget:
                    break
                doomed.append(name)
                total -= size
        for name in doomed:
            try:
                os.remove(os.path.join(self.folder, name))
            except OSError:
                continue
            if self._store is not None:
                self._store.remove("recording/" + name).addErrback(lambda failure: None)
            _log.info("recording {name} deleted by the recording quota", name=name)


def recorders_from_config(domains: Any, datapath: str, now: Callable[[], float],
                          store: Any) -> Callable[[str], Optional[Recorder]]:
    """``domain -> Recorder`` for the domains whose ``sessionRecording`` is on."""
    recorders: dict[str, Recorder] = {}
    for name, domain in domains.items():
        policy = getattr(domain, "session_recording", None)
        if policy is not None:
            folder = policy.file_path or os.path.join(
                datapath, "recordings" if not name else f"recordings-{name}")
            recorders[name] = Recorder(policy, folder, domain=name, now=now, store=store)
    return recorders.get
