"""Reading rosbag2 bags (MCAP, sqlite3, or a bare .mcap/.db3 file) with rosbags, robustly.

`Bag(path)` opens the bag and gives its topics, raw messages in log-time order and a decoder.
Why not rosbags' AnyReader: it builds its type store from the bag's embedded definitions and fails
outright (KeyError) on bags with service-event topics (`ros2 bag record --all`, Jazzy), and its
strict decoder refuses the CDR that Fast-DDS writes (a JointState padded to 8 bytes past its end:
"CDR message size mismatch"). Here types come from rosbags' Jazzy store plus flashrt_ros' own
messages plus whatever definitions in the bag parse; decoding stops at the end of the last field.

Every failure to read the bag — missing, truncated, corrupt, not a bag — is a `BagError` with a
message a person can act on; tools turn it into exit code 2, never a traceback.
"""
from __future__ import annotations

import sqlite3
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from rosbags.rosbag2 import Reader
from rosbags.typesys import get_types_from_msg
from rosbags.typesys.store import Typestore

from flashrt_ros.host.recorder import new_typestore

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
SERVICE_EVENT_SUFFIX = "/_service_event"


class BagError(Exception):
    """The bag cannot be read; the message says why and, where it can, what to do."""


@dataclass(frozen=True)
class TopicInfo:
    name: str
    msgtype: str
    count: int


def _explain(path: Path, err: BaseException) -> str:
    text = str(err) or type(err).__name__
    hint = ""
    if "magic" in text.lower() or "footer" in text.lower():
        hint = (" The MCAP file is truncated (the recording was probably killed before it closed the "
                "file); `mcap recover` can rebuild a readable copy.")
    elif isinstance(err, sqlite3.DatabaseError):
        hint = " The sqlite3 file is damaged; `ros2 bag reindex` or sqlite3's `.recover` may help."
    return f"cannot read bag {str(path)!r}: {text}.{hint}".replace("..", ".")


def base_typestore() -> Typestore:
    """A fresh Jazzy store with flashrt_ros' messages (fresh: bags add their own definitions)."""
    return new_typestore()


class Bag:
    """An open bag: `topics`, `messages(topics)`, `decode(msgtype, raw)`. Use as a context manager."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag {str(self.path)!r} does not exist")
        if self.path.is_file() and self.path.suffix not in (".mcap", ".db3"):
            raise BagError(f"{str(self.path)!r} is not a rosbag2 bag: expected a bag directory "
                           f"(with metadata.yaml), an .mcap or a .db3 file")
        if self.path.is_dir() and not (self.path / "metadata.yaml").exists():
            files = sorted(self.path.glob("*.mcap")) + sorted(self.path.glob("*.db3"))
            if len(files) != 1:
                raise BagError(f"{str(self.path)!r} has no metadata.yaml"
                               + (f" and {len(files)} storage files: name one of them" if files else
                                  " and no .mcap/.db3 file: not a rosbag2 bag"))
            self.path = files[0]   # a bag directory whose metadata was lost: read the file itself
        try:
            self._reader = Reader(self.path)
            self._reader.open()
            conns = list(self._reader.connections)
        except Exception as err:   # ReaderError, sqlite3.Error, struct.error, OSError, yaml errors...
            raise BagError(_explain(self.path, err)) from None
        files = [self.path] if self.path.is_file() else [*self.path.glob("*.db3"), *self.path.glob("*.mcap")]
        self.storage = "sqlite3" if any(f.suffix == ".db3" for f in files) else "mcap"
        self._connections = conns
        self.topics: dict[str, TopicInfo] = {}
        for c in conns:
            prev = self.topics.get(c.topic)
            self.topics[c.topic] = TopicInfo(c.topic, c.msgtype, (prev.count if prev else 0) + c.msgcount)
        self.start_ns = self._reader.start_time if conns and self._reader.message_count else 0
        self.end_ns = self._reader.end_time if conns and self._reader.message_count else 0
        self.store = base_typestore()
        self.undecodable: dict[str, str] = {}   # msgtype -> why its bag definition was not used
        for c in conns:
            if c.msgtype in self.store.fielddefs or c.msgdef.format.name != "MSG" or not c.msgdef.data:
                continue
            try:
                self.store.register(get_types_from_msg(c.msgdef.data, c.msgtype))
            except Exception as err:   # a definition rosbags cannot parse: the topic stays opaque
                self.undecodable[c.msgtype] = str(err)

    @property
    def custom_data(self) -> dict[str, str]:
        """metadata.yaml's custom_data (empty for a bare storage file)."""
        meta = getattr(self._reader.storage, "metadata", None)
        return dict(getattr(meta, "custom", None) or {})

    # --- reading -----------------------------------------------------------------------------------
    def messages(self, topics: Iterable[str] | None = None) -> Iterator[tuple[str, int, bytes]]:
        """(topic, log time ns, raw CDR) in log-time order; all topics when `topics` is None."""
        wanted = None if topics is None else set(topics)
        conns = [c for c in self._connections if wanted is None or c.topic in wanted]
        if not conns:
            return
        try:
            for conn, log_ns, raw in self._reader.messages(connections=conns):
                yield conn.topic, int(log_ns), raw
        except BagError:
            raise
        except Exception as err:
            raise BagError(_explain(self.path, err)) from None

    def decode(self, msgtype: str, raw: bytes | memoryview):
        """The message as a rosbags dataclass. Trailing padding is ignored (see module doc)."""
        view = memoryview(raw)
        if len(view) < 4 or bytes(view[:2]) not in (b"\x00\x00", b"\x00\x01"):
            raise BagError(f"{msgtype}: not CDR (encapsulation {bytes(view[:4]).hex()})")
        try:
            msgdef = self.store.get_msgdef(msgtype)
        except Exception:
            raise BagError(f"no definition for message type {msgtype!r} (not a ROS 2 Jazzy type, "
                           f"not flashrt_ros', and the bag does not carry a usable one)") from None
        func = msgdef.deserialize_cdr_le if view[1] else msgdef.deserialize_cdr_be
        try:
            msg, _ = func(view[4:], 0, msgdef.cls, self.store)
        except Exception as err:   # SerdeError, struct.error, UnicodeDecodeError, MemoryError, ...
            raise BagError(f"malformed {msgtype} message ({type(err).__name__}: {err})") from None
        return msg

    def close(self) -> None:
        if getattr(self, "_reader", None) is not None and self._reader.is_open:
            self._reader.close()

    def __enter__(self) -> "Bag":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def service_event(raw: bytes | memoryview) -> tuple[int, bytes, int]:
    """(event_type, client_gid, sequence_number) of any `<srv>_Event` message: every service event
    starts with service_msgs/ServiceEventInfo, so no definition of the service is needed."""
    view = bytes(raw[:44])
    if len(view) < 44 or view[:2] != b"\x00\x01":
        raise BagError("malformed service event (too short or not little-endian CDR)")
    event_type = view[4]
    gid = view[16:32]                       # after uint8 + pad to 4 + Time (8 bytes)
    (sequence,) = struct.unpack_from("<q", view, 36)   # int64 aligned to 8 in the payload
    return event_type, gid, sequence


__all__ = ["Bag", "BagError", "IMAGE_TYPES", "SERVICE_EVENT_SUFFIX", "TopicInfo", "base_typestore",
           "service_event", "stamp_ns"]
