"""``ms_service``: an OpenTelemetry span exporter writing msserviceprofiler's SQLite capture files.

Each process writes ``<prof_dir>/<MMDD-HHMM>/ms_service_<hostname>-<pid>.db`` with the two tables
msserviceprofiler's C library writes::

    Mstx(message TEXT, flag INTEGER, markId INTEGER, timestamp INTEGER, endTimestamp INTEGER,
         pid INTEGER, tid INTEGER)
    Meta(name TEXT, value TEXT)

so captures open in the Ascend tooling (``msserviceprofiler analyze``, MindStudio Insight) as
well as in ``otel-vllm-analyze``. How spans become rows is described in
``otel_vllm_ascend.exporters.message`` and ``docs/span-contract.md``; the folder in
``otel_vllm_ascend.session``.

It is an SDK ``SpanExporter`` (spans of any processor) and a collection
:class:`~otel_vllm_ascend.record_sink.RecordSink` (the recorder's rows, no spans built).

Use it by name::

    OTEL_TRACES_EXPORTER=ms_service            # file only (the distro's default)
    OTEL_TRACES_EXPORTER=ms_service,otlp       # file and OTLP

Behaviour worth knowing:

* The database is opened lazily by the process that exports (never reused after a fork), in WAL
  mode, one transaction per exported batch: whatever was exported survives ``kill -9``.
  ``force_flush``/``shutdown`` of the span processor write everything queued.
* Spans that could not be written (read-only or full disk, a deleted folder, a symlink where the
  file should be, which is refused) are dropped and counted (:attr:`dropped_spans` for this
  exporter, :mod:`otel_vllm_ascend.drops` for the process, reported once at exit); one error
  is logged per failure episode, never one per span, and serving goes on.
* Only spans recorded under the span contract are written (scope ``otel_vllm_ascend*`` or an
  ``ms.domain``/``ms.record`` attribute); other instrumentations' spans go to OTLP only.
* Files are created with mode 0640, folders with 0750.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import sqlite3
import stat
import threading
import weakref
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_vllm_ascend import drops, session
from otel_vllm_ascend.exporters import message as _message
from otel_vllm_ascend.record_sink import RecordSink
from otel_vllm_ascend.records import SpanRow

_logger = logging.getLogger(__name__)

FILE_MODE = 0o640
PAGE_SIZE = 65536
WAL_CHECKPOINT_PAGES = 256
WRITE_BATCH = 64  # spans or records translated between two inserts (see _ProcessDb.write)
CREATE_MSTX = (
    "CREATE TABLE IF NOT EXISTS Mstx(message TEXT, flag INTEGER, markId INTEGER, "
    "timestamp INTEGER, endTimestamp INTEGER, pid INTEGER, tid INTEGER)"
)
CREATE_META = "CREATE TABLE IF NOT EXISTS Meta(name TEXT, value TEXT)"
_INSERT_MSTX = "INSERT INTO Mstx VALUES (?, ?, ?, ?, ?, ?, ?)"
_INSERT_META = "INSERT INTO Meta VALUES (?, ?)"


class CaptureWriteError(Exception):
    """The capture file cannot be opened or written; the message says which file and why."""


def db_file_name(hostname: str, pid: int) -> str:
    return f"ms_service_{hostname}-{pid}.db"


class _ProcessDb:
    """The database of one process: its connection and its markId counter."""

    def __init__(self, path: Path, hostname: str, pid: int, ppid: int) -> None:
        self.path = path
        self.owner = os.getpid()  # the process holding the connection (never used after fork)
        self.pid = pid  # the process whose records these are (the writer writes for others)
        self.conn = _open_db(path)
        identity = os.stat(path)
        self.identity = (identity.st_dev, identity.st_ino)
        row = self.conn.execute("SELECT MAX(markId) FROM Mstx").fetchone()
        self.next_mark = 0 if row[0] is None else row[0] + 1
        self.write([([], [("hostname", hostname), ("ppid", str(ppid))])])

    def still_there(self) -> bool:
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except OSError:
            return False
        return stat.S_ISREG(now.st_mode) and (now.st_dev, now.st_ino) == self.identity

    def write(self, batches: Iterable[Tuple[Sequence[tuple], Sequence[Tuple[str, str]]]]
              ) -> int:
        """Insert every batch of ``(mstx, meta)`` in one transaction, numbering the Mstx rows
        ``(message, flag, timestamp, endTimestamp, tid)`` (markId) and adding the pid; returns
        how many Mstx rows were written. Batches may be produced lazily: each insert lets other
        threads have the GIL while SQLite works, so translating in small batches keeps the
        exporter from holding it for long stretches."""
        conn = self.conn
        pid = self.pid
        first = mark = self.next_mark
        conn.execute("BEGIN")
        try:
            for mstx, meta in batches:
                if mstx:
                    conn.executemany(_INSERT_MSTX, [
                        (message, flag, mark + index, start, end, pid, tid)
                        for index, (message, flag, start, end, tid) in enumerate(mstx)])
                    mark += len(mstx)
                if meta:
                    conn.executemany(_INSERT_META, meta)
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        self.next_mark = mark
        return mark - first

    def close(self, checkpoint: bool) -> None:
        try:
            if checkpoint:
                # Leave one self-contained file behind: readers on read-only copies need no -wal.
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self.conn.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.Error:
            pass  # another connection may hold the file; the WAL stays valid for readers
        finally:
            self.conn.close()


def _open_db(path: Path) -> sqlite3.Connection:
    session.make_folder(path.parent)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, FILE_MODE)
    except OSError as exc:
        if os.path.islink(path):
            raise CaptureWriteError(
                f"{path}: is a symbolic link; refusing to write through it") from None
        raise CaptureWriteError(f"{path}: cannot create the capture file: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CaptureWriteError(f"{path}: is not a regular file; refusing to write to it")
        if info.st_size == 0:
            os.fchmod(fd, FILE_MODE)  # the create mode is filtered by the umask
    finally:
        os.close(fd)
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise CaptureWriteError(f"{path}: cannot open the capture file: {exc}") from exc
    try:
        # Large pages: a commit writes a few big WAL frames, not one per 4 KiB, which costs
        # less than half as much CPU for the ~KiB-sized batch rows (docs/benchmarks.md).
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # takes effect only in a new file
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses nothing
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")  # WAL up to 16 MiB
        conn.execute(CREATE_MSTX)
        conn.execute(CREATE_META)
    except sqlite3.Error as exc:
        conn.close()
        raise CaptureWriteError(f"{path}: cannot initialise the capture file: {exc}") from exc
    return conn


class MsServiceSpanExporter(SpanExporter, RecordSink):
    """Writes spans to ``<folder>/ms_service_<hostname>-<pid>.db`` (msserviceprofiler format).

    ``folder`` defaults to the service's collection folder
    (:func:`otel_vllm_ascend.session.session_dir`, chosen at construction). ``pid`` and
    ``ppid`` name the process whose records these are when it is not this one (the node's
    writer process writes one file per vLLM process: ``otel_vllm_ascend.exporters.writer``).
    """

    def __init__(self, folder: Union[str, Path, None] = None,
                 hostname: Optional[str] = None, pid: Optional[int] = None,
                 ppid: Optional[int] = None) -> None:
        self.folder = Path(folder) if folder is not None else session.session_dir()
        self.hostname = hostname or socket.gethostname()
        self.for_pid = pid
        self.for_ppid = ppid
        self.dropped_spans = 0
        self.written_rows = 0
        self._db: Optional[_ProcessDb] = None
        self._lock = threading.Lock()
        self._failing = False
        self._shutdown = False
        self._warned_keys: set = set()
        self._abandoned: List[sqlite3.Connection] = []
        _reset_in_fork_children(self)

    @property
    def path(self) -> Path:
        """This process's capture file."""
        return self.folder / db_file_name(self.hostname, self._pid())

    def _pid(self) -> int:
        return self.for_pid if self.for_pid is not None else os.getpid()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._write(_message.translate_batch, spans)

    def write_rows(self, rows: Sequence[SpanRow]) -> None:
        """:class:`RecordSink`: the rows :meth:`export` would write for these records' spans.

        The recorder's direct path (``otel_vllm_ascend/span_builder.py``): when this exporter
        is on, the recorder hands it :class:`~otel_vllm_ascend.records.SpanRow` values instead
        of building an SDK span per record (see ``message.translate_records``).
        """
        self._write(_message.translate_records, rows)

    def _write(self, translate: Callable[[Sequence], tuple], items: Sequence) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        try:
            with self._lock:
                return self._write_locked(translate, items)
        except Exception:  # never raise into the SDK's worker thread or the recorder's
            self.dropped_spans += len(items)
            drops.add(drops.FILE_WRITE, len(items))
            _logger.exception("ms_service exporter: dropped %d spans", len(items))
            return SpanExportResult.FAILURE

    def _write_locked(self, translate: Callable[[Sequence], tuple],
                      items: Sequence) -> SpanExportResult:
        batches = self._translated(translate, items)
        first = next(batches, None)
        if first is None:
            return SpanExportResult.SUCCESS  # nothing under the span contract: no file
        try:
            written = self._current_db().write(itertools.chain((first,), batches))
        except (CaptureWriteError, sqlite3.Error, OSError) as exc:
            self._record_failure(len(items), exc)
            return SpanExportResult.FAILURE
        self.written_rows += written
        if self._failing:
            self._failing = False
            _logger.warning("ms_service exporter: writing to %s again", self.path)
        return SpanExportResult.SUCCESS

    def _translated(self, translate: Callable[[Sequence], tuple], items: Sequence
                    ) -> Iterator[Tuple[List[tuple], List[Tuple[str, str]]]]:
        """``(mstx, meta)`` of every non-empty batch of :data:`WRITE_BATCH` items, lazily."""
        for first in range(0, len(items), WRITE_BATCH):
            mstx, meta, rejected = translate(items[first:first + WRITE_BATCH])
            if rejected:
                self._warn_rejected(rejected)
            if mstx or meta:
                yield mstx, meta

    def _current_db(self) -> _ProcessDb:
        db = self._db
        if db is not None and db.owner == os.getpid():
            if db.still_there():
                return db
            self._db = None
            db.conn.close()
            raise CaptureWriteError(f"{db.path}: the capture file or its folder was removed")
        if db is not None:  # inherited across fork: never touch the parent's connection
            self._abandoned.append(db.conn)
            self._db = None
        self._db = _ProcessDb(self.path, self.hostname, self._pid(),
                              self.for_ppid if self.for_pid is not None else os.getppid())
        return self._db

    def _record_failure(self, count: int, exc: BaseException) -> None:
        self.dropped_spans += count
        drops.add(drops.FILE_WRITE, count)
        if not self._failing:
            self._failing = True
            _logger.error(
                "ms_service exporter: cannot write %s (%s); dropping spans until it works again "
                "(dropped so far: %d). Serving is not affected.",
                self.path, exc, self.dropped_spans,
            )

    def _warn_rejected(self, keys: List[str]) -> None:
        new = sorted(set(keys) - self._warned_keys)
        if new:
            self._warned_keys.update(new)
            _logger.warning(
                "ms_service exporter: attribute(s) %s left out of the message: the Ascend analyzer "
                "uses these names for its own columns and would reject the file; rename them",
                ", ".join(new),
            )

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # every export() commits before it returns

    def shutdown(self) -> None:
        with self._lock:
            self._shutdown = True
            db = self._db
            self._db = None
            if db is not None and db.owner == os.getpid():
                db.close(checkpoint=True)
        drops.report()  # the process's drops, this exporter's among them, said once


def _reset_in_fork_children(exporter: MsServiceSpanExporter) -> None:
    # The parent's export thread may hold the lock at fork time; the child needs a fresh one.
    if not hasattr(os, "register_at_fork"):
        return
    ref = weakref.ref(exporter)

    def after_in_child() -> None:
        live = ref()
        if live is not None:
            live._lock = threading.Lock()
            live._failing = False
            live.dropped_spans = 0
            live.written_rows = 0

    os.register_at_fork(after_in_child=after_in_child)
