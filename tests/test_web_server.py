"""The web demo's server under hostile but fair clients, on 127.0.0.1: malformed requests, idle and
never-handshaking sockets, foreign Host headers, a model changed after start, integrity, limits,
and a bounded load test (concurrent clients plus idle plain and TLS sockets, memory and threads flat).

No browser and no npm needed: the server gets a stand-in LiteRT.js folder and a small edge-interface
model converted here (the page itself is tested in tests/test_web_demo.py).
"""

import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from stt_edge_demo.web import headless, server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W, STATE = 32, 48, [1, 4, 6, 8]
MODEL = "stt_gpu_edge_float16.tflite"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def _edge_model_bytes():
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, H, W, 3], tf.uint8, name="frame"),
                                  tf.TensorSpec(STATE, tf.float32, name="state"),
                                  tf.TensorSpec([1], tf.float32, name="reset")])
    def step(frame, state, reset):
        return {"labels": tf.minimum(tf.cast(frame[..., 0], tf.int32) // 64, 3),
                "next_state": state * (1.0 - reset[0]) + 1.0}

    return tf.lite.TFLiteConverter.from_concrete_functions([step.get_concrete_function()], tf.Module()).convert()


def write_edge_model(folder, data, name=MODEL, form="dense_masked", sha256=True):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)
    meta = {"format": "stt-keras-step/1", "form": form, "interface": "edge", "input_size": [H, W],
            "classes": ["a", "b", "c", "d"], "palette": [[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40]],
            "inputs": {"frame": {"shape": [1, H, W, 3], "dtype": "uint8"}, "state": {"shape": STATE, "dtype": "float32"},
                       "reset": {"shape": [1], "dtype": "float32"}},
            "outputs": {"labels": {"shape": [1, H, W], "dtype": "int32"}, "next_state": {"shape": STATE, "dtype": "float32"}}}
    if sha256:
        meta["sha256"] = hashlib.sha256(data).hexdigest()
    with open(os.path.join(folder, name[:-len(".tflite")] + ".json"), "w") as f:
        json.dump(meta, f)
    return str(folder)


@pytest.fixture(scope="module")
def model_bytes():
    return _edge_model_bytes()


def _runtime_stub(folder):
    """A stand-in for node_modules/@litertjs/core: the server only lists and serves its files."""
    root = folder / "node_modules"
    for rel, body in (("core/dist/index.js", b"export {};\n"), ("core/wasm/litert_wasm_internal.wasm", b"\0asm" + b"\1" * 3000000),
                      ("wasm-utils/dist/index.js", b"export {};\n")):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    with open(root / "core" / "wasm" / "big.wasm", "wb") as f:  # larger than any socket buffer: a long download
        f.truncate(40 << 20)
    return str(root / "core")


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    return _runtime_stub(tmp_path_factory.mktemp("runtime"))


@pytest.fixture(scope="module")
def export_dir(model_bytes, tmp_path_factory):
    return write_edge_model(str(tmp_path_factory.mktemp("export")), model_bytes)


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


class Running:
    """A DemoServer serving in a thread for the duration of a `with` block."""

    def __init__(self, model, runtime, **kwargs):
        kwargs.setdefault("quiet", True)
        self.server = server.DemoServer(model, port=0, runtime_dir=runtime, **kwargs)
        self.port = self.server.server_address[1]

    def __enter__(self):
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
        assert not self.thread.is_alive()


def exchange(port, data, timeout=10, tls=None):
    """Sends raw bytes, returns everything the server answered until it closed (or the timeout)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls:
        sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
    with sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except socket.timeout:
                chunks.append(b"<timeout>")
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def parse(reply):
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else None
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def get(port, path="/", host="127.0.0.1", method="GET", tls=None, extra=b""):
    return parse(exchange(port, f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n".encode()
                          + extra + b"\r\n", tls=tls))


def client_tls():
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def assert_safe_headers(headers):
    assert "default-src 'none'" in headers["content-security-policy"], headers
    assert headers["x-content-type-options"] == "nosniff", headers


# ------------------------------------------------------------------ requests
BAD_REQUESTS = {
    "request line over 64 KB": (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414),
    "header line over 8 KB": (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n", 431),
    "garbage request line": (b"\x00\x01 nothing like HTTP\r\n\r\n", 400),
    "TLS bytes on the http port": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 40 + b"\r\n\r\n", 400),
    "bad Content-Length": (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n", 400),
    "negative Content-Length": (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n", 400),
    "two Content-Lengths": (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", 400),
    "unknown method": (b"BREW / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 400),
    "OPTIONS": (b"OPTIONS / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 405),
    "PUT": (b"PUT /models/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nxx", 405),
    "DELETE": (b"DELETE / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 405),
    "POST without a report server": (b"POST /report/summary HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n"
                                     b"Connection: close\r\n\r\n{}", 405),
    "a foreign Host (DNS rebinding)": (b"GET /models.json HTTP/1.1\r\nHost: attacker.example:8000\r\nConnection: close\r\n\r\n", 403),
    "a foreign Host ending like localhost": (b"GET / HTTP/1.1\r\nHost: localhost.attacker.example\r\nConnection: close\r\n\r\n", 403),
    "no Host (HTTP/1.0)": (b"GET / HTTP/1.0\r\n\r\n", 403),
    "a Host with a bad port": (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:80x\r\nConnection: close\r\n\r\n", 403),
    "path traversal": (b"GET /../server.py HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 404),
    "encoded traversal": (b"GET /%2e%2e/server.py HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", 404),
}


def test_bad_requests_get_a_short_answer_with_the_security_headers(export_dir, runtime, capfd):
    with Running(export_dir, runtime, quiet=False) as running:
        for case, (data, expected) in BAD_REQUESTS.items():
            reply = exchange(running.port, data)
            status, headers, body = parse(reply)
            assert status == expected, (case, reply[:300])
            assert_safe_headers(headers)
            assert body and len(body) < 300 and b"Traceback" not in body, (case, body)
        # the server is still fine
        status, headers, body = get(running.port, "/")
        assert status == 200 and b"<canvas" in body
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error handling request" not in err, err[-3000:]
    assert all(len(line) < 400 for line in err.splitlines())  # paths are cut in the log


def test_host_names_that_are_served(export_dir, runtime):
    with Running(export_dir, runtime, allowed_hosts=["demo.local"]) as running:
        for host in ("127.0.0.1", f"127.0.0.1:{running.port}", "localhost", f"LOCALHOST:{running.port}", "[::1]:8000",
                     "192.168.1.20:8000", "demo.local", "demo.local.:8000"):
            status, headers, _ = get(running.port, "/models.json", host=host)
            assert status == 200, host
            assert_safe_headers(headers)
        assert get(running.port, "/", host="other.local")[0] == 403


def test_serves_the_fixed_files_only_and_the_verified_bytes(export_dir, runtime, model_bytes, tmp_path):
    folder = write_edge_model(str(tmp_path / "export"), model_bytes)
    model = os.path.join(folder, MODEL)
    with Running(folder, runtime) as running:
        status, headers, body = get(running.port, "/models/" + MODEL)
        assert status == 200 and body == model_bytes and headers["content-type"] == "application/octet-stream"
        meta_before = get(running.port, "/models/" + MODEL.replace(".tflite", ".json"))[2]
        # The files change on disk after the server started: it keeps serving the bytes it verified.
        with open(model, "r+b") as f:
            f.seek(100)
            f.write(b"\xff" * 64)
        with open(model[:-len(".tflite")] + ".json", "w") as f:
            f.write("{}")
        os.remove(model)
        assert get(running.port, "/models/" + MODEL)[2] == model_bytes
        assert get(running.port, "/models/webgpu/" + MODEL)[2] == model_bytes  # nothing to rewrite in this model
        assert get(running.port, "/models/" + MODEL.replace(".tflite", ".json"))[2] == meta_before
        status, headers, body = get(running.port, "/wasm/litert_wasm_internal.wasm", method="HEAD")
        assert status == 200 and headers["content-type"] == "application/wasm" and body == b""
        assert headers["content-length"] == str(3000004)
        assert len(get(running.port, "/wasm/litert_wasm_internal.wasm")[2]) == 3000004
        for bad in ("/export_report.json", "/models/export_report.json", "/vendor/core/../../package.json",
                    "/frames.bin", "/models/webgpu/", "/models/", "/report/summary"):
            status, headers, _ = get(running.port, bad)
            assert status == 404, bad
            assert_safe_headers(headers)
        assert len(running.server.log) <= server.LOG_ENTRIES


def test_a_missing_sha256_is_refused_unless_allowed(model_bytes, tmp_path, runtime):
    folder = write_edge_model(str(tmp_path / "unverified"), model_bytes, sha256=False)
    with pytest.raises(server.ServerError, match=r"records no sha256.*--allow-unverified"):
        server.find_models(folder)
    _, names, _, verified = server.find_models(folder, allow_unverified=True)
    assert names == [MODEL] and verified[MODEL][0] == model_bytes
    result = subprocess.run([sys.executable, "-m", "stt_edge_demo.web", "--model", folder, "--port", "0"],
                            capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=60)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "records no sha256" in result.stderr and "--allow-unverified" in result.stderr


# ------------------------------------------------------------------ connections
def test_a_socket_that_never_sends_a_client_hello_blocks_nobody(export_dir, runtime, cert):
    context = server.tls_context(*cert)
    with Running(export_dir, runtime, ssl_context=context, handshake_timeout=1.5, idle_timeout=3) as running:
        silent = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(5)]
        half = socket.create_connection(("127.0.0.1", running.port))
        half.sendall(b"\x16\x03\x01\x00")  # the start of a ClientHello, never finished
        start = time.monotonic()
        status, headers, body = get(running.port, "/models/" + MODEL, tls=client_tls())
        assert status == 200 and time.monotonic() - start < 1.0
        assert_safe_headers(headers)
        # The server drops the silent sockets after the handshake timeout.
        for sock in [*silent, half]:
            sock.settimeout(6)
            assert sock.recv(10) == b""
            sock.close()
        assert time.monotonic() - start < 6
        # Plain http on the https port: the handshake fails, the connection is closed, nothing breaks.
        assert exchange(running.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").startswith((b"", b"\x15"))
        assert get(running.port, "/", tls=client_tls())[0] == 200


def test_idle_and_slow_connections_are_closed(export_dir, runtime):
    with Running(export_dir, runtime, idle_timeout=1.0) as running:
        idle = socket.create_connection(("127.0.0.1", running.port))
        slow = socket.create_connection(("127.0.0.1", running.port))
        start = time.monotonic()
        for _ in range(4):  # a header line every 0.4 s: the request never completes
            slow.sendall(b"X-Slow: 1\r\n" if _ else b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            time.sleep(0.4)
        for sock in (idle, slow):
            sock.settimeout(5)
            try:
                rest = sock.recv(100)
            except ConnectionResetError:
                rest = b""
            assert rest == b"", rest
            sock.close()
        assert time.monotonic() - start < 4
        # keep-alive: the connection stays for the next request, then idles out
        sock = socket.create_connection(("127.0.0.1", running.port), timeout=5)
        sock.sendall(b"GET /models.json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sent, reply = time.monotonic(), b""
        while chunk := sock.recv(1 << 16):
            reply += chunk
        kept = time.monotonic() - sent
        sock.close()
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"}") and 0.8 < kept < 4, (reply[:40], kept)
        for _ in range(20):  # the server counts a connection until its close has run
            if running.server.open_connections == 0:
                break
            time.sleep(0.05)
        assert running.server.open_connections == 0


def test_connections_are_capped_and_idle_ones_make_room(export_dir, runtime, cert):
    """At the cap, a new client gets the slot of the connection idle the longest (no request yet, or a
    TLS handshake never finished); a connection busy with a response keeps its slot."""
    with Running(export_dir, runtime, max_connections=3, idle_timeout=30) as running:
        idle = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(3)]
        time.sleep(0.3)
        assert running.server.open_connections == 3
        for _ in range(5):  # each answered at once, by closing the oldest idle connection
            start = time.monotonic()
            assert get(running.port, "/models.json")[0] == 200
            assert time.monotonic() - start < 2
        assert running.server.open_connections <= 3
        closed = 0
        for sock in idle:
            sock.settimeout(2)
            try:
                closed += sock.recv(10) == b""
            except (socket.timeout, ConnectionResetError):
                pass
            sock.close()
        assert closed >= 1
    context = server.tls_context(*cert)
    with Running(export_dir, runtime, max_connections=2, idle_timeout=30, handshake_timeout=30,
                 ssl_context=context, send_timeout=10) as running:
        # A client that asked for a 40 MB file and reads almost none of it: busy, never evicted.
        busy = socket.create_connection(("127.0.0.1", running.port))
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        busy = client_tls().wrap_socket(busy, server_hostname="127.0.0.1")
        busy.sendall(b"GET /wasm/big.wasm HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        silent = socket.create_connection(("127.0.0.1", running.port))  # no ClientHello
        time.sleep(0.5)
        start = time.monotonic()
        assert get(running.port, "/models.json", tls=client_tls())[0] == 200
        assert time.monotonic() - start < 2  # the silent handshake made room, not the busy download
        silent.settimeout(2)
        assert silent.recv(10) == b""
        busy.settimeout(5)
        assert busy.recv(100).startswith(b"HTTP/1.1 200")
        busy.close()
        silent.close()


def test_cli_errors_are_one_line(export_dir, tmp_path, model_bytes):
    def run(*args):
        result = subprocess.run([sys.executable, "-m", "stt_edge_demo.web", *args], capture_output=True, text=True,
                                cwd=str(tmp_path), env={**ENV, "PYTHONPATH": ROOT}, timeout=60)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        return lines[-1]

    assert "99999 is not a port" in run("--model", export_dir, "--port", "99999")
    assert "-1 is not a port" in run("--model", export_dir, "--port=-1")
    assert "nope.pem: no such file" in run("--model", export_dir, "--cert", "nope.pem", "--key", "nope.pem")
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    assert "bad.pem" in run("--model", export_dir, "--cert", "bad.pem", "--key", "bad.pem")
    assert "must be positive" in run("--model", export_dir, "--max-connections", "0")
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        line = run("--model", export_dir, "--port", str(taken.getsockname()[1]))
        assert "cannot listen on 127.0.0.1" in line and "in use" in line, line
    finally:
        taken.close()


def test_headless_webgpu_refuses_a_model_it_cannot_run(model_bytes, tmp_path):
    """docs/web_demo.md: a folder without a dense_masked-form edge model fails on WebGPU in one line, exit 2,
    before any browser starts."""
    import cv2
    import numpy as np

    video = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    for _ in range(3):
        writer.write(np.zeros((H, W, 3), np.uint8))
    writer.release()
    default_form = write_edge_model(str(tmp_path / "default"), model_bytes, name="stt_edge_float32.tflite", form="default")
    for folder, expected in ((default_form, "'default' graph form, WebGPU needs the dense_masked form"),
                             (str(tmp_path / "missing"), "model not found")):
        out = tmp_path / "page.png"
        result = subprocess.run([sys.executable, "-m", "stt_edge_demo.web.headless", "--model", folder, "--video", video,
                                 "--backend", "webgpu", "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                                env=ENV, timeout=60)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert expected in result.stderr and not out.exists()
    demo = server.DemoServer(default_form, port=0, runtime_dir=_runtime_stub(tmp_path), quiet=True)
    catalog = json.loads(demo.catalog())  # the page reads it and names the problem instead of failing in LiteRT.js
    demo.server_close()
    assert "'default' graph form" in catalog["webgpu_problems"]["stt_edge_float32.tflite"]
    gpu_form = write_edge_model(str(tmp_path / "gpu"), model_bytes)
    for out, expected in ((video, "is not a screenshot"), (str(tmp_path / "nowhere" / "p.png"), "no folder"),
                          (str(tmp_path), "is a folder")):
        result = subprocess.run([sys.executable, "-m", "stt_edge_demo.web.headless", "--model", gpu_form, "--video",
                                 video, "--out", out], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=60)
        assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert os.path.getsize(video) > 0 and cv2.VideoCapture(video).read()[0]  # the video is intact
    full = write_edge_model(str(tmp_path / "full"), model_bytes)
    meta = json.load(open(os.path.join(full, MODEL.replace(".tflite", ".json"))))
    meta["interface"] = "full"
    assert "interface 'full'" in server.webgpu_problem(meta, MODEL)
    meta.update(interface="edge")
    assert server.webgpu_problem(meta, MODEL) is None
    meta.update(form="gpu")  # an export whose metadata says "gpu", the dense_masked form's deprecated alias
    assert server.webgpu_problem(meta, MODEL) is None
    assert headless.main  # the module imports without a browser


# ------------------------------------------------------------------ load
def _status(pid):
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["Threads"])


LOAD_SECONDS = float(os.environ.get("WEB_LOAD_SECONDS", "6"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_load_clients_and_idle_sockets_memory_and_threads_flat(export_dir, runtime, cert, tmp_path):
    """A bounded load test on 127.0.0.1, the server in its own process over TLS: 8 client threads
    making requests (the page, the model, 404s and 60 KB paths) for LOAD_SECONDS while 24 plain
    sockets that never send a ClientHello and 8 sockets stuck after the first bytes of one are held
    open (and reopened when dropped). Every request is answered; the server's memory grows by less
    than 25 MB between the end of the warm-up and the end, and its thread count stays under 16."""
    script = (
        "import sys, threading\n"
        "from stt_edge_demo.web import server\n"
        f"s = server.DemoServer({export_dir!r}, port=0, quiet=True, runtime_dir={runtime!r}, "
        f"ssl_context=server.tls_context({cert[0]!r}, {cert[1]!r}), max_connections=64, idle_timeout=2, "
        "handshake_timeout=2)\n"
        "print(s.server_address[1], flush=True)\n"
        "s.serve_forever()\n")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=ROOT, env=ENV, text=True)
    try:
        port = int(process.stdout.readline())
        tls = client_tls()
        long_path = "/" + "x" * 60000
        sent, answered, wrong, stop = [0], [0], [], threading.Event()
        lock = threading.Lock()

        def client(index):
            paths = ["/", "/models/" + MODEL, "/nothing", long_path, "/models.json"]
            n = index
            while not stop.is_set():
                path = paths[n % len(paths)]
                n += 1
                with lock:
                    sent[0] += 1
                try:
                    status, headers, body = get(port, path, tls=tls)
                except OSError as error:
                    wrong.append(f"{path[:20]}: {error}")
                    continue
                expected = 404 if path in ("/nothing", long_path) else 200
                with lock:
                    answered[0] += 1
                if status != expected or "content-security-policy" not in headers:
                    wrong.append(f"{path[:20]}: {status}")

        def idler(partial):
            while not stop.is_set():
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                    if partial:
                        sock.sendall(b"\x16\x03\x01\x00")
                    sock.settimeout(0.5)
                    while not stop.is_set():
                        try:
                            if sock.recv(10) == b"":
                                break  # dropped by the server: reopen
                        except socket.timeout:
                            continue
                    sock.close()
                except OSError:
                    time.sleep(0.1)

        threads = [threading.Thread(target=idler, args=(i < 8,), daemon=True) for i in range(32)]
        threads += [threading.Thread(target=client, args=(i,), daemon=True) for i in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(min(2.0, LOAD_SECONDS / 4))
        rss0, threads0 = _status(process.pid)
        samples = []
        end = time.monotonic() + LOAD_SECONDS
        while time.monotonic() < end:
            time.sleep(0.5)
            samples.append(_status(process.pid))
        stop.set()
        for thread in threads:
            thread.join(15)
        rss1, threads1 = _status(process.pid)
        peak_rss, peak_threads = max(s[0] for s in samples), max(s[1] for s in samples)
        print(f"load: {sent[0]} requests, {answered[0]} answered in {LOAD_SECONDS:.0f} s with 32 idle sockets; "
              f"server RSS {rss0} -> {rss1} MB (peak {peak_rss}), threads {threads0} -> {threads1} (peak {peak_threads})")
        assert not wrong, wrong[:10]
        assert answered[0] == sent[0] and sent[0] >= 20
        assert peak_rss - rss0 < 25 and rss1 - rss0 < 25, (rss0, peak_rss, rss1)
        assert peak_threads < 16, peak_threads
        # 1,500 requests with 60 KB paths (10 kept-alive connections): the memory stays where it was.
        import http.client

        before = _status(process.pid)[0]
        statuses = []

        def burst():
            connection = http.client.HTTPSConnection("127.0.0.1", port, context=tls, timeout=20)
            for _ in range(150):
                connection.request("GET", long_path)
                response = connection.getresponse()
                response.read()
                statuses.append(response.status)
            connection.close()

        workers = [threading.Thread(target=burst) for _ in range(10)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert statuses == [404] * 1500
        after = _status(process.pid)[0]
        print(f"1,500 GETs of 60 KB paths: server RSS {before} -> {after} MB")
        assert after - before < 15, (before, after)
    finally:
        process.terminate()
        process.wait(10)
        err = process.stderr.read()
    assert "Traceback" not in err, err[-3000:]


@pytest.mark.skipif(not os.path.isdir(os.path.join(server.LITERT_DIR, "wasm")) and shutil.which("npm") is None,
                    reason="the CLI needs LiteRT.js (npm ci in edge_demo/web) and npm is missing")
def test_ctrl_c_stops_the_server_quietly(export_dir, tmp_path):
    import signal

    port_holder = socket.create_server(("127.0.0.1", 0))
    port = port_holder.getsockname()[1]
    port_holder.close()
    process = subprocess.Popen([sys.executable, "-m", "stt_edge_demo.web", "--model", export_dir, "--port", str(port)],
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), cwd=str(tmp_path),
                               env={**ENV, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert f"open http://127.0.0.1:{port}/" in process.stdout.readline() + process.stdout.readline()
        idle = socket.create_connection(("127.0.0.1", port))  # an open connection does not hold the exit up
        assert get(port, "/models.json")[0] == 200
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=15)
        idle.close()
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130 and "Traceback" not in err, err
