"""Per-episode recordings: one MCAP rosbag2 bag per episode, readable after Ctrl-C, a crash or SIGKILL.

Why not rosbags' writer as is: its MCAP storage keeps every message in an in-memory chunk until
1 MiB has accumulated or `close()` runs, and writes the summary, the footer and metadata.yaml
only on close. A process killed mid-episode leaves a file without its end magic (and a bag
directory without metadata.yaml), which no reader opens.

What this module does instead (still rosbags' `Writer`, connection handling and record format):
- schema and channel records go straight into the file's data section when the bag opens;
- `flush()` closes the pending MCAP chunk and ends the file with a valid summary-less tail
  (DataEnd + Footer + end magic), then rewrites metadata.yaml (tmp + rename). The next flush
  writes its chunk over that tail and appends a new one, so after every flush the bag on disk is
  a complete, readable bag. Readers scan a summary-less MCAP in file order, which is why log
  times are kept monotonic (see `EpisodeRecorder.write`).
- `close()` is rosbags' own close: full summary (chunk indexes, statistics) and final metadata.

So: after close, after an exception (context manager), after SIGINT (KeyboardInterrupt unwinds
through close) every message is there; after SIGKILL everything up to the last flush is (the
bag is flushed after every chunk). A SIGKILL that lands while a chunk is being written leaves that
record cut short (the reader then refuses the file): `recover()` (`flashrt-ros recover BAG`) cuts
the file back to its last whole record and ends it validly, keeping every earlier flush. Flushing hands data to the kernel, which survives the death of
the process but not a power cut; `close()` fsyncs the bag, its metadata and its directory, so a
closed episode survives power loss too.

The host records through `AsyncRecorder`: callers only enqueue; serialising, writing, flushing,
opening and closing bags happen on its own thread, behind a bounded queue. Images may be dropped
when the disk falls behind (counted); everything else (chunks, trajectories, subtasks, text) is
never dropped.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from collections import deque
from collections.abc import Collection, Mapping
from pathlib import Path

from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.storage_mcap import McapWriter
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

PACKAGE = "flashrt_ros"
CUSTOM_TYPES = ("ActionChunk", "Subtask", "Value", "EpisodeState")  # msg/<name>.msg -> flashrt_ros/msg/<name>
ACTION_CHUNK_TYPE = f"{PACKAGE}/msg/ActionChunk"

# A summary-less MCAP end: DataEnd record (op 0x0F, crc 0), Footer record (op 0x02,
# summary_start 0, summary_offset_start 0, crc 0), end magic.
_MAGIC = b"\x89MCAP0\r\n"
_TAIL = (
    b"\x0f" + (4).to_bytes(8, "little") + (0).to_bytes(4, "little")
    + b"\x02" + (20).to_bytes(8, "little") + bytes(20)
    + _MAGIC
)


class RecorderError(RuntimeError):
    pass


# --- types ---------------------------------------------------------------------------------
def find_msg_dir() -> Path:
    """The directory holding flashrt_ros' .msg files: the colcon install's share/flashrt_ros/msg
    (rosidl installs them there), else msg/ of the source checkout."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)) / "msg")
    except (ImportError, LookupError, OSError):  # no ament index, or the package not in it
        pass
    candidates.append(Path(__file__).resolve().parents[2] / "msg")
    for candidate in candidates:
        if all((candidate / f"{name}.msg").is_file() for name in CUSTOM_TYPES):
            return candidate
    raise RecorderError(f"flashrt_ros message definitions not found; looked in {[str(c) for c in candidates]}")


def new_typestore() -> Typestore:
    """A fresh rosbags ROS 2 Jazzy typestore with flashrt_ros/msg/ActionChunk and Subtask registered
    from their .msg files (fresh: a reader may add a bag's own definitions to it)."""
    store = get_typestore(Stores.ROS2_JAZZY)
    msg_dir = find_msg_dir()
    types = {}
    for name in CUSTOM_TYPES:
        types.update(get_types_from_msg((msg_dir / f"{name}.msg").read_text(), f"{PACKAGE}/msg/{name}"))
    store.register(types)
    return store


@functools.lru_cache(maxsize=1)
def bag_typestore() -> Typestore:
    """The shared store the recorder writes with and readers decode with."""
    return new_typestore()


def ros_type_name(msg_type: type | str) -> str:
    """`sensor_msgs.msg.Image` (an rclpy message class) -> "sensor_msgs/msg/Image"; strings pass."""
    if isinstance(msg_type, str):
        return msg_type
    parts = msg_type.__module__.split(".")
    if len(parts) < 2 or parts[1] not in ("msg", "srv", "action"):
        raise RecorderError(f"{msg_type!r} is not a ROS message class")
    return f"{parts[0]}/{parts[1]}/{msg_type.__name__}"


def exact_cdr(data: bytes | bytearray | memoryview, type_name: str) -> bytes:
    """`data` cut to the end of its last field.

    rmw_fastrtps' serializer (rclpy.serialization, and what DDS delivers) pads messages with
    float64 sequences to 8 bytes past their end (JointState: 84 bytes for 76); rosbags' reader
    rejects more than 3 trailing bytes ("CDR message size mismatch"). ~5 us per message.
    """
    store = bag_typestore()
    view = memoryview(data)
    if len(view) < 4 or bytes(view[:2]) != b"\x00\x01":
        raise RecorderError(f"{type_name}: not little-endian CDR (encapsulation {bytes(view[:4]).hex()})")
    msgdef = store.get_msgdef(type_name)
    try:
        _, end = msgdef.deserialize_cdr_le(view[4:], 0, msgdef.cls, store)
    except Exception as err:  # struct.error, UnicodeDecodeError, ValueError from a torn message
        raise RecorderError(f"{type_name}: malformed CDR ({err})") from err
    return bytes(view[: 4 + end])


# --- storage -------------------------------------------------------------------------------
def recover(bag_dir: Path) -> list[str]:
    """Make the MCAP files of a bag cut short by a crash readable again: each is cut back to the
    end of its last whole record before the first incomplete one (or the first DataEnd, where an
    earlier tail still stands) and ended with a valid summary-less tail. Returns what it did, one
    line per file changed; a file that is already complete is left as it is."""
    done = []
    for path in sorted(Path(bag_dir).glob("*.mcap")):
        with open(path, "r+b") as f:
            data = f.read()
            if not data.startswith(_MAGIC):
                raise RecorderError(f"{path}: not an MCAP file")
            if data.endswith(_MAGIC) and _complete(data):
                continue
            pos = len(_MAGIC)
            while pos + 9 <= len(data):
                op, size = data[pos], int.from_bytes(data[pos + 1: pos + 9], "little")
                if op in (0x0F, 0x02) or pos + 9 + size > len(data):
                    break
                pos += 9 + size
            f.seek(pos)
            f.write(_TAIL)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
        done.append(f"{path}: cut back to {pos} bytes of {len(data)} and closed")
    return done


def _complete(data: bytes) -> bool:
    """Every record before the footer is whole (a valid file ends in a footer and magic)."""
    pos, end = len(_MAGIC), len(data) - len(_MAGIC)
    while pos + 9 <= end:
        op, size = data[pos], int.from_bytes(data[pos + 1: pos + 9], "little")
        if pos + 9 + size > end:
            return False
        if op == 0x02:
            return pos + 9 + size == end
        pos += 9 + size
    return False



class _DurableMcapWriter(McapWriter):
    """rosbags' MCAP storage whose file is a complete summary-less MCAP after every `flush()`."""

    def __init__(self, path: Path, compression, *, fsync: bool = False):
        super().__init__(path, compression)
        self.fsync = fsync
        self.tail_at = self.bio.tell()  # where the provisional tail starts; the next write goes here

    # Schemas and channels go to the data section itself (not into a chunk) so that they are on
    # disk from the first flush on, before any message.
    def add_msgtype(self, connection) -> None:
        pending, self.chunk.bio = self.chunk.bio, self.bio
        try:
            super().add_msgtype(connection)
        finally:
            self.chunk.bio = pending

    def add_connection(self, connection, offered_qos_profiles: str) -> None:
        pending, self.chunk.bio = self.chunk.bio, self.bio
        try:
            super().add_connection(connection, offered_qos_profiles)
        finally:
            self.chunk.bio = pending

    @property
    def pending_bytes(self) -> int:
        return self.chunk.bio.tell()

    def close_chunk(self) -> None:  # also called by rosbags when a chunk outgrows 1 MiB
        self.bio.seek(self.tail_at)
        super().close_chunk()
        self._end_with_tail()

    def flush(self) -> None:
        if self.pending_bytes:
            self.close_chunk()
        else:
            self._end_with_tail()

    def _end_with_tail(self) -> None:
        self.tail_at = self.bio.tell()
        self.bio.write(_TAIL)
        self.bio.flush()
        if self.fsync:
            os.fsync(self.bio.fileno())
        self.bio.seek(self.tail_at)  # the next chunk (or close's summary) overwrites the tail

    def close(self, version: int, metadata: str) -> None:
        self.bio.seek(self.tail_at)  # the summary is longer than the tail, so it covers it
        super().close(version, metadata)


class _DurableWriter(Writer):
    STORAGE_PLUGINS = {StoragePlugin.MCAP: _DurableMcapWriter}

    def __init__(self, path: Path, *, fsync: bool):
        super().__init__(path, version=9, storage_plugin=StoragePlugin.MCAP)
        self.fsync = fsync

    def open(self) -> None:
        super().open()
        self.storage.fsync = self.fsync
        self._meta_fd = os.open(self.metapath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._meta_len = 0

    def provisional_metadata(self) -> dict:
        """metadata.yaml as rosbags' close() writes it, for the messages flushed so far."""
        count = sum(self.counts.values())
        start = self.min_timestamp if count else 0
        duration = max(0, self.max_timestamp - self.min_timestamp) if count else 0
        name = self.storage.path.name
        return {"rosbag2_bagfile_information": {
            "version": self.version,
            "storage_identifier": "mcap",
            "relative_file_paths": [name],
            "duration": {"nanoseconds": duration},
            "starting_time": {"nanoseconds_since_epoch": start},
            "message_count": count,
            "topics_with_message_count": [
                {
                    "topic_metadata": {
                        "name": c.topic,
                        "type": c.msgtype,
                        "serialization_format": "cdr",
                        "offered_qos_profiles": [],
                        "type_description_hash": c.digest,
                    },
                    "message_count": self.counts[c.id],
                }
                for c in self.connections
            ],
            "compression_format": "",
            "compression_mode": "",
            "files": [{
                "path": name,
                "starting_time": {"nanoseconds_since_epoch": start},
                "duration": {"nanoseconds": duration},
                "message_count": count,
            }],
            "custom_data": dict(self.custom_data) or None,
            "ros_distro": "rosbags",
        }}

    def flush(self) -> None:
        self.storage.flush()
        # Rewritten in place: on ext4 a truncate or a rename over the old file costs ~4 ms (it
        # forces the data out), an in-place pwrite ~1 us. The counts only grow, so the text
        # never shrinks (padded with blanks if it did). JSON is YAML 1.2, and costs microseconds
        # where ruamel costs milliseconds; close() replaces it with rosbags' own metadata.yaml.
        text = json.dumps(self.provisional_metadata(), indent=1).encode()
        text = text.ljust(self._meta_len)
        os.pwrite(self._meta_fd, text, 0)
        self._meta_len = len(text)
        if self.fsync:
            os.fsync(self._meta_fd)

    def _close_metadata(self) -> None:
        fd, self._meta_fd = self._meta_fd, None
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        self._close_metadata()
        super().close()

    def abort(self) -> None:
        self._close_metadata()
        super().abort()


# --- the recorder --------------------------------------------------------------------------
class EpisodeRecorder:
    """Records one episode into `directory/episode_<id>/` (a rosbag2 MCAP bag).

    `topics` maps topic name -> rclpy message class (or a "pkg/msg/Type" name for raw CDR).
    `downsample` maps topic -> N: only every Nth message of that topic is recorded (the first
    always is). The bag is flushed after every message of a `flush_topics` topic (default: the
    topics carrying flashrt_ros/msg/ActionChunk, i.e. once per chunk) and whenever `flush_bytes`
    are pending. `fsync=True` also forces each flush to disk (power loss; costs ~ms per flush).
    Thread-safe: executor callbacks on several threads may write concurrently.
    """

    def __init__(
        self,
        directory: Path,
        episode_id: int,
        topics: Mapping[str, type | str],
        *,
        downsample: Mapping[str, int] | None = None,
        flush_topics: Collection[str] | None = None,
        flush_bytes: int = 256 * 1024,
        fsync: bool = False,
        custom_data: Mapping[str, str] | None = None,
    ):
        if not topics:
            raise RecorderError("a recording needs at least one topic")
        downsample = dict(downsample or {})
        for topic, every in downsample.items():
            if topic not in topics:
                raise RecorderError(f"downsample names topic {topic!r}, which is not recorded")
            if not isinstance(every, int) or every < 1:
                raise RecorderError(f"downsample for {topic!r} must be an integer >= 1, got {every!r}")
        self.episode_id = int(episode_id)
        self.path = Path(directory) / f"episode_{self.episode_id:04d}"
        if self.path.exists():
            raise RecorderError(f"recording {self.path} exists already; not overwriting it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.type_names = {topic: ros_type_name(t) for topic, t in topics.items()}
        self.downsample = downsample
        self.flush_topics = set(
            flush_topics if flush_topics is not None
            else (t for t, name in self.type_names.items() if name == ACTION_CHUNK_TYPE)
        )
        self.flush_bytes = int(flush_bytes)
        self.received = {topic: 0 for topic in topics}  # before downsampling
        self.written = {topic: 0 for topic in topics}
        self.last_stamp_ns = 0
        self._unstamped: list[tuple[str, bytes]] = []  # written with stamp 0 before any real stamp
        # Reentrant: close() from __exit__ must not deadlock when Ctrl-C lands inside write()
        self._lock = threading.RLock()
        self._serialize = None

        store = bag_typestore()
        for name in self.type_names.values():
            store.get_msgdef(name)  # compiles the (de)serialiser now, not in the first write()
        if any(not isinstance(t, str) for t in topics.values()):
            from rclpy.serialization import serialize_message  # rclpy only when given its classes

            self._serialize = serialize_message
        self._writer = _DurableWriter(self.path, fsync=fsync)
        self._writer.set_custom_data("episode_id", str(self.episode_id))
        for key, value in (custom_data or {}).items():
            self._writer.set_custom_data(str(key), str(value))
        self._writer.open()
        try:
            self._connections = {
                topic: self._writer.add_connection(topic, name, typestore=store)
                for topic, name in self.type_names.items()
            }
            self._writer.flush()
        except BaseException:
            self._writer.abort()
            raise

    @property
    def closed(self) -> bool:
        return self._writer.storage is None

    @property
    def mcap_path(self) -> Path:
        return self.path / f"{self.path.name}.mcap"

    def write(self, topic: str, msg, stamp_ns: int) -> bool:
        """Record `msg` (an rclpy message, or CDR bytes) on `topic` at log time `stamp_ns`.

        Returns False when downsampling skipped it. Log times are made monotonic (a stamp older
        than the newest written is recorded at the newest): rosbag2 log time is arrival order,
        and a bag cut short by a crash is read in file order. Message headers keep their stamps.
        A stamp of 0 means "time not known yet" (a node on sim time before /clock arrives): such
        messages wait for the first real stamp and are logged at it, so a bag does not span
        from 1970.
        """
        connection = self._connections.get(topic)
        if connection is None:
            raise RecorderError(f"topic {topic!r} is not part of this recording; known: {sorted(self._connections)}")
        raw = msg if isinstance(msg, (bytes, bytearray, memoryview)) else self._to_cdr(msg)
        data = exact_cdr(raw, self.type_names[topic])
        with self._lock:
            if self.closed:
                raise RecorderError(f"recording {self.path} is closed")
            seen = self.received[topic]
            self.received[topic] = seen + 1
            if seen % self.downsample.get(topic, 1):
                return False
            if stamp_ns <= 0 and self.last_stamp_ns == 0:
                self._unstamped.append((topic, data))
                return True
            self.last_stamp_ns = max(int(stamp_ns), self.last_stamp_ns)
            for early_topic, early_data in self._unstamped:
                self._write(early_topic, early_data)
            self._unstamped.clear()
            self._write(topic, data)
        return True

    def _write(self, topic: str, data: bytes) -> None:
        self._writer.write(self._connections[topic], self.last_stamp_ns, data)
        self.written[topic] += 1
        if topic in self.flush_topics or self._writer.storage.pending_bytes >= self.flush_bytes:
            self._writer.flush()

    def _to_cdr(self, msg) -> bytes:
        if self._serialize is None:
            raise RecorderError("this recording was set up with type names; write() takes CDR bytes")
        return self._serialize(msg)

    def flush(self) -> None:
        """Make everything written so far part of the bag on disk."""
        with self._lock:
            if not self.closed:
                self._writer.flush()

    def close(self, fsync: bool = True, custom_data: Mapping[str, str] | None = None) -> None:
        """Finish the bag (summary, indexes, metadata, plus `custom_data` in metadata.yaml, e.g.
        the episode's end reason) and, with `fsync`, force it to disk. Idempotent."""
        with self._lock:
            if not self.closed:
                for key, value in (custom_data or {}).items():
                    self._writer.set_custom_data(str(key), str(value))
                for topic, data in self._unstamped:  # no time ever came: logged at 0
                    self._write(topic, data)
                self._unstamped.clear()
                self._writer.close()
                if fsync:
                    for path in (*self.path.iterdir(), self.path, self.path.parent):
                        fd = os.open(path, os.O_RDONLY)
                        try:
                            os.fsync(fd)
                        finally:
                            os.close(fd)

    def __enter__(self) -> "EpisodeRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # on an exception too: everything written is kept

    def __repr__(self) -> str:
        return f"EpisodeRecorder({str(self.path)!r}, written={sum(self.written.values())})"


# --- off the control path -------------------------------------------------------------------
class AsyncRecorder:
    """Episode recordings written on their own thread. `open`, `write` and `close` only enqueue
    (microseconds, never blocking the caller); the writer thread does the rest in order.

    The queue is bounded: a `droppable` message (camera images) is dropped when `max_droppable`
    of them are already waiting (the disk is behind); other messages are always kept (they are
    small and few: chunks, trajectories, subtasks, text). Errors are counted and reported, the
    host keeps serving.
    """

    def __init__(self, max_droppable: int = 32):
        self.max_droppable = int(max_droppable)
        self._queue: deque = deque()
        self._droppable_waiting = 0
        self._cond = threading.Condition()
        self._recorder: EpisodeRecorder | None = None
        self.dropped = 0                # images dropped because the writer was behind
        self.written = 0
        self.errors = 0
        self.last_error = ""
        self.max_waiting = 0
        self.write_time_max_s = 0.0     # the longest single write (serialise + write + flush)
        self._running = True
        self._thread = threading.Thread(target=self._run, name="flashrt-recorder", daemon=True)
        self._thread.start()

    # --- callers (any thread) ------------------------------------------------------------------
    def open(self, directory: Path, episode_id: int, topics, **kwargs) -> str:
        """Queue a new episode's bag (closing the open one); returns the path it will have."""
        path = Path(directory) / f"episode_{int(episode_id):04d}"
        self._put(("open", (directory, episode_id, topics, kwargs)), False)
        return str(path)

    def write(self, topic: str, msg, stamp_ns: int, droppable: bool = False) -> None:
        self._put(("write", (topic, msg, stamp_ns)), droppable)

    def close(self, custom_data: Mapping[str, str] | None = None) -> None:
        self._put(("close", dict(custom_data or {})), False)

    def _put(self, item, droppable: bool) -> None:
        with self._cond:
            if droppable:
                if self._droppable_waiting >= self.max_droppable:
                    self.dropped += 1
                    return
                self._droppable_waiting += 1
            self._queue.append((item, droppable))
            self.max_waiting = max(self.max_waiting, len(self._queue))
            self._cond.notify()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written (tools, tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._queue or self._busy) and time.monotonic() < deadline:
                self._cond.wait(0.05)
            return not self._queue and not self._busy

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, close the open bag, end the thread."""
        self.close()
        with self._cond:
            self._running = False
            self._cond.notify()
        self._thread.join(timeout)

    # --- the writer thread ---------------------------------------------------------------------
    _busy = False

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and self._running:
                    self._cond.wait()
                if not self._queue:
                    return
                (kind, payload), droppable = self._queue.popleft()
                if droppable:
                    self._droppable_waiting -= 1
                self._busy = True
            try:
                self._handle(kind, payload)
            except Exception as exc:  # a full disk, a closed bag: report, keep going
                self.errors += 1
                self.last_error = f"{kind}: {type(exc).__name__}: {exc}"
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _handle(self, kind: str, payload) -> None:
        if kind == "write":
            if self._recorder is not None:
                t0 = time.perf_counter()
                self._recorder.write(*payload)
                self.written += 1
                self.write_time_max_s = max(self.write_time_max_s, time.perf_counter() - t0)
        elif kind == "open":
            self._close_current()
            directory, episode_id, topics, kwargs = payload
            self._recorder = EpisodeRecorder(directory, episode_id, topics, **kwargs)
        elif kind == "close":
            self._close_current(payload)

    def _close_current(self, custom_data: Mapping[str, str] | None = None) -> None:
        recorder, self._recorder = self._recorder, None
        if recorder is not None:
            recorder.close(fsync=True, custom_data=custom_data)
