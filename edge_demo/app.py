"""The edge demo loop: video or camera -> streaming step -> overlay video, per-frame CSV, summary.

Exit codes: 0 done; 2 bad input (missing/unreadable video, camera, model, metadata
mismatch, checksum, delegate); 3 the video ended before the frame count its header
promised (what was processed is written); 130 interrupted (Ctrl-C, SIGINT);
143 terminated (SIGTERM). Outputs are always finalised (video writer released,
CSV written, summary printed), whichever of the two signals stops the demo.
"""

import argparse
import contextlib
import csv
import os
import signal
import statistics
import sys
import time

import cv2

from . import overlay
from .runners import ModelError
from .stream import Stream


class InputError(Exception):
    """The video or camera cannot be used (exit code 2)."""


class Terminated(BaseException):
    """SIGTERM arrived: stop like Ctrl-C does (outputs finalised), exit code 143."""


class _StopSignals:
    """SIGTERM (and Ctrl-C) stop the loop by an exception, except inside `held()`: a frame written to the
    video and its CSV row go together, and a signal that lands there takes effect right after the pair.
    Blocking the signal in the OS around the pair is not enough: one delivered just before the block
    still runs its Python handler inside it."""

    def __init__(self):
        self.inside, self.pending, self.previous = False, None, {}

    def install(self):
        """Handles SIGTERM, and SIGINT where it has Python's default handler (not a job started with it ignored)."""
        default_ctrl_c = signal.getsignal(signal.SIGINT) is signal.default_int_handler
        wanted = [signal.SIGTERM] + ([signal.SIGINT] if default_ctrl_c else [])
        for signum in wanted:
            try:
                self.previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: the signals keep their handlers
                return

    def ignore(self):
        """While the outputs are finalised: a second signal must not cut that short."""
        for signum in self.previous:
            signal.signal(signum, signal.SIG_IGN)

    def restore(self):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        stop = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        if self.inside:
            self.pending = self.pending or stop
            return
        raise stop

    @contextlib.contextmanager
    def held(self):
        self.inside = True
        try:
            yield
        finally:
            self.inside = False
            pending, self.pending = self.pending, None
            if pending is not None:
                raise pending


def build_parser():
    try:
        from stt_keras_cli import HelpFormatter  # no TensorFlow: the commands' shared help format (defaults shown)
    except ImportError:  # the edge demo copied on its own
        HelpFormatter = argparse.RawDescriptionHelpFormatter

    p = argparse.ArgumentParser(prog="python -m stt_edge_demo", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, help=".tflite (LiteRT) or .onnx (ONNX Runtime); metadata .json next to it")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", help="input video file")
    source.add_argument("--camera", type=int, help="camera index (e.g. 0)")
    p.add_argument("--out", help="output overlay video (.mp4: mp4v, .avi: MJPG, .mkv: lossless FFV1)")
    p.add_argument("--csv", help="per-frame latency CSV (default: next to --out with the extension .csv; "
                                 "none without --out)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for the runtime (default 2)")
    p.add_argument("--delegate", help="external LiteRT delegate .so (e.g. a GPU delegate build)")
    p.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: LiteRT interpreter / ONNX Runtime; gpu: LiteRT's GPU accelerator "
                        "(CompiledModel; on a machine without a GPU, SwiftShader from the chromium package)")
    p.add_argument("--no-display", action="store_true", help="headless: no window")
    p.add_argument("--no-legend", action="store_true", help="no legend / fps text on the overlay")
    p.add_argument("--max-frames", type=int, default=None, help="stop after N frames (default: the whole video)")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1]")
    p.add_argument("--allow-unverified", action="store_true",
                   help="run a model whose metadata records no sha256 (a hand-made file); default: refuse it")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also show the runtimes' own log lines (LiteRT, ONNX Runtime; hidden by default)")
    return p


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_paths(args, csv_path):
    """InputError unless every output can be written without touching an input: run before anything is read.

    Refused: an output that is (also through a link or another spelling) the video, the model, its
    metadata or the delegate; --out and the CSV being one file; an output that is a folder, or whose
    folder is missing or is a regular file.
    """
    from .runners import metadata_path

    inputs = [(f"--video {args.video}", args.video)] if args.video is not None else []
    inputs += [(f"--model {args.model}", args.model), ("the model's metadata", metadata_path(args.model))]
    if args.delegate:
        inputs.append((f"--delegate {args.delegate}", args.delegate))
    outputs = [("--out", args.out)] if args.out else []
    if csv_path:
        outputs.append(("--csv" if args.csv else "the CSV (next to --out)", csv_path))
    for name, path in outputs:
        if os.path.isdir(path):
            raise InputError(f"{name} {path} is a folder; give a file name.")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            ancestor = parent
            while ancestor and not os.path.exists(ancestor) and os.path.dirname(ancestor) != ancestor:
                ancestor = os.path.dirname(ancestor)
            if os.path.exists(ancestor) and not os.path.isdir(ancestor):
                raise InputError(f"{name} {path}: {ancestor} is a file, not a folder.")
            raise InputError(f"{name} {path}: the folder {parent} does not exist.")
        if os.path.exists(path) or os.path.islink(path):
            for what, source in inputs:
                if os.path.exists(source) and _same_file(path, source):
                    raise InputError(f"{name} {path} is {what}: refusing to write over an input.")
    if len(outputs) == 2 and os.path.abspath(outputs[0][1]) == os.path.abspath(outputs[1][1]) or (
            len(outputs) == 2 and os.path.exists(outputs[0][1]) and os.path.exists(outputs[1][1])
            and _same_file(outputs[0][1], outputs[1][1])):
        raise InputError(f"--out and {outputs[1][0]} are the same file ({args.out}).")


class _NoProgress:
    def update(self, count=1):
        pass

    def close(self):
        pass


def _progress(total):
    """The progress line of stt-eval (stt_keras/utils/progress.py, loaded without stt_keras: no TensorFlow here);
    none when the edge demo runs without the rest of the project."""
    try:
        from stt_keras_cli import load_library_module

        return load_library_module("progress", "utils", "progress.py").Progress("edge_demo", total or None, "frames")
    except (ImportError, OSError, AttributeError):
        return _NoProgress()


def open_source(args):
    if args.video is not None:
        if not os.path.isfile(args.video):
            raise InputError(f"video not found: {args.video}")
        capture = cv2.VideoCapture(args.video)
        if not capture.isOpened():
            raise InputError(f"cannot read video {args.video} (not a video, or a codec OpenCV lacks)")
        fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
        promised = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        return capture, fps, promised
    capture = cv2.VideoCapture(args.camera)
    if not capture.isOpened():
        raise InputError(f"camera {args.camera} cannot be opened (is it connected? try another index)")
    return capture, 30.0, 0


def open_writer(path, fps, width, height):
    # .mkv: lossless FFV1 (exact colours, for checking); .avi: MJPG; anything else: mp4v.
    suffix = os.path.splitext(path)[1].lower()
    fourcc = cv2.VideoWriter_fourcc(*{".mkv": "FFV1", ".avi": "MJPG"}.get(suffix, "mp4v"))
    writer = cv2.VideoWriter(path, fourcc, fps, (width, height))
    if not writer.isOpened():
        raise InputError(f"cannot write video {path}")
    return writer


def display_available(args):
    if args.no_display:
        return False
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        print("edge_demo: no display found, running headless (--no-display).", file=sys.stderr)
        return False
    return True


def summarize(latencies_ms, wall_seconds):
    if not latencies_ms:
        return {"frames": 0}
    ordered = sorted(latencies_ms)
    return {
        "frames": len(latencies_ms),
        "mean_ms": statistics.fmean(latencies_ms),
        "median_ms": statistics.median(latencies_ms),
        "p95_ms": ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))],
        "fps": len(latencies_ms) / wall_seconds if wall_seconds > 0 else float("nan"),
    }


def run(args):
    """Processes the stream; returns (exit code, summary dict)."""
    if not 0.0 <= args.alpha <= 1.0:
        raise InputError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.max_frames is not None and args.max_frames < 1:
        raise InputError(f"--max-frames must be at least 1, got {args.max_frames}")
    if args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}")
    csv_path = args.csv or (os.path.splitext(args.out)[0] + ".csv" if args.out else None)
    check_paths(args, csv_path)
    stream = Stream.open(args.model, args.threads, args.delegate, getattr(args, "accelerator", "cpu"),
                         allow_unverified=getattr(args, "allow_unverified", False))
    runner, meta = stream.runner, stream.meta
    if hasattr(runner, "describe"):
        print(f"edge_demo: {runner.describe()}", flush=True)
    print(f"edge_demo: {len(meta['classes'])} classes: {', '.join(map(str, meta['classes']))}", flush=True)
    model_h, model_w = meta["input_size"]
    capture, fps, promised = open_source(args)
    show = display_available(args)
    writer, rows, latencies = None, [], []
    code, count = 0, 0
    total = min(promised, args.max_frames) if promised and args.max_frames else (promised or args.max_frames)
    progress = _progress(total)
    start = time.perf_counter()
    stops = _StopSignals()
    stops.install()
    try:
        while args.max_frames is None or count < args.max_frames:
            ok, frame = capture.read()
            if not ok:
                if args.video is not None and promised and count < promised:
                    print(f"edge_demo: warning: the video ended early, at frame {count} of {promised} "
                          "(truncated?); the frames processed so far are written.", file=sys.stderr)
                    code = 3
                elif args.camera is not None:
                    print(f"edge_demo: camera {args.camera} stopped delivering frames.", file=sys.stderr)
                break
            frame_start = time.perf_counter()
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            boxed, box = overlay.letterbox(rgb, model_h, model_w)
            model_start = time.perf_counter()
            labels = stream.step(boxed, return_labels=True)
            model_ms = 1000.0 * (time.perf_counter() - model_start)
            labels = overlay.unletterbox(labels, box, frame.shape[0], frame.shape[1])
            image = overlay.blend(frame, overlay.colorize(labels, meta["palette"]), args.alpha)
            if not args.no_legend:
                running_fps = (count + 1) / max(time.perf_counter() - start, 1e-9)
                overlay.draw_legend(image, meta["classes"], meta["palette"], running_fps)
            if args.out and writer is None:
                writer = open_writer(args.out, fps, frame.shape[1], frame.shape[0])
            # The written frame and its CSV row go together: a signal is held back between the two
            # (delivered right after), so a stopped run never has a frame without its row.
            with stops.held():
                if writer is not None:
                    writer.write(image)
                latencies.append(model_ms)
                rows.append((count, model_ms, 1000.0 * (time.perf_counter() - frame_start)))
                count += 1
            progress.update()
            if show:
                cv2.imshow("edge_demo", image)
                if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                    break
    except KeyboardInterrupt:
        code = 130
    except Terminated:
        code = 143
    finally:
        stops.ignore()
        wall = time.perf_counter() - start
        progress.close()
        stream.close()
        capture.release()
        if writer is not None:
            writer.release()
        if show:
            cv2.destroyAllWindows()
        if csv_path:
            with open(csv_path, "w", newline="") as f:
                out = csv.writer(f)
                out.writerow(["frame", "latency_ms", "total_ms"])
                out.writerows((i, f"{a:.3f}", f"{b:.3f}") for i, a, b in rows)
        stops.restore()
    summary = summarize(latencies, wall)
    summary.update(csv=csv_path, out=args.out, runtime=type(runner).__name__,
                   providers=getattr(runner, "providers", None),
                   fully_accelerated=getattr(runner, "fully_accelerated", None))
    return code, summary


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not args.verbose and argv is None:  # a command line (a caller passing argv keeps its own fds)
        try:
            from stt_keras_cli.quiet import filter_native_logs  # LiteRT's INFO lines, on stdout too
        except ImportError:  # the edge demo copied on its own: the runtimes' lines stay
            pass
        else:
            filter_native_logs()
    try:
        code, summary = run(args)
    except (ModelError, InputError) as error:
        print(f"edge_demo: error: {error}", file=sys.stderr)
        return 2
    if summary["frames"]:
        print(f"edge_demo: {summary['frames']} frames, model latency mean {summary['mean_ms']:.1f} ms, "
              f"median {summary['median_ms']:.1f} ms, p95 {summary['p95_ms']:.1f} ms; {summary['fps']:.1f} fps "
              f"end to end ({summary['runtime']})" + (f"; per-frame CSV: {summary['csv']}" if summary["csv"] else ""))
    else:
        print("edge_demo: no frames processed.", file=sys.stderr)
        code = code or 2
    return code
