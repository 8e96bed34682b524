"""Runs the web demo in headless Chromium on given frames: labels, summary, screenshot, and every request made.

    python -m stt_edge_demo.web.headless --model EXPORT_DIR --video in.mp4 --frames 20 --backend webgpu --out page.png

The frames are decoded and letterboxed by the Python edge demo's own code (OpenCV, edge_demo/overlay.py)
and sent to the page raw, so the page and `python -m stt_edge_demo` see the very same pixels.
Chromium is driven over its DevTools pipe (--remote-debugging-pipe, no port, no extra package) and
runs behind a proxy that refuses and records every request not to 127.0.0.1; the DevTools network
log records every request the page makes. WebGPU runs on SwiftShader (software): correct, not fast.
"""

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from .server import DemoServer

WEBGPU_FLAGS = ("--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-vulkan=swiftshader",
                "--use-webgpu-adapter=swiftshader")
QUIET_FLAGS = ("--no-first-run", "--no-default-browser-check", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
               "--disable-breakpad", "--disable-domain-reliability", "--no-pings", "--metrics-recording-only",
               "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,"
               "NetworkTimeServiceQuerying")
# Requests Chromium's browser process makes by itself (component updates, account checks): they reach
# the refusing proxy (and go no further) even with the flags above; the page cannot cause them.
BROWSER_SERVICE_HOSTS = ("update.googleapis.com", "accounts.google.com", "clients2.google.com",
                         "optimizationguide-pa.googleapis.com", "content-autofill.googleapis.com")


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class RefusingProxy:
    """An HTTP proxy that answers 403 to everything and records what was asked (host or URL)."""

    def __init__(self):
        self.asked = []
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(2)
                try:
                    line = connection.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
                    if line:  # a connection opened ahead of need (Chromium preconnects) and closed asks nothing
                        self.asked.append(line)
                    connection.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self):
        self.socket.close()


def _high_fd(fd):
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class ChromiumExited(RuntimeError):
    """Chromium's process ended while a command was being sent to it."""


class DevTools:
    """Chromium's DevTools protocol over --remote-debugging-pipe (fds 3 and 4 of the child)."""

    def __init__(self, binary, flags):
        # The child's ends are moved above fd 9 first, so that dup2 onto 3 and 4 never meets itself.
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        to_child_r, from_child_w = (_high_fd(fd) for fd in (to_child_r, from_child_w))
        self.profile = tempfile.mkdtemp(prefix="web-demo-chromium-")

        def wire():  # in the child: its fd 3 reads commands, fd 4 writes answers
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        self.process = subprocess.Popen(
            [binary, "--remote-debugging-pipe", f"--user-data-dir={self.profile}", *flags, "about:blank"],
            preexec_fn=wire, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_child_r)
        os.close(from_child_w)
        self.writer = os.fdopen(to_child_w, "wb")
        self.reader = os.fdopen(from_child_r, "rb")
        self.next_id, self.answers, self.events = 0, {}, []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.stderr = []
        self.stderr_reader = threading.Thread(target=lambda: self.stderr.extend(self.process.stderr), daemon=True)
        self.stderr_reader.start()

    def _read(self):
        buffer = b""
        while True:
            chunk = self.reader.read1(1 << 16)
            if not chunk:
                break
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self.changed:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self.answers[message["id"]] = message
                    else:
                        self.events.append(message)
                self.changed.notify_all()
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def send(self, method, params=None, session=None, timeout=60):
        self.next_id += 1
        ident = self.next_id
        message = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        try:
            self.writer.write(json.dumps(message).encode() + b"\0")
            self.writer.flush()
        except BrokenPipeError:
            raise self._exited(method) from None
        with self.changed:
            if not self.changed.wait_for(lambda: ident in self.answers or getattr(self, "closed", False), timeout):
                raise TimeoutError(f"Chromium did not answer {method} within {timeout} s")
        answer = self.answers.pop(ident, None)
        if answer is None and self.process.poll() is not None:
            raise self._exited(method)
        if answer is None or "error" in answer:
            raise RuntimeError(f"Chromium: {method} failed: {answer and answer['error']} "
                               f"{b''.join(self.stderr[-20:]).decode(errors='replace')[-1500:]}")
        return answer["result"]

    def _exited(self, method):
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = "unknown: its pipe closed"
        self.stderr_reader.join(timeout=5)  # its last lines, read to the end of the stream
        return ChromiumExited(f"Chromium exited (status {code}) before answering {method}: "
                              f"{b''.join(self.stderr[-20:]).decode(errors='replace')[-1500:]}")

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


def video_frames(path, height, width, count, with_box=False):
    """The first `count` frames of a video as `python -m stt_edge_demo` sees them: RGB, letterboxed
    ([N, height, width, 3] uint8; with_box: and the content box (top, left, height, width) inside)."""
    import cv2

    from .. import overlay

    capture = cv2.VideoCapture(path)
    frames, box = [], None
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        boxed, box = overlay.letterbox(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), height, width)
        frames.append(boxed)
    capture.release()
    if not frames:
        raise ValueError(f"no frame could be read from {path}")
    return (np.stack(frames), box) if with_box else np.stack(frames)


def run_page(model, frames, backend="webgpu", model_name=None, timeout=300, screenshot=None, chromium=None,
             window=(960, 600), probe=None, video=None, count=10, allow_unverified=False, box=None):
    """Opens the page in headless Chromium on `frames` [N, H, W, 3] uint8 (letterboxed to the model size).

    Returns a dict: labels [N, H, W] int32, summary (the page's), requests (every URL the page asked
    for, from DevTools), proxy (every request that tried to leave 127.0.0.1), served (the server's
    log), console (the page's console and errors), op_split (ops on the accelerator, ops on the CPU, as
    LiteRT.js logs them), probe (the value of the JavaScript expression `probe` evaluated in the page
    at the end, awaited). Raises RuntimeError with the page's error.
    With `frames` None and a `video` file: the page plays it through its file input (the browser's
    decoder, the user's path) and reports after `count` frames; labels is then None.
    """
    binary = chromium or find_chromium()
    if binary is None:
        raise RuntimeError("Chromium not found (apt-get install chromium)")
    work = tempfile.mkdtemp(prefix="web-demo-")
    frames_file = None
    if frames is not None:
        frames_file = os.path.join(work, "frames.bin")
        np.ascontiguousarray(frames, np.uint8).tofile(frames_file)
    reports = []
    server = DemoServer(model, port=0, frames=frames_file, reports=reports, quiet=True, allow_unverified=allow_unverified)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy = RefusingProxy()
    flags = ["--headless=new", f"--window-size={window[0]},{window[1]}", f"--proxy-server=http://127.0.0.1:{proxy.port}",
             *QUIET_FLAGS, *(WEBGPU_FLAGS if backend == "webgpu" else ())]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    browser = DevTools(binary, flags)
    try:
        try:
            target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        except ChromiumExited as error:
            # Seen once in a full test run on a loaded 2-core machine: Chromium gone before its first command.
            # One more start; a second exit is reported as it is.
            print(f"headless: {error}; starting Chromium once more", file=sys.stderr)
            browser.close()
            browser = DevTools(binary, flags)
            target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Network", "Runtime", "Log", "Page"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride", {"width": window[0], "height": window[1],
                                                             "deviceScaleFactor": 1, "mobile": False}, session=session)
        name = model_name or server.default_model
        source = "frames=/frames.bin" if frames is not None else f"count={count}"
        if box is not None:
            source += "&box=" + ",".join(str(int(v)) for v in box)
        url = f"http://127.0.0.1:{server.server_address[1]}/?backend={backend}&model={name}&{source}&report=1"
        browser.send("Page.navigate", {"url": url}, session=session)
        if frames is None:
            _choose_file(browser, session, video, timeout)
        done = lambda: any(kind in ("summary", "error") for kind, _ in reports)  # noqa: E731
        with server.report_event:
            finished = server.report_event.wait_for(done, timeout)
        console = _console(browser.events)
        errors = [json.loads(body) for kind, body in reports if kind == "error"]
        if errors or not finished:
            reason = errors[0]["message"] if errors else f"no result within {timeout} s"
            raise RuntimeError(f"the page failed on {backend}: {reason}\n" + "\n".join(console[-30:]))
        image = None
        if screenshot:
            time.sleep(0.2)  # the last status line is painted
            image = base64.b64decode(browser.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"])
            # Its own small writer: stt_edge_demo never imports stt_keras (nor TensorFlow), whose fileio.atomic_file
            # is the project's atomic writer; a screenshot needs no fsync.
            with open(screenshot + ".part", "wb") as f:
                f.write(image)
            os.replace(screenshot + ".part", screenshot)
        probed = None
        if probe:
            probed = browser.send("Runtime.evaluate", {"expression": probe, "awaitPromise": True, "returnByValue": True},
                                  session=session)["result"].get("value")
        labels = next((body for kind, body in reports if kind == "labels"), None)
        if labels is not None:
            labels = np.frombuffer(labels, "<i4").reshape(len(frames), *frames.shape[1:3])
        summary = json.loads(next(body for kind, body in reports if kind == "summary"))
        return {"labels": labels, "summary": summary,
                "requests": [e["params"]["request"]["url"] for e in browser.events
                             if e.get("method") == "Network.requestWillBeSent"],
                "proxy": list(proxy.asked), "served": list(server.log), "console": console, "screenshot": image,
                "op_split": _op_split(console), "probe": probed}
    finally:
        browser.close()
        proxy.close()
        server.shutdown()
        server.server_close()
        shutil.rmtree(work, ignore_errors=True)


def _choose_file(browser, session, path, timeout):
    """Waits until the page is ready, then picks `path` in its video file input (as a user would)."""
    ready = "document.getElementById('status').textContent"
    deadline = time.time() + timeout
    while True:
        status = browser.send("Runtime.evaluate", {"expression": ready, "returnByValue": True},
                              session=session)["result"].get("value", "")
        if status.startswith("ready"):
            break
        if status.startswith("error") or time.time() > deadline:
            raise RuntimeError(f"the page did not get ready: {status}")
        time.sleep(0.2)
    root = browser.send("DOM.getDocument", session=session)["root"]["nodeId"]
    node = browser.send("DOM.querySelector", {"nodeId": root, "selector": "#file"}, session=session)["nodeId"]
    browser.send("DOM.setFileInputFiles", {"files": [os.path.abspath(path)], "nodeId": node}, session=session)


def _op_split(console):
    """(ops on the accelerator, ops on the CPU) from LiteRT.js's log; None if it said nothing (all on one)."""
    import re

    found = [re.search(r"(\d+) operations will run on the GPU, and the remaining (\d+)", line) for line in console]
    found = [m for m in found if m]
    return (int(found[-1].group(1)), int(found[-1].group(2))) if found else None


def _console(events):
    lines = []
    for e in events:
        if e.get("method") == "Runtime.consoleAPICalled":
            p = e["params"]
            lines.append(f"console.{p['type']}: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif e.get("method") == "Runtime.exceptionThrown":
            lines.append("exception: " + e["params"]["exceptionDetails"].get("exception", {}).get("description", ""))
        elif e.get("method") == "Log.entryAdded":
            lines.append(f"log.{e['params']['entry']['level']}: {e['params']['entry']['text']}")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m stt_edge_demo.web.headless", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="stt-export folder or one edge-interface .tflite")
    p.add_argument("--model-name", help="which .tflite of the folder (default: the server's choice)")
    p.add_argument("--video", required=True)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--backend", choices=("webgpu", "wasm"), default="webgpu")
    p.add_argument("--out", required=True, help="screenshot .png")
    p.add_argument("--allow-unverified", action="store_true", help="accept models whose metadata records no sha256")
    args = p.parse_args(argv)
    from .server import ServerError, find_models, webgpu_problem
    from ..runners import ModelError

    def fail(message):
        print(f"{p.prog}: error: {message}", file=sys.stderr)
        return 2

    if args.frames < 1:
        return fail(f"--frames must be at least 1, got {args.frames}")
    if not os.path.isfile(args.video):
        return fail(f"video not found: {args.video}")
    folder_out = os.path.dirname(os.path.abspath(args.out))
    if os.path.isdir(args.out) or not os.path.isdir(folder_out):
        return fail(f"--out {args.out}: " + ("is a folder" if os.path.isdir(args.out) else f"no folder {folder_out}"))
    if os.path.exists(args.out) and (os.path.samefile(args.out, args.video) or not args.out.lower().endswith(".png")):
        return fail(f"--out {args.out} exists and is not a screenshot (.png) of an earlier run; refusing to replace it")
    try:
        folder, names, default, verified = find_models(args.model, args.allow_unverified)
    except (ServerError, ModelError) as error:
        return fail(str(error))
    name = args.model_name or default
    if name not in verified:
        return fail(f"--model-name {name} is not one of the usable models in {folder}: {', '.join(names)}")
    meta = verified[name][2]
    if args.backend == "webgpu":
        problem = webgpu_problem(meta, name)
        if problem:
            usable = [n for n in names if webgpu_problem(verified[n][2], n) is None]
            return fail(f"{problem}; " + (f"choose one of {', '.join(usable)} with --model-name" if usable else
                                          "export one with: stt-export ... --forms dense_masked --interfaces edge --formats tflite")
                        + ", or use --backend wasm")
    try:
        frames, box = video_frames(args.video, *meta["input_size"], args.frames, with_box=True)
    except ValueError as error:
        return fail(str(error))
    result = run_page(args.model, frames, args.backend, name, screenshot=args.out,
                      allow_unverified=args.allow_unverified, box=box)
    s = result["summary"]
    outside = [u for u in result["requests"] if not u.startswith(("http://127.0.0.1:", "data:", "blob:"))]
    print(f"edge_demo.web.headless: {s['frames']} frames of {s['model']} on {s['backend']}, "
          f"{np.mean(s['msPerFrame']):.1f} ms per frame (headless, SwiftShader for WebGPU: not a speed measure); "
          f"screenshot {args.out}; requests of the page outside 127.0.0.1: {len(outside)}; refused at the proxy "
          f"(Chromium's own service requests): {len(result['proxy'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
