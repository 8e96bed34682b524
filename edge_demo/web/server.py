"""The web demo's server: the page, the exported model and its metadata, and LiteRT.js's runtime files.

    python -m stt_edge_demo.web --model exports/stt_psp_tiny            # http://127.0.0.1:8000/
    python -m stt_edge_demo.web --model exports/x/stt_gpu_edge_float16.tflite --port 8080
    python -m stt_edge_demo.web --model exports/x --lan --cert cert.pem --key key.pem   # a phone on the LAN

Serves only a fixed list of files (no directory listing, no path from the URL reaches the file
system), everything with a Content-Security-Policy that lets the page talk to this server only:
no CDN, no analytics, nothing leaves the machine. LiteRT.js comes from npm (package-lock.json next
to this file); `npm ci` runs once when edge_demo/web/node_modules is missing, offline after that.
Binds 127.0.0.1 unless --lan. A browser gives a page the camera only on https or on localhost:
see docs/web_demo.md.
"""

import argparse
import base64
import hashlib
import http.server
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading

from ..runners import ModelError, load_metadata, verify_checksum
from . import webmodel

WEB_DIR = os.path.dirname(os.path.abspath(__file__))
STATIC_DIR = os.path.join(WEB_DIR, "static")
NODE_MODULES = os.path.join(WEB_DIR, "node_modules")
LITERT_DIR = os.path.join(NODE_MODULES, "@litertjs", "core")
# The model the page opens by default, first found wins: the float16 GPU form (the phone GPU's model).
PREFERRED = ("stt_gpu_edge_float16.tflite", "frame_edge_float16.tflite", "stt_gpu_edge_float32.tflite",
             "frame_edge_float32.tflite")
MAX_REPORT_BYTES = 64 << 20
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
    result = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=WEB_DIR,
                            capture_output=True, text=True)
    if result.returncode != 0 or not os.path.isfile(installed):
        raise ServerError(f"npm ci failed in {WEB_DIR} (is the npm registry reachable?): "
                          f"{(result.stderr or result.stdout).strip()[-1500:]}")
    return LITERT_DIR


def find_models(path):
    """(folder, [edge-interface .tflite names], default name) for an export folder or one .tflite file."""
    if os.path.isfile(path):
        if not path.endswith(".tflite"):
            raise ServerError(f"{path} is not a .tflite model")
        folder, names = os.path.dirname(os.path.abspath(path)), [os.path.basename(path)]
    elif os.path.isdir(path):
        folder, names = os.path.abspath(path), sorted(n for n in os.listdir(path) if n.endswith(".tflite"))
    else:
        raise ServerError(f"model not found: {path} (an stt-export folder or a .tflite file)")
    usable, problems = [], []
    for name in names:
        model = os.path.join(folder, name)
        try:
            meta = load_metadata(model)
            verify_checksum(model, meta)
        except ModelError as error:
            problems.append(str(error))
            continue
        if "labels" in meta["outputs"] and meta["inputs"]["frame"]["dtype"] == "uint8":
            usable.append(name)
        else:
            problems.append(f"{name} is not in the edge interface (uint8 frame in, int32 labels out)")
    if not usable:
        raise ServerError(f"no usable model in {path}: " + ("; ".join(problems) or "no .tflite file") +
                          ". Export one with: stt-export ... --forms gpu --interfaces edge --formats tflite")
    default = next((n for n in PREFERRED if n in usable), usable[0])
    return folder, usable, default


def _listing(folder, url_prefix):
    """{url: file path} of the regular files directly in `folder`."""
    return {url_prefix + n: os.path.join(folder, n) for n in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, n))}


def inline_script_hashes(html):
    """CSP hashes ('sha256-...') of the inline <script> elements of a page (the import map)."""
    return [f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
            for body in re.findall(r"<script[^>]*>(.*?)</script>", html, re.S) if body.strip()]


class DemoServer(http.server.ThreadingHTTPServer):
    """Serves the page; collects the page's reports (POST /report/KIND) when `reports` is a list."""

    daemon_threads = True

    def __init__(self, model, host="127.0.0.1", port=8000, frames=None, reports=None, quiet=False,
                 runtime_dir=None):
        self.model_dir, self.models, self.default_model = find_models(model)
        litert = runtime_dir or ensure_runtime()
        self.files = {"/": os.path.join(STATIC_DIR, "index.html")}
        self.files.update(_listing(STATIC_DIR, "/"))
        self.files.update(_listing(os.path.join(litert, "dist"), "/vendor/core/"))
        self.files.update(_listing(os.path.join(os.path.dirname(litert), "wasm-utils", "dist"), "/vendor/wasm-utils/"))
        self.files.update(_listing(os.path.join(litert, "wasm"), "/wasm/"))
        self.blobs = {}  # url -> bytes made here: the WebGPU copies of the models (see webmodel.py)
        self.rewritten = {}
        for name in self.models:
            path = os.path.join(self.model_dir, name)
            self.files["/models/" + name] = path
            self.files["/models/" + name[:-len(".tflite")] + ".json"] = path[:-len(".tflite")] + ".json"
            with open(path, "rb") as f:
                data = f.read()
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
        html = open(self.files["/"], encoding="utf-8").read()
        self.csp = "; ".join([
            "default-src 'none'",
            "script-src 'self' 'wasm-unsafe-eval' " + " ".join(inline_script_hashes(html)),
            "connect-src 'self'", "style-src 'self'", "img-src 'self' data:",
            "media-src 'self' blob: mediastream:",
            "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'"])
        self.reports = reports
        self.report_event = threading.Condition()
        self.log = []  # (client address, method, path, status) of every request
        self.quiet = quiet
        super().__init__((host, port), Handler)

    def catalog(self):
        return json.dumps({"models": self.models, "default": self.default_model,
                           "webgpu_gathers_on_cpu": self.rewritten}).encode()


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "stt-keras-web-demo"

    def log_request(self, code="-", size="-"):
        self.server.log.append((self.client_address[0], self.command, self.path, int(code) if str(code).isdigit() else code))
        if not self.server.quiet:
            super().log_request(code, size)

    def _headers(self, status, content_type, length):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Content-Security-Policy", self.server.csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()

    def _send(self, status, body, content_type="text/plain; charset=utf-8"):
        self._headers(status, content_type, len(body))
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/models.json":
            return self._send(200, self.server.catalog(), TYPES[".json"])
        if path in self.server.blobs:
            return self._send(200, self.server.blobs[path], TYPES[".tflite"])
        file = self.server.files.get(path)
        if file is None:
            return self._send(404, f"not found: {path}\n".encode())
        with open(file, "rb") as f:
            body = f.read()
        self._send(200, body, TYPES.get(os.path.splitext(file)[1], "application/octet-stream"))

    do_HEAD = do_GET

    def do_POST(self):
        kind = self.path.split("?", 1)[0].removeprefix("/report/")
        length = int(self.headers.get("Content-Length") or 0)
        if self.server.reports is None or not re.fullmatch(r"[a-z]+", kind) or self.path == kind:
            return self._send(404, b"reports are not collected by this server\n")
        if length > MAX_REPORT_BYTES:
            return self._send(413, b"report too large\n")
        body = self.rfile.read(length)
        with self.server.report_event:
            self.server.reports.append((kind, body))
            self.server.report_event.notify_all()
        self._send(204, b"")


def lan_addresses():
    """This machine's LAN addresses (best effort, without sending anything)."""
    found = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.add(info[4][0])
    except OSError:
        pass
    return sorted(a for a in found if not a.startswith("127."))


def build_parser():
    p = argparse.ArgumentParser(prog="python -m stt_edge_demo.web", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="stt-export folder (its edge-interface .tflite files) or one .tflite")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--lan", action="store_true", help="listen on every interface (a phone on the same network)")
    p.add_argument("--cert", help="TLS certificate (PEM): serve https, which a phone's camera needs off localhost")
    p.add_argument("--key", help="TLS private key (PEM) for --cert")
    p.add_argument("--frames", help="raw RGB frames letterboxed to the model size, opened with /?frames=/frames.bin")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if bool(args.cert) != bool(args.key):
            raise ServerError("--cert and --key go together")
        server = DemoServer(args.model, "0.0.0.0" if args.lan else "127.0.0.1", args.port, frames=args.frames)
        if args.cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(args.cert, args.key)
            server.socket = context.wrap_socket(server.socket, server_side=True)
    except (ServerError, ModelError, ssl.SSLError, OSError) as error:
        print(f"edge_demo.web: error: {error}", file=sys.stderr)
        return 2
    scheme, port = ("https" if args.cert else "http"), server.server_address[1]
    print(f"edge_demo.web: serving {server.default_model} (of {len(server.models)}) from {server.model_dir}")
    print(f"edge_demo.web: open {scheme}://127.0.0.1:{port}/ (models: {', '.join(server.models)})")
    if args.lan:
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
