"""The HTTP layer over raw sockets: keep-alive, pipelining, limits, micro-batching."""

from __future__ import annotations

import socket
import threading

import numpy as np
import orjson

from .conftest import Models, RunningServer, start_server


def infer_request(rows: list[list[float]], path: str = "/v2/models/iris/infer",
                  close: bool = False) -> bytes:
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [len(rows), 4], "datatype": "FP64",
                                     "data": rows}]})
    conn = b"connection: close\r\n" if close else b""
    return (b"POST %s HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n%s"
            b"content-length: %d\r\n\r\n%s" % (path.encode(), conn, len(body), body))


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """Parse ``count`` HTTP/1.1 responses (content-length framed) off a socket."""
    buf = b""
    out: list[tuple[int, dict[str, str], bytes]] = []
    while len(out) < count:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(out)} responses"
            buf += chunk
        head, buf = buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
        length = int(headers["content-length"])
        while len(buf) < length:
            chunk = sock.recv(65536)
            assert chunk
            buf += chunk
        out.append((status, headers, buf[:length]))
        buf = buf[length:]
    return out


def connect(server: RunningServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def test_pipelined_requests_are_answered_in_order(iris_server: RunningServer,
                                                  models: Models) -> None:
    rows = [[[5.1, 3.5, 1.4, 0.2]], [[6.7, 3.0, 5.2, 2.3]], [[5.9, 3.0, 4.2, 1.5]]]
    with connect(iris_server) as sock:
        sock.sendall(b"".join(infer_request(r) for r in rows)
                     + b"GET /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n"
                     + infer_request(rows[0]))
        got = read_responses(sock, 5)
    assert [s for s, _, _ in got] == [200] * 5
    preds = [orjson.loads(b)["outputs"][0]["data"][0] for _, _, b in got[:3]]
    assert preds == [int(models.iris_est.predict(np.array(r))[0]) for r in rows]
    assert orjson.loads(got[3][2]) == {"live": True}


def test_keep_alive_and_connection_close(iris_server: RunningServer) -> None:
    with connect(iris_server) as sock:
        for _ in range(3):
            sock.sendall(infer_request([[1, 2, 3, 4]]))
            ((status, headers, _),) = read_responses(sock, 1)
            assert status == 200 and "connection" not in headers
        sock.sendall(infer_request([[1, 2, 3, 4]], close=True))
        ((status, headers, _),) = read_responses(sock, 1)
        assert headers["connection"] == "close"
        assert sock.recv(10) == b""  # the server closed
    with connect(iris_server) as sock:  # HTTP/1.0 without keep-alive closes too
        sock.sendall(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
        ((status, headers, _),) = read_responses(sock, 1)
        assert status == 200 and sock.recv(10) == b""


def test_malformed_http_gets_400_and_close(iris_server: RunningServer) -> None:
    with connect(iris_server) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        ((status, _, body),) = read_responses(sock, 1)
        assert status == 400 and b"malformed" in body
        assert sock.recv(10) == b""


def test_body_over_the_limit_is_413(models: Models) -> None:
    server = start_server(models.iris_lr, "iris", "--max-body-bytes", "2048")
    try:
        big = [[1.0, 2.0, 3.0, 4.0]] * 200
        with connect(server) as sock:  # declared length
            sock.sendall(infer_request(big))
            ((status, headers, body),) = read_responses(sock, 1)
            assert status == 413 and "2048" in orjson.loads(body)["error"]
            assert headers["connection"] == "close"
        with connect(server) as sock:  # chunked, no length up front
            payload = infer_request(big).split(b"\r\n\r\n", 1)[1]
            sock.sendall(b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: t\r\n"
                         b"transfer-encoding: chunked\r\n\r\n")
            for i in range(0, len(payload), 1000):
                part = payload[i:i + 1000]
                sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            sock.sendall(b"0\r\n\r\n")
            ((status, _, _),) = read_responses(sock, 1)
            assert status == 413
        with connect(server) as sock:  # Expect: 100-continue is refused before the body
            sock.sendall(b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: t\r\n"
                         b"expect: 100-continue\r\ncontent-length: 999999\r\n\r\n")
            ((status, _, _),) = read_responses(sock, 1)
            assert status == 413
        with connect(server) as sock:  # small bodies pass
            sock.sendall(infer_request(big[:2]))
            assert read_responses(sock, 1)[0][0] == 200
    finally:
        server.shutdown()


def test_concurrent_requests_are_micro_batched_and_split_correctly(models: Models) -> None:
    server = start_server(models.iris_rf, "batchy")  # own name: metrics are per process
    X = models.iris_X
    want = models.rf_est.predict(X)
    n_conn, per_conn = 16, 10
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_conn)

    def worker(k: int) -> None:
        try:
            idx = [(k * per_conn + j) % len(X) for j in range(per_conn)]
            with connect(server) as sock:
                barrier.wait()
                # All of this connection's requests at once: they queue behind each other.
                sock.sendall(b"".join(infer_request([X[i].tolist()], "/v2/models/batchy/infer")
                                      for i in idx))
                got = read_responses(sock, per_conn)
            results[k] = [orjson.loads(b)["outputs"][0]["data"][0] for _, _, b in got]
            assert results[k] == want[idx].tolist()
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_conn)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors[0]
        assert len(results) == n_conn
        c = server.client()
        _, text, _ = c.request("GET", "/metrics")
        c.close()
        lines = text.decode().splitlines()
        calls = next(float(ln.split()[-1]) for ln in lines
                     if ln.startswith('kustos_batch_rows_count{model="batchy"}'))
        rows = next(float(ln.split()[-1]) for ln in lines
                    if ln.startswith('kustos_batch_rows_sum{model="batchy"}'))
        # warm-up is not counted; every row was predicted once, in fewer model calls
        assert rows == n_conn * per_conn
        assert calls < rows / 2, (calls, rows)
    finally:
        server.shutdown()


def test_no_batching_flag_predicts_one_request_per_call(models: Models) -> None:
    server = start_server(models.iris_lr, "single", "--no-batching")
    try:
        with connect(server) as sock:
            sock.sendall(b"".join(infer_request([[1, 2, 3, 4]], "/v2/models/single/infer")
                                  for _ in range(8)))
            assert [s for s, _, _ in read_responses(sock, 8)] == [200] * 8
        c = server.client()
        _, text, _ = c.request("GET", "/metrics")
        c.close()
        calls = next(float(ln.split()[-1]) for ln in text.decode().splitlines()
                     if ln.startswith('kustos_batch_rows_count{model="single"}'))
        assert calls == 8
    finally:
        server.shutdown()


def test_bad_request_in_a_batch_does_not_fail_its_neighbours(models: Models) -> None:
    """A row the checks pass but the batch cannot merge falls back to one-by-one."""
    from kustos.runtime.server import metrics as m
    from kustos.runtime.server.batching import Batcher
    from kustos.runtime.server.models import load_model

    model = load_model(models.iris_lr, "iris")
    calls: list[int] = []
    real = model.predict

    def flaky(inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        x = next(iter(inputs.values()))
        calls.append(len(x))
        if (x == 99).any():
            raise ValueError("bad row")
        return real(inputs, outputs)

    model.predict = flaky  # type: ignore[method-assign]
    batcher = Batcher(model, m.RequestMetrics("iris"), enabled=True)
    outcomes: list[object] = []
    import asyncio

    async def go() -> None:
        for row in ([1.0, 2, 3, 4], [99.0, 2, 3, 4], [6.7, 3.0, 5.2, 2.3]):
            batcher.submit({"input-0": np.array([row])}, ("predict",), 1, outcomes.append)
        await asyncio.sleep(0.01)

    asyncio.run(go())
    assert calls == [3, 1, 1, 1]
    assert isinstance(outcomes[1], ValueError)
    assert [o["predict"].tolist() for o in (outcomes[0], outcomes[2])] == [  # type: ignore[index]
        model.predict({"input-0": np.array([[1.0, 2, 3, 4]])}, ("predict",))["predict"].tolist(),
        [2]]


def test_single_connection_runs_at_once_and_many_wait_to_share(models: Models) -> None:
    """With one client connection nobody can join a batch: no loop turn is spent waiting.
    With several, requests that arrive together share one model call."""
    import asyncio

    from kustos.runtime.server import metrics as m
    from kustos.runtime.server.batching import Batcher
    from kustos.runtime.server.models import load_model

    model = load_model(models.iris_lr, "iris")
    row = {"input-0": np.array([[5.1, 3.5, 1.4, 0.2]])}

    real = model.predict
    calls: list[int] = []

    def counting(inputs: dict[str, np.ndarray],
                 outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        calls.append(len(next(iter(inputs.values()))))
        return real(inputs, outputs)

    model.predict = counting  # type: ignore[method-assign]

    async def go(peers: int) -> tuple[int, int]:
        calls.clear()
        batcher = Batcher(model, m.RequestMetrics("iris"), peers=lambda: peers)
        done: list[object] = []
        for _ in range(3):
            batcher.submit(row, ("predict",), 1, done.append)
        answered_before_yield = len(done)
        await asyncio.sleep(0.01)
        assert len(done) == 3
        return answered_before_yield, len(calls)

    assert asyncio.run(go(peers=1)) == (3, 3)  # answered synchronously, one call each
    assert asyncio.run(go(peers=8)) == (0, 1)  # deferred one turn, one shared call
