"""The explorer server's attack surface, with raw HTTP requests (browsers normalise `../` away, so no browser here).

Path traversal (plain, absolute, URL-encoded, double-encoded) gets 403/404 and never a file; POST anywhere but
the export and other methods are refused; the export validates its JSON with 400s; foreign Host/Origin headers
are refused; the server binds 127.0.0.1; nothing but RUN/explore_selections/NAME/ is ever written.
"""

import http.client
import json
import threading

import numpy as np
import pytest

from _explore_run import N_INPUT, make_fake_run, snapshot
from cryoscape.cli.main import build_parser
from cryoscape.explore import load_explorer_data, make_server


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    run = make_fake_run(tmp_path_factory.mktemp("security"))
    server = make_server(load_explorer_data(run, k=2, umap=False), port=0, device="cpu")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield run, server
    server.shutdown()
    server.server_close()


def request(server, method, target, body=None, headers=None):
    """``(status, body bytes)`` of one raw request; ``target`` is sent exactly as given."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        headers = {"Host": f"127.0.0.1:{server.port}", **(headers or {})}
        if body is not None:
            headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():
            if v is not None:
                conn.putheader(k, v)
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def post_json(server, obj, **headers):
    body = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
    return request(server, "POST", "/api/export", body, {"Content-Type": "application/json", **headers})


def test_binds_loopback_by_default(served):
    _, server = served
    assert server.socket.getsockname()[0] == "127.0.0.1" and server.server_address[0] == "127.0.0.1"
    assert build_parser().parse_args(["explore", "RUN"]).host == "127.0.0.1"
    status, body = request(server, "GET", "/")
    assert status == 200 and b"cryoscape explore" in body


@pytest.mark.parametrize("target", [
    "/../../../../etc/passwd",
    "/..%2f..%2f..%2fetc%2fpasswd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/%252e%252e/%252e%252e/etc/passwd",
    "/api/..%5c..%5cconfig.yaml",
    "/index.html/../config.yaml",
    "//etc/passwd",
    "/etc/passwd",
    "/config.yaml",
    "/latents/epoch_001.npy",
    "/api/../indices.npy",
    "http://127.0.0.1/../config.yaml",
    "/%00",
])
def test_traversal_and_file_paths_are_refused(served, target):
    run, server = served
    status, body = request(server, "GET", target)
    assert status in (403, 404), (target, status)
    assert b"root:" not in body and b"cryoscape_version" not in body and b"NUMPY" not in body
    assert "error" in json.loads(body)


@pytest.mark.parametrize("method, target", [
    ("POST", "/"), ("POST", "/index.html"), ("POST", "/api/column?name=z1"), ("POST", "/api/volume.png?i=0"),
    ("POST", "/api/export/../../config.yaml"), ("POST", "/api/export%2f..%2fx"), ("POST", "/explore_selections/x"),
    ("PUT", "/api/export"), ("DELETE", "/api/export"), ("PATCH", "/"), ("OPTIONS", "/api/export"),
])
def test_other_writes_are_refused(served, method, target):
    run, server = served
    before = snapshot(run)
    status, _ = request(server, method, target, b'{"indices": [0]}', {"Content-Type": "application/json"})
    assert status in (403, 404, 405), (method, target, status)
    assert snapshot(run) == before


@pytest.mark.parametrize("payload, status, message", [
    (b"not json", 400, "not valid JSON"),
    ([0, 2], 400, "expected"),
    ({"indices": "0,2"}, 400, "JSON list"),
    ({"indices": [0, 2.5]}, 400, "integers"),
    ({"indices": [0, True]}, 400, "integers"),
    ({"indices": []}, 400, "empty"),
    ({"indices": [-1]}, 400, "0..39"),
    ({"indices": [N_INPUT]}, 400, "0..39"),
    ({"indices": [1, 3]}, 400, "not particles of this run"),
    ({"indices": list(range(0, 40, 2)) * 2}, 400, "only 20 particles"),
    ({"indices": [0], "name": "../evil"}, 400, "not allowed"),
    ({"indices": [0], "name": "a/b"}, 400, "not allowed"),
    ({"indices": [0], "name": "x" * 65}, 400, "not allowed"),
    ({"indices": [0], "name": 7}, 400, "not allowed"),
])
def test_export_validates_its_input(served, payload, status, message):
    run, server = served
    before = snapshot(run)
    got, body = post_json(server, payload)
    assert got == status and message in json.loads(body)["error"], body
    assert snapshot(run) == before


def test_export_request_limits(served):
    run, server = served
    before = snapshot(run)
    assert request(server, "POST", "/api/export", b"{}", {"Content-Type": "text/plain"})[0] == 415
    assert request(server, "POST", "/api/export", None, {"Content-Type": "application/json"})[0] == 411
    big = {"Content-Type": "application/json", "Content-Length": str(10**9)}
    assert request(server, "POST", "/api/export", b"{}", big)[0] == 413
    assert post_json(server, {"indices": [0]}, Origin="http://evil.example")[0] == 403
    assert post_json(server, {"indices": [0]}, Host="evil.example")[0] == 403  # DNS rebinding
    assert request(server, "GET", "/", headers={"Host": "evil.example:80"})[0] == 403
    assert request(server, "GET", "/", headers={"Host": None})[0] == 403  # no Host header at all
    assert snapshot(run) == before


def test_export_writes_only_its_folder(served):
    run, server = served
    before = snapshot(run)
    status, body = post_json(server, {"indices": [30, 2, 4], "name": "ok_1"},
                             Origin=f"http://127.0.0.1:{server.port}")
    assert status == 200, body
    result = json.loads(body)
    assert result["n_selected"] == 3 and result["files"] == ["indices.npy", "indices.txt", "particles.star"]
    new = set(snapshot(run)) - set(before)
    assert new == {f"explore_selections/ok_1/{f}" for f in result["files"]}
    np.testing.assert_array_equal(np.load(run / "explore_selections" / "ok_1" / "indices.npy"), [2, 4, 30])
    assert post_json(server, {"indices": [0], "name": "ok_1"})[0] == 409  # never overwritten


def test_json_and_png_endpoints_validate(served):
    run, server = served
    status, body = request(server, "GET", "/api/column?name=z1")
    z = np.load(run / "latents" / "epoch_001.npy")
    assert status == 200 and np.allclose(json.loads(body)["values"], z[:, 0], atol=1e-5)
    assert request(server, "GET", "/api/column?name=nope")[0] == 404
    assert request(server, "GET", "/api/column")[0] == 400
    for bad in ("abc", "-1", "20", "1e3", ""):
        assert request(server, "GET", f"/api/volume.png?i={bad}")[0] == 400, bad
    status, body = request(server, "GET", "/api/volume.png?i=0")  # this run has no checkpoint
    assert status == 503 and "cannot generate maps" in json.loads(body)["error"]


def test_cli_serves_on_loopback_and_stops_on_ctrl_c(served, monkeypatch, capsys):
    """`cryoscape explore RUN` as a user runs it: prints its 127.0.0.1 URL, serves, and Ctrl-C ends it cleanly
    (in-process; Ctrl-C is delivered to the main thread with ``_thread.interrupt_main``)."""
    import _thread
    import signal
    import time
    import urllib.request

    import cryoscape.explore.server as server_module
    from cryoscape.cli.main import main

    run, _ = served
    before = snapshot(run)
    made, statuses = [], []
    real = server_module.make_server
    monkeypatch.setattr(server_module, "make_server", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    # Ctrl-C as a user's shell delivers it: Python's default handler raises KeyboardInterrupt (whatever an earlier
    # test in this process left installed; interrupt_main does nothing under a handler that does not raise)
    handler_before = signal.signal(signal.SIGINT, signal.default_int_handler)
    returned = threading.Event()
    forced = []

    def user():
        try:
            deadline = time.monotonic() + 60
            while not made and time.monotonic() < deadline:
                time.sleep(0.05)
            with urllib.request.urlopen(made[0].url, timeout=20) as resp:
                statuses.append((resp.status, resp.read(15)))
        finally:
            for _ in range(3):  # Ctrl-C, pressed again if the server is still up after 5 s (as a user would)
                _thread.interrupt_main()
                if returned.wait(5):
                    break
            else:
                if made:  # never hang the suite: stop the server, and fail below
                    forced.append(True)
                    made[0].shutdown()

    thread = threading.Thread(target=user, daemon=True)
    thread.start()
    try:
        assert main(["explore", str(run), "--no-browser", "--k", "2", "--skip-umap"]) == 0
    finally:
        returned.set()
        signal.signal(signal.SIGINT, handler_before)
    thread.join(10)
    out = capsys.readouterr().out
    assert not forced, f"Ctrl-C (3 times) did not stop the server (SIGINT handler before: {handler_before!r})"
    assert statuses == [(200, b"<!DOCTYPE html>")]
    assert made[0].server_address[0] == "127.0.0.1" and f"http://127.0.0.1:{made[0].port}/" in out
    assert "stopped" in out
    assert snapshot(run) == before
