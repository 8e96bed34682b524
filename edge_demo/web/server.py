"""The web demo's server: the page, the exported model and its metadata, and LiteRT.js's runtime files.

    python -m stt_edge_demo.web --model exports/stt_psp_tiny            # http://127.0.0.1:8000/
    python -m stt_edge_demo.web --model exports/x/stt_gpu_edge_float16.tflite --port 8080
    python -m stt_edge_demo.web --model exports/x --lan --cert cert.pem --key key.pem   # a phone on the LAN

Serves only a fixed list of files (no directory listing, no path from the URL reaches the file
system), everything with a Content-Security-Policy that lets the page talk to this server only:
no CDN, no analytics, nothing leaves the machine. Each model is checked against the SHA-256 in its
metadata once, at start, and the verified bytes are served from memory. LiteRT.js comes from npm
(package-lock.json next to this file); `npm ci` runs once when edge_demo/web/node_modules is
missing, offline after that. Binds 127.0.0.1 unless --lan. A browser gives a page the camera only
on https or on localhost: see docs/web_demo.md.

Limits: at most --max-connections open connections (64; at the cap a new client takes the slot of
the connection idle the longest, or waits in the kernel's queue while all are busy), a TLS
handshake must finish within 10 s and a request (or the next one on a kept-alive connection)
must arrive within --idle-timeout (15 s); a client that reads nothing of a response for 30 s is
dropped; request lines over 64 KB get 414; requests naming another Host than this machine's
addresses and localhost names get 403 (DNS rebinding).
"""

import argparse
import asyncio
import base64
import collections
import hashlib
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading

from ..runners import ModelError, load_metadata, read_verified
from . import webmodel

try:  # aiohttp: the HTTP/1.1 parser and connection handling (see docs/web_demo.md, "What the server guarantees")
    from aiohttp import http_exceptions, web_protocol, web_response, web_server
except ImportError:  # pragma: no cover - DemoServer says what to install
    http_exceptions = web_protocol = web_response = web_server = None

WEB_DIR = os.path.dirname(os.path.abspath(__file__))
STATIC_DIR = os.path.join(WEB_DIR, "static")
NODE_MODULES = os.path.join(WEB_DIR, "node_modules")
LITERT_DIR = os.path.join(NODE_MODULES, "@litertjs", "core")
# The model the page opens by default, first found wins: the float16 dense_masked form (the phone GPU's model).
PREFERRED = ("stt_gpu_edge_float16.tflite", "frame_edge_float16.tflite", "stt_gpu_edge_float32.tflite",
             "frame_edge_float32.tflite")
MAX_REPORT_BYTES = 64 << 20  # only a test server (reports=[...]) accepts POSTs
MAX_CONNECTIONS = 64         # open connections, TLS handshakes included; more wait in the listen queue
HANDSHAKE_TIMEOUT = 10.0     # seconds for a TLS handshake
IDLE_TIMEOUT = 15.0          # seconds for (the rest of) a request, and between kept-alive requests
SEND_TIMEOUT = 30.0          # seconds a client may read nothing of a response before it is dropped
MAX_REQUEST_LINE = 64 << 10  # longer request lines: 414
MAX_HEADER_LINE = 8190       # longer header lines, or more than MAX_HEADERS headers: 400
MAX_HEADERS = 64
LOG_ENTRIES = 1000           # the request log keeps the last LOG_ENTRIES requests, paths cut to LOG_PATH
LOG_PATH = 200
CHUNK = 256 << 10
STANDARD_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css",
         ".json": "application/json", ".wasm": "application/wasm", ".tflite": "application/octet-stream",
         ".bin": "application/octet-stream", ".map": "application/json"}


class ServerError(Exception):
    """The demo cannot be served (exit code 2): no model, no runtime, bad arguments."""


def ensure_runtime(npm="npm"):
    """LiteRT.js's files in edge_demo/web/node_modules, installed from the lock file if missing."""
    lock = json.load(open(os.path.join(WEB_DIR, "package-lock.json")))
    wanted = lock["packages"]["node_modules/@litertjs/core"]["version"]
    installed = os.path.join(LITERT_DIR, "package.json")
    if os.path.isfile(installed) and json.load(open(installed)).get("version") == wanted:
        return LITERT_DIR
    if shutil.which(npm) is None:
        raise ServerError(f"LiteRT.js is not installed in {NODE_MODULES} and npm is missing: "
                          "install Node.js and npm (apt-get install nodejs npm), then rerun.")
    print(f"edge_demo.web: installing LiteRT.js {wanted} (npm ci in {WEB_DIR}) ...", file=sys.stderr, flush=True)
    # --omit=dev: the page needs LiteRT.js only (TypeScript, the dev dependency, checks the page's types in tests).
    result = subprocess.run([npm, "ci", "--omit=dev", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=WEB_DIR,
                            capture_output=True, text=True)
    if result.returncode != 0 or not os.path.isfile(installed):
        raise ServerError(f"npm ci failed in {WEB_DIR} (is the npm registry reachable?): "
                          f"{(result.stderr or result.stdout).strip()[-1500:]}")
    return LITERT_DIR


def find_models(path, allow_unverified=False):
    """(folder, [edge-interface .tflite names], default name, {name: (model bytes, metadata bytes, metadata)})
    for an export folder or one .tflite file. Every model is read once and checked against the SHA-256
    of its metadata (a metadata without one is refused unless `allow_unverified`): the bytes returned
    are the verified ones, which the server serves."""
    if os.path.isfile(path):
        if not path.endswith(".tflite"):
            raise ServerError(f"{path} is not a .tflite model")
        folder, names = os.path.dirname(os.path.abspath(path)), [os.path.basename(path)]
    elif os.path.isdir(path):
        folder, names = os.path.abspath(path), sorted(n for n in os.listdir(path) if n.endswith(".tflite"))
    else:
        raise ServerError(f"model not found: {path} (an stt-export folder or a .tflite file)")
    usable, problems, verified = [], [], {}
    for name in names:
        model = os.path.join(folder, name)
        try:
            with open(model[:-len(".tflite")] + ".json", "rb") as f:
                meta_bytes = f.read()
            meta = load_metadata(model)
            data = read_verified(model, meta, allow_unverified)
        except (ModelError, OSError) as error:
            problems.append(str(error))
            continue
        if meta["outputs"].get("labels", {}).get("dtype") == "int32" and meta["inputs"]["frame"]["dtype"] == "uint8":
            usable.append(name)
            verified[name] = (data, meta_bytes, meta)
        else:
            problems.append(f"{name} is not in the edge interface (uint8 frame in, int32 labels out)")
    if not usable:
        raise ServerError(f"no usable model in {path}: " + ("; ".join(problems) or "no .tflite file") +
                          ". Export one with: stt-export ... --forms dense_masked --interfaces edge --formats tflite")
    default = next((n for n in PREFERRED if n in usable), usable[0])
    return folder, usable, default, verified


def webgpu_problem(meta, name):
    """Why the page cannot run this model on WebGPU (None if it can): LiteRT.js's WebGPU delegate needs
    the dense_masked graph form (or a per-frame model) in the edge interface; the default form's TopK
    and loops do not build there. A metadata form "gpu" (the deprecated alias) counts as dense_masked."""
    form, interface = meta.get("form"), meta.get("interface")
    if interface != "edge":
        return f"{name} has interface {interface!r}, WebGPU needs the edge interface"
    if form not in ("dense_masked", "gpu", "frame"):
        return f"{name} is the {form!r} graph form, WebGPU needs the dense_masked form (or a per-frame model)"
    return None


def _listing(folder, url_prefix):
    """{url: file path} of the regular files directly in `folder`."""
    return {url_prefix + n: os.path.join(folder, n) for n in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, n))}


def inline_script_hashes(html):
    """CSP hashes ('sha256-...') of the inline <script> elements of a page (the import map)."""
    return [f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
            for body in re.findall(r"<script[^>]*>(.*?)</script>", html, re.S) if body.strip()]


def _host_name(header):
    """The host name of a Host header, lower case, without port and brackets ('' if malformed)."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        return header[1:end] if end > 0 and (header[end + 1:] == "" or re.fullmatch(r":\d{1,5}", header[end + 1:])) else ""
    name, _, port = header.partition(":")
    if port and not re.fullmatch(r"\d{1,5}", port):
        return ""
    return name.rstrip(".")


def _is_ip(name):
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class _Protocol(web_protocol.RequestHandler if web_protocol else object):
    """aiohttp's HTTP/1.1 connection handler, with this server's headers on its own error replies
    (malformed requests: 400, over-long request lines: 414) and one log line instead of a traceback."""

    owner = None
    closed = None

    def connection_lost(self, exc):
        super().connection_lost(exc)
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)

    def handle_error(self, request, status=500, exc=None, message=None):
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started")
        if isinstance(exc, http_exceptions.LineTooLong):  # the request line's limit is the larger one
            status, text = ((414, "request line too long") if f"more than {MAX_REQUEST_LINE} bytes" in str(exc)
                            else (431, "request header too long"))
        elif status == 500:
            text = "internal error"
            self.owner._note(f"internal error: {type(exc).__name__}: {str(exc)[:200]}")
        else:
            text = "bad request"
        response = self.owner._response(status, f"{status} {text}\n".encode())
        response.force_close()
        self.owner._record(request.remote, "-", "-", status)
        return response


class DemoServer:
    """Serves the page; collects the page's reports (POST /report/KIND) when `reports` is a list.

    Built on aiohttp's HTTP/1.1 protocol and asyncio (TLS handshakes run beside the other
    connections, never in the accept loop). Same use as a socketserver: construct (binds the port),
    `serve_forever()` in a thread, `shutdown()` from another, `server_close()`.
    """

    def __init__(self, model, host="127.0.0.1", port=8000, frames=None, reports=None, quiet=False,
                 runtime_dir=None, ssl_context=None, allow_unverified=False, allowed_hosts=(),
                 max_connections=MAX_CONNECTIONS, idle_timeout=IDLE_TIMEOUT, handshake_timeout=HANDSHAKE_TIMEOUT,
                 send_timeout=SEND_TIMEOUT):
        if web_protocol is None:
            raise ServerError("aiohttp is not installed: pip install 'stt-keras[web]' (or aiohttp)")
        self.model_dir, self.models, self.default_model, verified = find_models(model, allow_unverified)
        litert = runtime_dir or ensure_runtime()
        self.files = {"/": os.path.join(STATIC_DIR, "index.html")}
        self.files.update(_listing(STATIC_DIR, "/"))
        self.files.update(_listing(os.path.join(litert, "dist"), "/vendor/core/"))
        self.files.update(_listing(os.path.join(os.path.dirname(litert), "wasm-utils", "dist"), "/vendor/wasm-utils/"))
        self.files.update(_listing(os.path.join(litert, "wasm"), "/wasm/"))
        self.cache = {}  # url -> bytes of self.files, read on first use (the keys are the fixed list above)
        self.blobs = {}  # url -> bytes held in memory: the verified models, their metadata, the WebGPU copies
        self.rewritten, self.metadata = {}, {}
        for name in self.models:
            data, meta_bytes, meta = verified[name]
            self.metadata[name] = meta
            self.blobs["/models/" + name] = data
            self.blobs["/models/" + name[:-len(".tflite")] + ".json"] = meta_bytes
            try:
                self.blobs["/models/webgpu/" + name], self.rewritten[name] = webmodel.gather_indices_2d(data)
            except Exception as error:  # a model this rewrite does not understand: WebGPU gets the file as is
                print(f"edge_demo.web: warning: {name}: no WebGPU copy ({error}); WebGPU gets the file as exported",
                      file=sys.stderr)
                self.blobs["/models/webgpu/" + name], self.rewritten[name] = data, 0
        if frames is not None:
            if not os.path.isfile(frames):
                raise ServerError(f"frames file not found: {frames}")
            self.files["/frames.bin"] = frames
        with open(self.files["/"], encoding="utf-8") as f:
            html = f.read()
        self.csp = "; ".join([
            "default-src 'none'",
            "script-src 'self' 'wasm-unsafe-eval' " + " ".join(inline_script_hashes(html)),
            "connect-src 'self'", "style-src 'self'", "img-src 'self' data:",
            "media-src 'self' blob: mediastream:",
            "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'"])
        self.reports = reports
        self.report_event = threading.Condition()
        self.log = collections.deque(maxlen=LOG_ENTRIES)  # (client, method, path, status) of the last requests
        self.quiet = quiet
        self.ssl_context = ssl_context
        self.max_connections, self.idle_timeout = int(max_connections), float(idle_timeout)
        self.handshake_timeout, self.send_timeout = float(handshake_timeout), float(send_timeout)
        if self.max_connections < 1:
            raise ServerError(f"max_connections must be at least 1, got {max_connections}")
        self.allowed_hosts = {"localhost", "localhost.localdomain", "ip6-localhost", socket.gethostname().lower()}
        self.allowed_hosts.update(h.lower().rstrip(".") for h in allowed_hosts)
        if not _is_ip(host):
            self.allowed_hosts.add(host.lower())
        self.open_connections = 0
        self._handshaking, self._accepted = {}, {}  # task / protocol -> when accepted, while it lasts
        self._loop = self._stop = None
        self._done = threading.Event()
        self._done.set()
        try:
            self.socket = socket.create_server((host, port), backlog=128)
        except OverflowError:
            raise ServerError(f"port {port} is not in 0..65535")
        except OSError as error:
            raise ServerError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()[:2]

    # ------------------------------------------------------------ running
    def serve_forever(self):
        """Serves until shutdown() (from another thread) or KeyboardInterrupt."""
        self._done.clear()
        try:
            asyncio.run(self._serve())
        finally:
            self._done.set()

    def shutdown(self):
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop has ended already
                pass
        self._done.wait(10)

    def server_close(self):
        self.socket.close()

    async def _serve(self):
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: self._note(f"{context.get('message')}: {context.get('exception')}"))
        self._stop = asyncio.Event()
        self._loop = loop
        self._http = web_server.Server(self._handle, handler_cancellation=True)
        self._kwargs = dict(keepalive_timeout=self.idle_timeout, access_log=None, max_line_size=MAX_REQUEST_LINE,
                            max_field_size=MAX_HEADER_LINE, max_headers=MAX_HEADERS, lingering_time=1.0)
        slots = asyncio.Semaphore(self.max_connections)
        connections = set()
        accept = loop.create_task(self._accept(slots, connections))
        try:
            await self._stop.wait()
        finally:
            accept.cancel()
            for protocol in list(self._http.connections):
                protocol.force_close()
            for task in list(connections):
                task.cancel()
            await asyncio.gather(accept, *connections, return_exceptions=True)
            self._loop = None

    async def _accept(self, slots, connections):
        loop = asyncio.get_running_loop()
        while True:
            if slots.locked():
                await self._make_room(slots)
            else:
                await slots.acquire()
            try:
                conn, address = await loop.sock_accept(self.socket)
            except OSError as error:  # out of file descriptors, a connection reset while queued, ...
                slots.release()
                self._note(f"accept failed: {error}")
                await asyncio.sleep(0.1)
                continue
            except BaseException:
                slots.release()
                raise
            task = loop.create_task(self._connection(conn, slots))
            connections.add(task)
            task.add_done_callback(connections.discard)

    async def _make_room(self, slots):
        """At the connection cap: takes a slot as soon as one frees, or, when a client is waiting to be
        accepted, frees the slot of the connection idle the longest (one waiting for its first request or
        between kept-alive requests, or still in its TLS handshake). Busy connections are never closed."""
        loop = asyncio.get_running_loop()
        fd = self.socket.fileno()
        waiting = loop.create_future()
        loop.add_reader(fd, lambda: waiting.done() or waiting.set_result(None))
        acquire = asyncio.ensure_future(slots.acquire())
        try:
            await asyncio.wait({waiting, acquire}, return_when=asyncio.FIRST_COMPLETED)
            if not acquire.done():
                self._evict_idle()
            await acquire
        except BaseException:
            acquire.cancel()
            if acquire.done() and not acquire.cancelled():
                slots.release()
            raise
        finally:
            loop.remove_reader(fd)

    def _evict_idle(self):
        candidates = [(start, task) for task, start in self._handshaking.items()]
        candidates += [(start, protocol) for protocol, start in self._accepted.items()
                       if not getattr(protocol, "_request_in_progress", True) and not getattr(protocol, "_messages", True)]
        if candidates:
            _, victim = min(candidates, key=lambda c: c[0])
            if isinstance(victim, asyncio.Task):
                victim.cancel()
            else:  # abort, not close: a close would first wait for a reader that may never read
                transport = victim.transport
                victim.force_close()
                if transport is not None:
                    transport.abort()

    async def _connection(self, conn, slots):
        """One connection, from accept (its slot) through the TLS handshake to its close."""
        loop = asyncio.get_running_loop()
        closed = loop.create_future()
        self.open_connections += 1
        task, made = asyncio.current_task(), []

        def protocol():
            handler = _Protocol(self._http, loop=loop, **self._kwargs)
            handler.owner, handler.closed = self, closed
            self._accepted[handler] = started
            made.append(handler)
            return handler

        timeouts = {}
        if self.ssl_context is not None:
            timeouts["ssl_handshake_timeout"] = self.handshake_timeout
            if sys.version_info >= (3, 11):  # a peer that never answers the TLS close waits this long, not 30 s
                timeouts["ssl_shutdown_timeout"] = self.handshake_timeout
        started = loop.time()
        self._handshaking[task] = started
        try:
            try:
                transport, _ = await loop.connect_accepted_socket(protocol, conn, ssl=self.ssl_context, **timeouts)
            finally:
                self._handshaking.pop(task, None)
            # A closing connection flushes what is left to send first; a peer that reads none of it would
            # hold the connection for ever: after send_timeout of closing it is aborted.
            closing_since = None
            while not closed.done():
                await asyncio.wait({closed}, timeout=1.0)
                if not closed.done() and transport.is_closing():
                    closing_since = closing_since or loop.time()
                    if loop.time() - closing_since >= self.send_timeout:
                        transport.abort()
                        await asyncio.wait({closed}, timeout=1.0)
                        break
        except (OSError, ssl.SSLError, asyncio.TimeoutError, EOFError):
            conn.close()  # a failed or timed-out TLS handshake, a reset: this connection only
        except Exception as error:  # anything else ends this connection only, in one line
            conn.close()
            self._note(f"connection failed: {type(error).__name__}: {str(error)[:200]}")
        finally:
            for handler in made:
                self._accepted.pop(handler, None)
            self.open_connections -= 1
            slots.release()

    # ------------------------------------------------------------ requests
    def _note(self, line):
        if not self.quiet:
            print(f"edge_demo.web: {line}", file=sys.stderr, flush=True)

    def _record(self, client, method, path, status):
        self.log.append((client, method, path[:LOG_PATH], status))
        if not self.quiet:
            print(f"edge_demo.web: {client} {method} {path[:LOG_PATH]} {status}", file=sys.stderr, flush=True)

    def _headers(self, content_type):
        return {"Content-Type": content_type, "Content-Security-Policy": self.csp, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache", "Cross-Origin-Resource-Policy": "same-origin",
                "Server": "stt-keras-web-demo"}

    def _response(self, status, body, content_type="text/plain; charset=utf-8", **extra):
        headers = self._headers(content_type)
        headers.update(extra)
        return web_response.Response(status=status, body=body, headers=headers)

    def catalog(self):
        problems = {name: webgpu_problem(self.metadata[name], name) for name in self.models}
        return json.dumps({"models": self.models, "default": self.default_model,
                           "webgpu_gathers_on_cpu": self.rewritten,
                           "webgpu_problems": {k: v for k, v in problems.items() if v}}).encode()

    def host_allowed(self, header):
        """Host names a browser on this machine or the LAN uses: IP addresses, localhost names, this
        machine's name and --allow-host names. Any other name is DNS rebinding (or a mistake)."""
        name = _host_name(header or "")
        return bool(name) and (_is_ip(name) or name in self.allowed_hosts)

    async def _handle(self, request):
        raw = request.raw_path
        path = raw.split("?", 1)[0]
        method = request.method
        status = 500
        try:
            response = await self._answer(request, method, path)
            status = response.status
            return response
        finally:
            self._record(request.remote, method[:16], raw, status)

    async def _answer(self, request, method, path):
        if not self.host_allowed(request.headers.get("Host")):
            return self._response(403, b"403 this server answers only to its own addresses and localhost names "
                                       b"(see --allow-host)\n")
        if method not in STANDARD_METHODS:
            return self._response(501, f"501 method {method[:16]} is not implemented\n".encode())
        if method == "POST" and self.reports is not None:
            return await self._report(request, path)
        if method not in ("GET", "HEAD"):
            allow = "GET, HEAD, POST" if self.reports is not None else "GET, HEAD"
            return self._response(405, f"405 method {method} is not allowed\n".encode(), Allow=allow)
        if path == "/models.json":
            return await self._send(request, 200, self.catalog(), TYPES[".json"])
        body, name = self.blobs.get(path), path
        if body is None:
            file = self.files.get(path)
            if file is None:
                return self._response(404, b"404 not found\n")
            body = self.cache.get(path)
            if body is None:
                try:
                    body = await asyncio.get_running_loop().run_in_executor(None, _read, file)
                except OSError:
                    return self._response(404, b"404 not found\n")
                self.cache[path] = body
            name = file
        return await self._send(request, 200, body, TYPES.get(os.path.splitext(name)[1], "application/octet-stream"))

    async def _send(self, request, status, body, content_type):
        """Writes `body` in chunks, waiting for the client to take each (at most send_timeout seconds)."""
        response = web_response.StreamResponse(status=status, headers=self._headers(content_type))
        response.content_length = len(body)
        try:
            await asyncio.wait_for(response.prepare(request), self.send_timeout)
            if request.method != "HEAD":
                view = memoryview(body)
                for start in range(0, len(body), CHUNK):
                    await asyncio.wait_for(response.write(view[start:start + CHUNK]), self.send_timeout)
        except (TimeoutError, asyncio.TimeoutError):
            self._note(f"{request.remote}: dropped, it read nothing for {self.send_timeout:.0f} s")
            if request.transport is not None:
                request.transport.abort()
        return response

    async def _report(self, request, path):
        kind = path.removeprefix("/report/")
        if kind == path or not re.fullmatch(r"[a-z]+", kind):
            return self._response(404, b"404 not found\n")
        length = request.content_length
        if length is None:
            return self._response(411, b"411 a report needs a Content-Length\n")
        if length > MAX_REPORT_BYTES:
            return self._response(413, b"413 report too large\n")
        try:
            body = await asyncio.wait_for(request.content.readexactly(length), self.send_timeout)
        except (TimeoutError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            return self._response(400, b"400 incomplete report\n")
        with self.report_event:
            self.reports.append((kind, body))
            self.report_event.notify_all()
        return self._response(204, None)


def _read(path):
    with open(path, "rb") as f:
        return f.read()

def lan_addresses():
    """This machine's LAN addresses (best effort, without sending anything)."""
    found = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.add(info[4][0])
    except OSError:
        pass
    return sorted(a for a in found if not a.startswith("127."))


def _port(text):
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (0..65535)")
    return port


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def build_parser():
    p = argparse.ArgumentParser(prog="python -m stt_edge_demo.web", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="stt-export folder (its edge-interface .tflite files) or one .tflite")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000; 0: any free port)")
    p.add_argument("--lan", action="store_true", help="listen on every interface (a phone on the same network)")
    p.add_argument("--cert", help="TLS certificate (PEM): serve https, which a phone's camera needs off localhost")
    p.add_argument("--key", help="TLS private key (PEM) for --cert")
    p.add_argument("--frames", help="raw RGB frames letterboxed to the model size, opened with /?frames=/frames.bin")
    p.add_argument("--allow-unverified", action="store_true",
                   help="serve models whose metadata records no sha256 (hand-made files); default: refuse them")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests for this host name (e.g. mybox.local); IP addresses and localhost "
                        "names always work, other names get 403 (DNS rebinding)")
    p.add_argument("--max-connections", type=_positive(int), default=MAX_CONNECTIONS,
                   help=f"open connections at most (default {MAX_CONNECTIONS}; more wait in the listen queue)")
    p.add_argument("--idle-timeout", type=_positive(float), default=IDLE_TIMEOUT,
                   help=f"seconds a connection may take to send a request, or idle between two (default {IDLE_TIMEOUT:g})")
    return p


def tls_context(cert, key):
    """A server TLS context (TLS 1.2 or newer) from PEM files; ServerError naming the file that is wrong."""
    for name, path in (("--cert", cert), ("--key", key)):
        if not os.path.isfile(path):
            raise ServerError(f"{name} {path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as error:
        raise ServerError(f"--cert {cert} / --key {key}: not a matching PEM certificate and private key "
                          f"({getattr(error, 'reason', None) or error})") from None
    return context


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if bool(args.cert) != bool(args.key):
            raise ServerError("--cert and --key go together")
        context = tls_context(args.cert, args.key) if args.cert else None
        server = DemoServer(args.model, "0.0.0.0" if args.lan else "127.0.0.1", args.port, frames=args.frames,
                            ssl_context=context, allow_unverified=args.allow_unverified, allowed_hosts=args.allow_host,
                            max_connections=args.max_connections, idle_timeout=args.idle_timeout)
    except (ServerError, ModelError, OSError) as error:
        print(f"edge_demo.web: error: {error}", file=sys.stderr)
        return 2
    scheme, port = ("https" if args.cert else "http"), server.server_address[1]
    print(f"edge_demo.web: serving {server.default_model} (of {len(server.models)}) from {server.model_dir}")
    print(f"edge_demo.web: open {scheme}://127.0.0.1:{port}/ (models: {', '.join(server.models)})")
    if args.lan:
        print(f"edge_demo.web: listening on every interface (0.0.0.0:{port}): anyone on this network can load the "
              f"page and the models" + ("" if args.cert else ", over plain http"))
        for address in lan_addresses():
            print(f"edge_demo.web: on the LAN: {scheme}://{address}:{port}/"
                  + ("" if args.cert else "  (no camera over plain http off localhost: see docs/web_demo.md)"))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        return 130
    finally:
        server.server_close()
    return 0
