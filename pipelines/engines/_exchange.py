"""Element-wise sums of float32 arrays across the tasks of a Spark barrier stage.

``BarrierTaskContext.allGather`` is the barrier stage's own channel, but every call waits about a
second (a barrier task checks for its answer once a second), and a factor fit exchanges
``(cg_steps + 1) x iterations`` times. ``task_sums`` therefore uses ``allGather`` once, to learn
the first task's address and every task's random token, and then sums over TCP connections from
every other task to the first (a star, as XGBoost's and Horovod's Spark runners do): each task sends
its array, the first adds them up in task order and sends the total back.

Every connection opens with a proof that it is a task of this stage, and every message carries a
sequence number and an HMAC-SHA256 under a key derived from all tasks' tokens (which travel only
through Spark's channel), so a foreign or replayed connection is refused and a message altered on
the way is an ``ExchangeError``, never a wrong sum. The arrays themselves are not encrypted: when
Spark is set to encrypt its own traffic (``spark.network.crypto.enabled``, ``spark.ssl.enabled``)
the caller passes ``direct=False`` and the sums go through ``allGather``, as they also do when any
task cannot open or reach the first task's socket (every task learns that through one more
``allGather`` and all fall back together). The sum is the same in either way, to the bit: float32
parts added in task order in float64, cast back to float32.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = ["ExchangeError", "task_sums"]

# Bytes of all tasks' messages in one allGather at most (Spark's RPC messages are limited to 128 MiB by default).
_GATHER_BYTES = 32 * 2**20
# Seconds a task waits to connect to the first task, and for any one message once connected: longer than
# any half-step takes between two exchanges. A task that fails or is killed closes its connection, which
# the others see at once (Spark then fails the whole barrier stage); the wait only bounds a silent peer.
_CONNECT_SECONDS = 60.0
_MESSAGE_SECONDS = 3600.0
_HEADER = struct.Struct("!QQ")   # sequence number, payload bytes


class ExchangeError(RuntimeError):
    """A peer of the exchange closed, stalled or sent a message that fails its check."""


@contextmanager
def task_sums(task: Any, *, direct: bool = True, connect_seconds: float = _CONNECT_SECONDS,
              message_seconds: float = _MESSAGE_SECONDS) -> Iterator[Callable[[np.ndarray], np.ndarray]]:
    """``sum(array)``: the element-wise sum of the float32 arrays every task of ``task``'s barrier stage
    passes in its own call of the same order (same shape in every task); the same result in every task.

    ``task`` is the ``BarrierTaskContext`` (``allGather``, ``partitionId``, ``getTaskInfos``). Every
    task of the stage must enter this together. Over TCP when ``direct`` and every task can reach the
    first; through ``allGather`` otherwise.
    """
    tasks, part = len(task.getTaskInfos()), task.partitionId()
    if tasks == 1:
        yield lambda array: _summed([np.ascontiguousarray(array, dtype=np.float32)], array.shape)
        return
    star = _Star.open(task, tasks, part, connect_seconds, message_seconds) if direct else None
    try:
        yield star.sum if star is not None else _gathered_by(task, tasks)
    finally:
        if star is not None:
            star.close()


def _summed(parts: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """The float32 ``parts`` added in order in float64, as float32 of ``shape``."""
    total = np.zeros(parts[0].size, dtype=np.float64)
    for piece in parts:
        total += piece.reshape(-1)
    return total.astype(np.float32).reshape(shape)


def _gathered_by(task: Any, tasks: int) -> Callable[[np.ndarray], np.ndarray]:
    """Sums through ``allGather``, in pieces small enough for one exchange."""
    def gathered(array: np.ndarray) -> np.ndarray:
        flat = np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
        total = np.zeros(len(flat), dtype=np.float64)
        piece = max(1024, _GATHER_BYTES * 3 // 4 // 4 // tasks)
        for start in range(0, max(1, len(flat)), piece):
            part = flat[start:start + piece]
            for message in task.allGather(base64.b64encode(part.tobytes()).decode("ascii")):
                total[start:start + len(part)] += np.frombuffer(base64.b64decode(message), dtype=np.float32)
        return total.astype(np.float32).reshape(array.shape)

    return gathered


class _Star:
    """The first task's connections to every other task (``peers[p]``), or the other tasks' one connection to it."""

    def __init__(self, key: bytes, part: int, peers: dict[int, socket.socket]) -> None:
        self.key, self.part, self.peers, self.sent = key, part, peers, 0

    @classmethod
    def open(cls, task: Any, tasks: int, part: int, connect_seconds: float,
             message_seconds: float) -> _Star | None:
        """Connected, or None when any task could not (then every task sums through ``allGather``)."""
        server, address, failure = None, None, ""
        if part == 0:
            try:
                host = task.getTaskInfos()[0].address.rsplit(":", 1)[0].strip("[]")
                server = socket.create_server((host, 0), family=_family(host))
                address = [host, server.getsockname()[1]]
            except OSError as error:
                failure = f"listen: {error}"
        token = secrets.token_hex(32)
        shared = [json.loads(message) for message in task.allGather(json.dumps({"address": address,
                                                                              "token": token}))]
        key = hashlib.sha256("".join(entry["token"] for entry in shared).encode("ascii")).digest()
        peers: dict[int, socket.socket] = {}
        if shared[0]["address"] is None:
            failure = failure or "the first task has no socket"
        if not failure:
            try:
                peers = (_accepted(server, key, tasks, connect_seconds) if part == 0
                         else {0: _connected(*shared[0]["address"], key, part, connect_seconds)})
            except (OSError, ExchangeError) as error:
                failure = f"connect: {error}"
        if server is not None:
            server.close()
        if any(task.allGather(failure)):   # every task learns whether all are connected
            for peer in peers.values():
                peer.close()
            return None
        for peer in peers.values():
            peer.settimeout(message_seconds)
            peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # a message's MAC goes at once
        return cls(key, part, peers)

    def sum(self, array: np.ndarray) -> np.ndarray:
        flat = np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
        sequence, self.sent = self.sent, self.sent + 1
        if self.part:
            peer = self.peers[0]
            _send(peer, self.key, b"up%d" % self.part, sequence, flat.tobytes())
            total = _received(peer, self.key, b"down%d" % self.part, sequence, flat.nbytes)
            return np.frombuffer(total, dtype=np.float32).reshape(array.shape).copy()
        parts = [flat] + [np.frombuffer(_received(self.peers[p], self.key, b"up%d" % p, sequence, flat.nbytes),
                                        dtype=np.float32) for p in sorted(self.peers)]
        total = _summed(parts, array.shape)
        for p in sorted(self.peers):
            _send(self.peers[p], self.key, b"down%d" % p, sequence, total.tobytes())
        return total

    def close(self) -> None:
        for peer in self.peers.values():
            peer.close()


def _hello(key: bytes, part: int) -> bytes:
    return struct.pack("!I", part) + hmac.new(key, b"hello%d" % part, hashlib.sha256).digest()


def _accepted(server: socket.socket, key: bytes, tasks: int, seconds: float) -> dict[int, socket.socket]:
    """The first task's connection from each other task, each proven by its hello; others are closed."""
    server.settimeout(seconds)
    peers: dict[int, socket.socket] = {}
    try:
        while len(peers) < tasks - 1:
            peer, _ = server.accept()   # socket.timeout (an OSError) when a task never comes
            peer.settimeout(seconds)
            try:
                hello = _exactly(peer, 4 + 32)
                part = struct.unpack("!I", hello[:4])[0]
                proven = 0 < part < tasks and part not in peers and hmac.compare_digest(hello, _hello(key, part))
            except (OSError, ExchangeError):
                proven = False
            if proven:
                peers[part] = peer
            else:
                peer.close()   # not a task of this stage (or a second connection claiming one): refused
    except BaseException:
        for peer in peers.values():
            peer.close()
        raise
    return peers


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _connected(host: str, port: int, key: bytes, part: int, seconds: float) -> socket.socket:
    peer = socket.create_connection((host, port), timeout=seconds)
    peer.sendall(_hello(key, part))
    return peer


def _send(peer: socket.socket, key: bytes, channel: bytes, sequence: int, payload: bytes) -> None:
    header = _HEADER.pack(sequence, len(payload))
    mac = hmac.new(key, channel + header, hashlib.sha256)
    mac.update(payload)
    try:
        peer.sendall(header)
        peer.sendall(payload)
        peer.sendall(mac.digest())
    except OSError as error:
        raise ExchangeError(f"sending to a task of the barrier stage failed: {error}") from None


def _received(peer: socket.socket, key: bytes, channel: bytes, sequence: int, size: int) -> bytes:
    """The payload of the next message, checked: its sequence number, its size and its HMAC."""
    header = _exactly(peer, _HEADER.size)
    number, length = _HEADER.unpack(header)
    if number != sequence or length != size:
        raise ExchangeError(f"a task of the barrier stage sent message {number} of {length} bytes where message "
                            f"{sequence} of {size} bytes was due: the tasks are out of step")
    payload = _exactly(peer, size)
    mac = hmac.new(key, channel + header, hashlib.sha256)
    mac.update(payload)
    if not hmac.compare_digest(_exactly(peer, 32), mac.digest()):
        raise ExchangeError("a message between the tasks of the barrier stage fails its HMAC check: it was altered "
                            "or does not come from a task of this stage")
    return payload


def _exactly(peer: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    try:
        while got < size:
            count = peer.recv_into(view[got:])
            if not count:
                raise ExchangeError("a task of the barrier stage closed its connection mid-exchange (it failed or "
                                    "was stopped)")
            got += count
    except TimeoutError:
        raise ExchangeError("a task of the barrier stage sent nothing within the exchange's wait") from None
    return bytes(buffer)
