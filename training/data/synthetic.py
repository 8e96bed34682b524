"""A built-in synthetic street-like video set where temporal context genuinely helps.

Every sequence is a little driving scene: sky, buildings and trees along a
horizon that scrolls with the camera's pan, a road with sidewalks, and cars and
people that move, grow as they approach, and occlude each other by depth. Each
frame then gets light sensor noise and brightness flicker, and the video has
*bursts* of heavy degradation, as real dash-cam footage does, during which the
current frame lacks what the frames just before it show:

- occluders (mud, a splash, a wiper blade): a textured blob that stays 2-5
  frames while the scene moves on behind it;
- shadows: a dark band across the view for 2-5 frames;
- exposure bursts (over- or under-exposed), motion blur and sensor-noise bursts
  over the whole frame for 1-3 frames;
- repeated frames (the camera stalls: the image is the previous one while the
  world, and so the label, moves on) and dropped frames (the scene jumps ahead).

Labels are always the true scene. `sequence(i, with_degradation=True)` also
returns which pixels each burst degraded, so evaluation can report accuracy on
degraded frames and pixels. Class appearances overlap on purpose (grey cars on a
grey road, green-clad people by the trees) and degradation removes the cues
that tell them apart (shape under blur, colour under exposure), so a degraded
frame is ambiguous exactly where the previous ones are not.

Everything is generated lazily and deterministically from (seed, sequence index),
and every frame has a label, so temporal consistency and all-frame mIoU can be
measured even though training uses only each clip's last label.
"""

import numpy as np

CLASS_NAMES = ("road", "sidewalk", "building", "vegetation", "sky", "car", "person")
PALETTE = np.array(
    [[128, 64, 128], [244, 35, 232], [70, 70, 70], [107, 142, 35], [70, 130, 180], [0, 0, 142], [220, 20, 60]],
    np.uint8,
)  # Cityscapes colours of the same classes
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, CAR, PERSON = range(7)

# Mean RGB of each class and how far an instance may stray from it. Road,
# sidewalk and cars share greys; people share vegetation's greens.
_BASE = np.array(
    [[105, 105, 110], [125, 120, 118], [110, 95, 90], [70, 110, 60], [150, 175, 210], [100, 100, 108], [85, 115, 70]],
    np.float32,
)
_SPREAD = np.array([10, 12, 35, 20, 15, 60, 45], np.float32)


def palette():
    """[num_classes, 3] uint8 colours for drawing labels."""
    return PALETTE.copy()


class SyntheticVideo:
    """Deterministic synthetic video sequences with per-frame labels.

    Args:
        num_sequences: how many sequences the set has.
        frames_per_sequence: frames in each sequence.
        height, width: frame size.
        seed: the set's seed; sequence i depends only on (seed, i).

    Example:
    >>> video = SyntheticVideo(num_sequences=2, frames_per_sequence=8, height=64, width=128)
    >>> frames, labels = video.sequence(0)
    >>> frames.shape, labels.shape
    ((8, 64, 128, 3), (8, 64, 128))
    """

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES

    def __init__(self, num_sequences, frames_per_sequence=30, height=128, width=256, seed=0):
        for name, value, low in (("num_sequences", num_sequences, 1), ("frames_per_sequence", frames_per_sequence, 1),
                                 ("height", height, 16), ("width", width, 16)):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}.")
        self.num_sequences = int(num_sequences)
        self.frames_per_sequence = int(frames_per_sequence)
        self.height = int(height)
        self.width = int(width)
        self.seed = int(seed)

    def __len__(self):
        return self.num_sequences

    def sequence(self, index, with_degradation=False):
        """(frames uint8 [N, H, W, 3], labels uint8 [N, H, W]) of sequence `index`.

        With `with_degradation`, a third array bool [N, H, W]: the pixels a
        degradation burst hid or changed in each frame.
        """
        if not 0 <= index < self.num_sequences:
            raise IndexError(f"sequence {index} out of range [0, {self.num_sequences}).")
        n, h, w = self.frames_per_sequence, self.height, self.width
        rng = np.random.default_rng([self.seed, int(index)])
        scene = _Scene(rng, h, w, 2 * n)
        bursts = _Bursts(np.random.default_rng([self.seed, int(index), 1]), n, h, w)
        frames = np.empty((n, h, w, 3), np.uint8)
        labels = np.empty((n, h, w), np.uint8)
        degraded = np.zeros((n, h, w), bool)
        clock, previous = 0, None
        for t in range(n):
            clock += bursts.advance(t)  # a dropped frame: the scene jumps ahead
            image, label = scene.render(clock)
            if bursts.repeated(t) and previous is not None:
                # The camera stalls: the image is the previous one, the label the world now.
                frames[t], labels[t] = frames[t - 1], label
                degraded[t] = previous != label
            else:
                frames[t], degraded[t] = bursts.apply(t, image, rng)
                labels[t] = label
            previous = label
        if with_degradation:
            return frames, labels, degraded
        return frames, labels


class _Scene:
    """The static layout and the moving objects of one sequence."""

    def __init__(self, rng, h, w, frames):
        self.rng, self.h, self.w = rng, h, w
        self.horizon = int(h * rng.uniform(0.35, 0.5))
        self.pan = rng.uniform(-1.5, 1.5) * w / 128  # pixels per frame of camera pan
        span = w + int(abs(self.pan) * frames) + 8  # the background strip the camera pans over
        self.span = span
        # Skyline: buildings and trees along the horizon, as column heights.
        self.top = np.full(span, self.horizon, np.int32)
        self.top_class = np.full(span, SKY, np.uint8)
        x = 0
        while x < span:
            width = int(rng.integers(w // 16, w // 5))
            cls = BUILDING if rng.random() < 0.65 else VEGETATION
            height = int(rng.integers(h // 10, int(h * 0.3)))
            self.top[x: x + width] = self.horizon - height
            self.top_class[x: x + width] = cls
            x += width + int(rng.integers(0, w // 12))
        self.shade = {c: _BASE[c] + rng.normal(0, _SPREAD[c] / 2, 3) for c in range(7)}
        self.texture = rng.normal(0, 1, (h, span)).astype(np.float32)
        self.objects = [self._new_object() for _ in range(int(rng.integers(2, 6)))]

    def _new_object(self):
        rng, h, w = self.rng, self.h, self.w
        cls = CAR if rng.random() < 0.6 else PERSON
        y = rng.uniform(self.horizon + 0.1 * h, h * 0.95)  # bottom edge on the ground
        return dict(
            cls=cls, x=rng.uniform(0, w), y=y, vx=rng.uniform(-2.5, 2.5) * w / 128,
            vy=rng.uniform(-0.3, 0.6) * h / 128, growth=rng.uniform(0.99, 1.03),
            size=rng.uniform(0.1, 0.22) * h * (1.0 if cls == CAR else 0.8),
            colour=_BASE[cls] + rng.normal(0, _SPREAD[cls], 3),
        )

    def render(self, t):
        h, w = self.h, self.w
        offset = int(round(t * self.pan)) % max(1, self.span - w)
        cols = slice(offset, offset + w)
        label = np.full((h, w), SKY, np.uint8)
        rows = np.arange(h)[:, None]
        top = self.top[cols][None, :]
        label = np.where(rows >= top, self.top_class[cols][None, :], label)
        label[self.horizon:] = SIDEWALK
        # The road narrows towards the horizon (a trapezoid).
        depth = (np.arange(h) - self.horizon).clip(0) / max(1, h - self.horizon)
        half = (0.08 + 0.42 * depth) * w
        centre = w / 2 + 0.15 * w * np.sin(0.05 * t)
        xs = np.arange(w)[None, :]
        road = (rows >= self.horizon) & (np.abs(xs - centre) <= half[:, None])
        label[road] = ROAD
        image = self.shade_of(label, cols)
        # Objects, far (small y) first so near ones occlude them.
        for obj in sorted(self.objects, key=lambda o: o["y"]):
            self._draw(obj, image, label, t)
        for obj in self.objects:  # advance, wrap around when leaving the frame
            obj["x"] += obj["vx"]
            obj["y"] = min(obj["y"] + obj["vy"], h * 1.05)
            obj["size"] *= obj["growth"]
            if obj["x"] < -obj["size"] * 2 or obj["x"] > w + obj["size"] * 2 or obj["size"] > 0.6 * h:
                obj.update(self._new_object())
        return image, label

    def shade_of(self, label, cols):
        image = np.empty(label.shape + (3,), np.float32)
        for c in range(7):
            image[label == c] = self.shade[c]
        # Texture scrolls with the background; its strength differs per class.
        strength = np.array([6, 8, 14, 22, 3, 0, 0], np.float32)[label]
        return image + (self.texture[:, cols] * strength)[..., None]

    def _draw(self, obj, image, label, t):
        h, w = label.shape
        s = obj["size"]
        x0, y1 = obj["x"], obj["y"]
        if obj["cls"] == CAR:
            bw, bh = 1.8 * s, 0.9 * s
        else:
            bw, bh = 0.45 * s, 1.4 * s
            bw *= 1.0 + 0.15 * np.sin(0.8 * t + x0)  # walking: the silhouette deforms
        top, bottom = int(y1 - bh), int(y1)
        left, right = int(x0 - bw / 2), int(x0 + bw / 2)
        if bottom <= 0 or top >= h or right <= 0 or left >= w:
            return
        yy, xx = np.mgrid[max(top, 0): min(bottom, h), max(left, 0): min(right, w)]
        if obj["cls"] == CAR:  # a body with a narrower cabin on top
            cabin = (yy < top + 0.4 * bh) & (np.abs(xx - x0) > 0.3 * bw)
            mask = ~cabin
        else:  # a head (ellipse) on a body
            head = (yy < top + 0.25 * bh)
            mask = ~head | (((xx - x0) / (0.3 * bw + 1e-6)) ** 2 + ((yy - top - 0.12 * bh) / (0.12 * bh + 1e-6)) ** 2 <= 1)
        ys, xs = yy[mask], xx[mask]
        label[ys, xs] = obj["cls"]
        image[ys, xs] = obj["colour"]


class _Bursts:
    """The degradation schedule of one sequence: which burst covers which frames.

    About a third of the frames carry a heavy burst; frames 0 .. 3 are clean, so
    every sequence starts with some clean history. Local bursts (occluders,
    shadows) keep their shape while they last; global ones hit the whole frame.
    """

    GLOBAL = ("overexposed", "underexposed", "blur", "noise")

    def __init__(self, rng, frames, h, w):
        self.h, self.w = h, w
        self.events = {}  # frame -> list of (kind, params)
        self.jumps = np.zeros(frames, np.int64)
        self.repeats = np.zeros(frames, bool)
        t = 4
        while t < frames:
            if rng.random() < 0.3:
                kind = rng.choice(["occluder", "occluder", "occluder", "shadow", "overexposed", "underexposed",
                                   "blur", "noise", "repeat"])
                length = int(rng.integers(2, 6)) if kind in ("occluder", "shadow") else int(rng.integers(1, 4))
                params = self._params(kind, rng)
                for k in range(t, min(frames, t + length)):
                    if kind == "repeat":
                        self.repeats[k] = True
                    else:
                        self.events.setdefault(k, []).append((kind, params, k - t))
                t += length + int(rng.integers(1, 4))  # a clean frame or more between bursts
            else:
                if rng.random() < 0.04:
                    self.jumps[t] = int(rng.integers(1, 3))  # dropped frames
                t += 1

    def _params(self, kind, rng):
        h, w = self.h, self.w
        if kind == "occluder":
            oh, ow = int(rng.integers(h // 4, int(h / 1.6))), int(rng.integers(w // 6, int(w / 2.5)))
            return dict(y=int(rng.integers(0, h - oh)), x=int(rng.integers(0, w - ow)), oh=oh, ow=ow,
                        colour=rng.uniform(30, 200, 3), drift=rng.uniform(-1.5, 1.5) * w / 128,
                        texture=rng.normal(0, 25, (oh, ow, 1)))
        if kind == "shadow":
            band = int(rng.integers(h // 5, h // 2))
            return dict(y=int(rng.integers(h // 3, h - band)), band=band, slope=rng.uniform(-0.3, 0.3),
                        factor=rng.uniform(0.1, 0.2))
        if kind == "overexposed":
            return dict(gain=rng.uniform(3.0, 4.5), offset=rng.uniform(120, 180))  # nearly saturated
        if kind == "underexposed":
            return dict(gain=rng.uniform(0.03, 0.07))  # nearly black: the sensor noise dominates
        if kind == "blur":
            return dict(k=int(rng.integers(max(3, w // 32), max(5, w // 14))))
        if kind == "noise":
            return dict(sigma=rng.uniform(70, 110))
        return {}

    def advance(self, t):
        return 1 + int(self.jumps[t]) if t else 0

    def repeated(self, t):
        return bool(self.repeats[t])

    def apply(self, t, image, rng):
        """(degraded uint8 image, bool mask of the pixels a burst degraded)."""
        h, w = self.h, self.w
        image = image * rng.uniform(0.85, 1.15)  # light flicker on every frame
        mask = np.zeros((h, w), bool)
        for kind, p, age in self.events.get(t, []):
            if kind == "occluder":
                x = int(np.clip(p["x"] + age * p["drift"], 0, w - p["ow"]))
                y, oh, ow = p["y"], p["oh"], p["ow"]
                image[y: y + oh, x: x + ow] = p["colour"] + p["texture"]
                mask[y: y + oh, x: x + ow] = True
            elif kind == "shadow":
                rows = np.arange(h)[:, None] - (p["y"] + p["slope"] * (np.arange(w)[None, :] - w / 2))
                band = (rows >= 0) & (rows < p["band"])
                image[band] *= p["factor"]
                mask |= band
            else:
                if kind == "overexposed":
                    image = image * p["gain"] + p["offset"]
                elif kind == "underexposed":
                    image = image * p["gain"]
                elif kind == "blur":
                    k = p["k"]
                    image = sum(np.roll(image, s, axis=1) for s in range(-k, k + 1)) / (2 * k + 1)
                elif kind == "noise":
                    image = image + rng.normal(0, p["sigma"], image.shape)
                mask[:] = True
        image = image + rng.normal(0, rng.uniform(3, 8), image.shape)  # light sensor noise
        return np.clip(image, 0, 255).astype(np.uint8), mask


def write_video(path, frames=60, height=128, width=256, seed=1000, index=0, fps=10):
    """Writes sequence `index` of SyntheticVideo(seed) as a video file (mp4v; .mkv: lossless FFV1).

    The default seed is the held-out evaluation seed of stt-eval. Returns the labels [N, H, W].
    """
    import os

    import cv2  # only this function needs OpenCV

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    video = SyntheticVideo(index + 1, frames, height, width, seed=seed)
    images, labels = video.sequence(index)
    fourcc = "FFV1" if path.lower().endswith(".mkv") else "mp4v"
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"cannot write video {path}")
    for image in images:
        writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    writer.release()
    return labels


if __name__ == "__main__":
    import argparse

    from stt_keras.sizes import parse_size

    parser = argparse.ArgumentParser(description="Write a synthetic video file (for the edge demo).")
    parser.add_argument("--out", required=True)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--size", default="128x256", type=parse_size, help="HxW")
    parser.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args()
    h, w = args.size
    write_video(args.out, args.frames, h, w, args.seed)
    print(f"wrote {args.frames} frames of {h}x{w} synthetic video to {args.out}")
