"""The barrier stage's sums (``pipelines.engines._exchange.task_sums``), with threads as its tasks.

Each thread gets a stand-in for ``BarrierTaskContext`` whose ``allGather`` meets the others at a
``threading.Barrier``, so the real sockets, hellos, HMACs and fallbacks run between the threads as
they do between a barrier stage's Python workers. The sums must equal, to the bit, float32 parts
added in task order in float64.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pipelines.engines._exchange as exchange
from pipelines.engines._exchange import ExchangeError, task_sums


@dataclass
class _Info:
    address: str


class FakeTask:
    """``allGather``, ``partitionId`` and ``getTaskInfos`` of one task among ``tasks`` threads; counts its gathers."""

    def __init__(self, part: int, board: list, barrier: threading.Barrier) -> None:
        self.part, self.board, self.barrier, self.gathers = part, board, barrier, 0

    def partitionId(self) -> int:  # noqa: N802 - Spark's name
        return self.part

    def getTaskInfos(self) -> list[_Info]:  # noqa: N802 - Spark's name
        return [_Info("127.0.0.1:7077")] * len(self.board)

    def allGather(self, message: str) -> list[str]:  # noqa: N802 - Spark's name
        self.gathers += 1
        self.board[self.part] = message
        self.barrier.wait(timeout=120)
        gathered = list(self.board)
        self.barrier.wait(timeout=120)   # everyone has read before anyone writes again
        return gathered


def in_tasks(tasks: int, work, **options) -> list:
    """``work(part, sum)`` in one thread per task inside ``task_sums``; (result, gathers) in task order."""
    board, barrier = [None] * tasks, threading.Barrier(tasks)
    results, failures = [None] * tasks, []

    def run(part: int) -> None:
        task = FakeTask(part, board, barrier)
        try:
            with task_sums(task, **options) as summed:
                value = work(part, summed)
            results[part] = (value, task.gathers)
        except BaseException as error:
            failures.append((part, error))
            barrier.abort()

    threads = [threading.Thread(target=run, args=(part,)) for part in range(tasks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    if failures:
        raise failures[0][1]
    return results


def expected(parts: list[np.ndarray]) -> np.ndarray:
    return np.sum([part.astype(np.float64) for part in parts], axis=0).astype(np.float32)


@settings(max_examples=15)
@given(tasks=st.integers(1, 4), sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=4),
       seed=st.integers(0, 2**31), direct=st.booleans())
def test_every_task_gets_the_task_order_sum_to_the_bit_over_sockets_or_through_allgather(tasks, sizes, seed, direct):
    rng = np.random.default_rng(seed)
    arrays = [[(rng.standard_normal(size) * 10.0 ** rng.integers(-3, 4, size)).astype(np.float32)
               for size in sizes] for _ in range(tasks)]
    results = in_tasks(tasks, lambda part, summed: [summed(array) for array in arrays[part]], direct=direct)
    for step in range(len(sizes)):
        want = expected([arrays[part][step] for part in range(tasks)])
        for sums, _ in results:
            assert sums[step].dtype == np.float32
            np.testing.assert_array_equal(sums[step], want)


def test_the_sockets_need_two_gathers_whatever_the_number_of_sums_and_allgather_one_a_sum():
    def work(part, summed):
        return [summed(np.full((3, 4), part + step, np.float32)) for step in range(20)]

    direct = in_tasks(3, work)
    assert {gathers for _, gathers in direct} == {2}        # the addresses and tokens, then everyone's "connected"
    np.testing.assert_array_equal(direct[1][0][19], np.full((3, 4), 0 + 1 + 2 + 3 * 19, np.float32))
    gathered = in_tasks(3, work, direct=False)
    assert {gathers for _, gathers in gathered} == {20}
    for (mine, _), (theirs, _) in zip(direct, gathered):
        np.testing.assert_array_equal(np.array(mine), np.array(theirs))


def test_when_the_first_task_cannot_listen_every_task_falls_back_to_allgather(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("address not available")

    monkeypatch.setattr(exchange.socket, "create_server", refuse)
    results = in_tasks(3, lambda part, summed: [summed(np.full(5, part, np.float32)) for _ in range(4)])
    assert {gathers for _, gathers in results} == {2 + 4}   # tokens, the failure, then one gather a sum
    for sums, _ in results:
        np.testing.assert_array_equal(sums[-1], np.full(5, 3, np.float32))


def test_when_a_task_cannot_connect_every_task_falls_back_to_allgather(monkeypatch):
    real, calls, lock = exchange.socket.create_connection, [], threading.Lock()

    def refuse_the_first_caller(address, timeout=None):
        with lock:
            calls.append(address)
            if len(calls) == 1:
                raise ConnectionRefusedError("connection refused")
        return real(address, timeout=timeout)

    monkeypatch.setattr(exchange.socket, "create_connection", refuse_the_first_caller)
    results = in_tasks(3, lambda part, summed: summed(np.full(2, part + 1, np.float32)), connect_seconds=3.0)
    assert len(calls) == 2
    assert {gathers for _, gathers in results} == {2 + 1}   # the first task waited out its 3 s, then allGather
    for total, _ in results:
        np.testing.assert_array_equal(total, np.full(2, 6, np.float32))


KEY = bytes(range(32))


def _pair() -> tuple[socket.socket, socket.socket]:
    one, other = socket.socketpair()
    one.settimeout(5)
    other.settimeout(5)
    return one, other


def test_the_first_task_refuses_a_connection_without_a_task_s_hello_and_keeps_the_real_one():
    server = socket.create_server(("127.0.0.1", 0))
    address = server.getsockname()[:2]
    intruder = socket.create_connection(address, timeout=5)
    intruder.sendall(b"\x00\x00\x00\x01" + b"\x00" * 32)           # claims to be task 1, without the key
    replay = socket.create_connection(address, timeout=5)
    replay.sendall(exchange._hello(bytes(32), 1))                  # a hello under another stage's key
    real = exchange._connected(*address, KEY, 1, 5.0)
    peers = exchange._accepted(server, KEY, 2, 5.0)
    assert list(peers) == [1]
    for refused in (intruder, replay):
        assert refused.recv(1) == b""                             # closed by the first task
    exchange._send(real, KEY, b"up1", 0, b"abcd")
    assert exchange._received(peers[1], KEY, b"up1", 0, 4) == b"abcd"
    for connection in (server, intruder, replay, real, peers[1]):
        connection.close()


def test_a_task_that_never_comes_ends_the_first_task_s_wait_with_an_error():
    server = socket.create_server(("127.0.0.1", 0))
    with pytest.raises(TimeoutError):
        exchange._accepted(server, KEY, 2, 0.5)
    server.close()


@pytest.mark.parametrize("change", ["payload", "mac", "key", "channel"])
def test_a_message_altered_on_the_way_is_an_error_not_a_wrong_sum(change):
    sender, receiver = _pair()
    payload = np.arange(6, dtype=np.float32).tobytes()
    if change == "key":
        exchange._send(sender, bytes(32), b"up1", 0, payload)
    elif change == "channel":
        exchange._send(sender, KEY, b"up2", 0, payload)            # task 2's message, passed off as task 1's
    else:
        header = exchange._HEADER.pack(0, len(payload))
        mac = exchange.hmac.new(KEY, b"up1" + header, exchange.hashlib.sha256)
        mac.update(payload)
        digest = mac.digest()
        if change == "payload":
            payload = payload[:-1] + b"\x01"
        else:
            digest = bytes(32)
        sender.sendall(header + payload + digest)
    with pytest.raises(ExchangeError, match="HMAC"):
        exchange._received(receiver, KEY, b"up1", 0, len(payload))
    sender.close()
    receiver.close()


def test_a_message_out_of_step_is_an_error():
    sender, receiver = _pair()
    exchange._send(sender, KEY, b"up1", 3, b"\x00" * 8)
    with pytest.raises(ExchangeError, match="out of step"):
        exchange._received(receiver, KEY, b"up1", 2, 8)          # a replayed or skipped exchange
    exchange._send(sender, KEY, b"up1", 0, b"\x00" * 4)
    with pytest.raises(ExchangeError, match="out of step"):
        exchange._received(receiver, KEY, b"up1", 0, 8)          # another shape than this task's
    sender.close()
    receiver.close()


def test_a_peer_that_closes_or_stalls_mid_exchange_is_an_error():
    sender, receiver = _pair()
    sender.sendall(exchange._HEADER.pack(0, 8) + b"\x00" * 3)
    receiver.settimeout(0.5)
    with pytest.raises(ExchangeError, match="sent nothing"):
        exchange._received(receiver, KEY, b"up1", 0, 8)
    sender.close()
    with pytest.raises(ExchangeError, match="closed its connection"):
        exchange._received(receiver, KEY, b"up1", 0, 8)
    receiver.close()


class _Conf(dict):
    def get(self, name, default=None):  # SparkSession.conf.get's signature
        return super().get(name, default)


@pytest.mark.parametrize(("settings", "encrypted"), [
    ({}, False),
    ({"spark.network.crypto.enabled": "false"}, False),
    ({"spark.network.crypto.enabled": "true"}, True),
    ({"spark.ssl.enabled": " TRUE "}, True),
])
def test_the_fit_sends_its_sums_through_spark_s_channel_when_spark_encrypts_its_traffic(settings, encrypted):
    from pipelines.engines._factors import _encrypts_traffic

    class Session:
        conf = _Conf(settings)

    assert _encrypts_traffic(Session()) is encrypted
