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

The video is one member of a family of generators (`FAMILIES`, `family=` of
`SyntheticVideo`): named presets that differ in what time must supply, i.e.
camera motion (static, pan, forward zoom), object speed, occluder kind and
persistence (textured blobs, thin moving bars, large static patches on the lens,
vehicles passing close to the camera), degradation kind and rate (exposure,
blur, noise, compression blocks, stalled and dropped frames), class count
(4-12) and resolution. `default` is the video described above.
"""

import dataclasses

import numpy as np

from stt_keras.utils.sizes import MIN_FRAME_SIDE

CLASS_NAMES = ("road", "sidewalk", "building", "vegetation", "sky", "car", "person")
PALETTE = np.array(
    [[128, 64, 128], [244, 35, 232], [70, 70, 70], [107, 142, 35], [70, 130, 180], [0, 0, 142], [220, 20, 60]],
    np.uint8,
)  # Cityscapes colours of the same classes
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, CAR, PERSON = range(7)
# The scene classes beyond the default seven, drawn only by families with `extras`.
SCENE_CLASSES = CLASS_NAMES + ("truck", "bicycle", "pole", "sign", "terrain")
TRUCK, BICYCLE, POLE, SIGN, TERRAIN = range(7, 12)
_SCENE_PALETTE = np.concatenate([PALETTE, np.array(
    [[0, 0, 70], [119, 11, 32], [153, 153, 153], [220, 220, 0], [152, 251, 152]], np.uint8)])

# Mean RGB of each class and how far an instance may stray from it. Road,
# sidewalk and cars share greys; people share vegetation's greens (trucks the
# cars' greys, bicycles the people's colours, poles and signs the buildings').
_BASE = np.array(
    [[105, 105, 110], [125, 120, 118], [110, 95, 90], [70, 110, 60], [150, 175, 210], [100, 100, 108], [85, 115, 70],
     [105, 102, 108], [90, 110, 75], [115, 105, 100], [120, 110, 90], [80, 115, 65]],
    np.float32,
)
_SPREAD = np.array([10, 12, 35, 20, 15, 60, 45, 50, 45, 20, 40, 18], np.float32)
_TEXTURE = np.array([6, 8, 14, 22, 3, 0, 0, 0, 0, 4, 2, 18], np.float32)  # texture strength per scene class


@dataclasses.dataclass(frozen=True)
class Family:
    """One generator of the synthetic video family: what the scenes, occluders and degradations are.

    Fields:
        description: one line.
        size: the family's own frame size (H, W).
        classes: the label classes, each a (name, scene classes it covers) pair;
            scene classes are `SCENE_CLASSES` names.
        extras: draw trucks, bicycles, poles, signs and terrain too.
        camera: "pan" (the view scrolls along the street), "static" (no pan, the
            road does not sway) or "zoom" (the camera drives forward: the view
            grows from the horizon's centre and back, smoothly).
        pan_scale: pan speed relative to the default (-1.5 .. 1.5 px/frame at 128 wide).
        zoom: the largest zoom factor minus 1 ("zoom" camera).
        object_speed: object speed relative to the default.
        objects: (low, high): low <= number of objects < high.
        burst_rate: chance that a burst starts at a frame outside a burst.
        kinds: the burst kinds, drawn uniformly from this tuple (repeat a kind to
            weight it): "occluder" (textured blob that drifts), "bars" (thin
            moving bars), "patch" (a large static patch on the lens), "vehicle"
            (a vehicle passing close to the camera), "shadow", "overexposed",
            "underexposed", "blur", "noise", "blocks" (compression blocks),
            "repeat" (stalled frames: the image stays, the world moves on).
        local_length, global_length, patch_length: (low, high) burst lengths in
            frames of the local kinds (occluder, bars, vehicle, shadow), the
            whole-frame kinds and "patch".
        jump_rate: chance that a frame outside a burst drops 1-2 frames (the scene jumps).
    """

    description: str
    size: tuple = (128, 256)
    classes: tuple = tuple((name, (name,)) for name in CLASS_NAMES)
    extras: bool = False
    camera: str = "pan"
    pan_scale: float = 1.0
    zoom: float = 0.0
    object_speed: float = 1.0
    objects: tuple = (2, 6)
    burst_rate: float = 0.3
    kinds: tuple = ("occluder", "occluder", "occluder", "shadow", "overexposed", "underexposed", "blur", "noise", "repeat")
    local_length: tuple = (2, 6)
    global_length: tuple = (1, 4)
    patch_length: tuple = (6, 15)
    jump_rate: float = 0.04

    @property
    def class_names(self):
        return tuple(name for name, _ in self.classes)

    @property
    def num_classes(self):
        return len(self.classes)

    def label_map(self):
        """uint8 [12]: the family's class of every scene class."""
        lut = np.zeros(len(SCENE_CLASSES), np.uint8)
        for i, (_, members) in enumerate(self.classes):
            for member in members:
                lut[SCENE_CLASSES.index(member)] = i
        return lut

    def palette(self):
        """[num_classes, 3] uint8: each class drawn in the colour of the first scene class it covers."""
        return np.array([_SCENE_PALETTE[SCENE_CLASSES.index(members[0])] for _, members in self.classes], np.uint8)


_STREET6 = (("road", ("road",)), ("sidewalk", ("sidewalk", "terrain")), ("background", ("building", "vegetation", "pole", "sign")),
            ("sky", ("sky",)), ("vehicle", ("car", "truck")), ("person", ("person", "bicycle")))
_COARSE4 = (("ground", ("road", "sidewalk", "terrain")), ("structure", ("building", "vegetation", "pole", "sign")),
            ("sky", ("sky",)), ("object", ("car", "person", "truck", "bicycle")))
_STREET9 = tuple((name, (name,)) for name in CLASS_NAMES[:5]) + (
    ("car", ("car",)), ("person", ("person", "bicycle")), ("truck", ("truck",)), ("pole", ("pole", "sign")))
_STREET12 = tuple((name, (name,)) for name in SCENE_CLASSES)

# The named presets. Two of them are held out (docs/performance.md): they are never used to choose a setting.
FAMILIES = {
    "default": Family("the built-in street video: pan, drifting blobs and shadows, exposure/blur/noise bursts, stalls"),
    "static_bars": Family(
        "a static camera, faster objects, thin moving bars (a fence, wipers) and shadows, noise bursts and stalls",
        size=(96, 192), classes=_STREET6, extras=True, camera="static", pan_scale=0.0, object_speed=1.6,
        kinds=("bars", "bars", "bars", "shadow", "noise", "repeat"), local_length=(3, 8)),
    "lens_patches": Family(
        "a fast pan, slow objects, large static patches on the lens that stay 6-14 frames, exposure bursts, drops",
        size=(128, 256), classes=_STREET12, extras=True, pan_scale=2.0, object_speed=0.5,
        kinds=("patch", "patch", "overexposed", "underexposed"), burst_rate=0.2, jump_rate=0.08),
    "fast_traffic": Family(
        "a static camera, many fast objects, moving bars, blur bursts, stalled and dropped frames",
        size=(128, 256), classes=tuple((name, (name,)) for name in CLASS_NAMES), camera="static", pan_scale=0.0,
        object_speed=2.5, objects=(4, 9), kinds=("bars", "blur", "blur", "repeat", "occluder"), jump_rate=0.1),
    "compressed": Family(
        "a pan, passing vehicles and blobs, compression blocks, noise bursts and stalls",
        size=(96, 192), classes=_STREET12, extras=True,
        kinds=("blocks", "blocks", "blocks", "vehicle", "occluder", "noise", "repeat")),
    "zoom_vehicles": Family(
        "the camera drives forward (zoom), vehicles pass close to it, compression blocks, blur, many dropped frames",
        size=(128, 256), classes=_STREET9, extras=True, camera="zoom", pan_scale=0.3, zoom=0.8,
        kinds=("vehicle", "vehicle", "vehicle", "blocks", "blur"), jump_rate=0.12),
    "night": Family(
        "a slow pan at night: under-exposure, heavy noise, drifting blobs and stalls, frequent bursts",
        size=(96, 192), classes=_COARSE4, extras=True, pan_scale=0.5,
        kinds=("underexposed", "underexposed", "noise", "noise", "occluder", "repeat"), burst_rate=0.4),
}
CAMERAS = ("pan", "static", "zoom")
BURST_KINDS = ("occluder", "bars", "patch", "vehicle", "shadow", "overexposed", "underexposed", "blur", "noise", "blocks",
               "repeat")


def get_family(family):
    """A Family from a name of `FAMILIES` (or a Family itself); ValueError naming the choices otherwise."""
    if isinstance(family, Family):
        return family
    if family not in FAMILIES:
        raise ValueError(f"unknown synthetic family {family!r}; available: {', '.join(FAMILIES)}.")
    return FAMILIES[family]


def palette(family="default"):
    """[num_classes, 3] uint8 colours for drawing the labels of a family."""
    return get_family(family).palette()


MIN_SIDE = MIN_FRAME_SIDE  # the smallest frame height and width the scenes are drawn at


class SyntheticVideo:
    """Deterministic synthetic video sequences with per-frame labels.

    Args:
        num_sequences: how many sequences the set has.
        frames_per_sequence: frames in each sequence.
        height, width: frame size; None: the family's own.
        seed: the set's seed; sequence i depends only on (seed, i).
        family: a name of `FAMILIES` (or a `Family`); its classes are
            `class_names` / `num_classes` of this set.

    Example:
    >>> video = SyntheticVideo(num_sequences=2, frames_per_sequence=8, height=64, width=128)
    >>> frames, labels = video.sequence(0)
    >>> frames.shape, labels.shape
    ((8, 64, 128, 3), (8, 64, 128))
    """

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES

    def __init__(self, num_sequences, frames_per_sequence=30, height=None, width=None, seed=0, family="default"):
        self.family = get_family(family)
        self.family_name = family if isinstance(family, str) else "custom"
        height = self.family.size[0] if height is None else height
        width = self.family.size[1] if width is None else width
        for name, value, low in (("num_sequences", num_sequences, 1), ("frames_per_sequence", frames_per_sequence, 1),
                                 ("height", height, MIN_SIDE), ("width", width, MIN_SIDE)):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}.")
        self.num_sequences = int(num_sequences)
        self.frames_per_sequence = int(frames_per_sequence)
        self.height = int(height)
        self.width = int(width)
        self.seed = int(seed)
        self.num_classes = self.family.num_classes
        self.class_names = self.family.class_names
        self._label_map = None if self.family.classes == Family.classes else self.family.label_map()

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
        scene = _Scene(rng, h, w, 2 * n, self.family)
        bursts = _Bursts(np.random.default_rng([self.seed, int(index), 1]), n, h, w, self.family)
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
        if self._label_map is not None:
            labels = self._label_map[labels]
        if with_degradation:
            return frames, labels, degraded
        return frames, labels


class _Scene:
    """The static layout and the moving objects of one sequence."""

    def __init__(self, rng, h, w, frames, family):
        self.rng, self.h, self.w, self.family = rng, h, w, family
        self.horizon = int(h * rng.uniform(0.35, 0.5))
        self.pan = rng.uniform(-1.5, 1.5) * w / 128 * family.pan_scale  # pixels per frame of camera pan
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
        self.objects = [self._new_object() for _ in range(int(rng.integers(*family.objects)))]
        self.poles, self.terrain, self.zoom_phase = [], 0, 0.0
        if family.extras:  # drawn after everything the default family draws, which stays as it was
            self.shade.update({c: _BASE[c] + rng.normal(0, _SPREAD[c] / 2, 3) for c in range(7, 12)})
            x = int(rng.integers(0, w // 4))
            while x < span:  # poles along the street, some with a sign
                top = int(rng.uniform(0.1, 0.6) * self.horizon)
                self.poles.append((x, max(1, w // 90), top, bool(rng.random() < 0.5)))
                x += int(rng.integers(w // 5, w // 2))
            self.terrain = int(rng.integers(h // 24, h // 10) + 1)  # a grass strip between sidewalk and houses
        if family.camera == "zoom":
            self.zoom_phase = rng.uniform(0, 2 * np.pi)

    def _new_object(self):
        rng, h, w = self.rng, self.h, self.w
        cls = CAR if rng.random() < 0.6 else PERSON
        speed = self.family.object_speed
        y = rng.uniform(self.horizon + 0.1 * h, h * 0.95)  # bottom edge on the ground
        obj = dict(
            cls=cls, x=rng.uniform(0, w), y=y, vx=rng.uniform(-2.5, 2.5) * w / 128 * speed,
            vy=rng.uniform(-0.3, 0.6) * h / 128 * speed, growth=rng.uniform(0.99, 1.03),
            size=rng.uniform(0.1, 0.22) * h * (1.0 if cls == CAR else 0.8),
            colour=_BASE[cls] + rng.normal(0, _SPREAD[cls], 3),
        )
        if self.family.extras and rng.random() < 0.35:  # some cars are trucks, some people ride bicycles
            obj["cls"] = TRUCK if cls == CAR else BICYCLE
            obj["colour"] = _BASE[obj["cls"]] + rng.normal(0, _SPREAD[obj["cls"]], 3)
            obj["size"] *= 1.3 if cls == CAR else 1.1
        return obj

    def render(self, t):
        h, w = self.h, self.w
        offset = int(round(t * self.pan)) % max(1, self.span - w)
        cols = slice(offset, offset + w)
        label = np.full((h, w), SKY, np.uint8)
        rows = np.arange(h)[:, None]
        top = self.top[cols][None, :]
        label = np.where(rows >= top, self.top_class[cols][None, :], label)
        if self.terrain:
            label[self.horizon - self.terrain: self.horizon][label[self.horizon - self.terrain: self.horizon] != SKY] = TERRAIN
        label[self.horizon:] = SIDEWALK
        for x, width, top, sign in self.poles:  # poles stand on the sidewalk, in front of the houses
            x -= offset
            if -width < x < w:
                label[top: self.horizon + max(2, h // 32), max(0, x): x + width] = POLE
                if sign:
                    label[top: top + max(3, h // 24), max(0, x - 2 * width): max(0, x + 3 * width)] = SIGN
        # The road narrows towards the horizon (a trapezoid).
        depth = (np.arange(h) - self.horizon).clip(0) / max(1, h - self.horizon)
        half = (0.08 + 0.42 * depth) * w
        sway = 0.0 if self.family.camera == "static" else 0.15 * w * np.sin(0.05 * t)
        centre = w / 2 + sway
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
        if self.family.camera == "zoom":
            image, label = self._zoom(image, label, t)
        return image, label

    def _zoom(self, image, label, t):
        """The view of a camera driving forward (and back): magnified about the road's vanishing point."""
        h, w = self.h, self.w
        scale = 1 + self.family.zoom * (1 - np.cos(2 * np.pi * t / 60 + self.zoom_phase)) / 2
        ys = np.clip(np.round(self.horizon + (np.arange(h) - self.horizon) / scale), 0, h - 1).astype(np.int64)
        xs = np.clip(np.round(w / 2 + (np.arange(w) - w / 2) / scale), 0, w - 1).astype(np.int64)
        return image[ys][:, xs], label[ys][:, xs]

    def shade_of(self, label, cols):
        image = np.empty(label.shape + (3,), np.float32)
        for c in self.shade:
            image[label == c] = self.shade[c]
        # Texture scrolls with the background; its strength differs per class.
        strength = _TEXTURE[label]
        return image + (self.texture[:, cols] * strength)[..., None]

    def _draw(self, obj, image, label, t):
        h, w = label.shape
        s = obj["size"]
        x0, y1 = obj["x"], obj["y"]
        if obj["cls"] == CAR:
            bw, bh = 1.8 * s, 0.9 * s
        elif obj["cls"] == TRUCK:
            bw, bh = 2.2 * s, 1.3 * s
        elif obj["cls"] == BICYCLE:
            bw, bh = 1.0 * s, 0.8 * s
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
        elif obj["cls"] == TRUCK:  # a box with a lower cab in front
            mask = ~((yy < top + 0.35 * bh) & (xx > x0 + 0.2 * bw))
        elif obj["cls"] == BICYCLE:  # two wheels and a rider
            r = 0.25 * bh
            wheels = [((xx - c) ** 2 + (yy - (bottom - r)) ** 2 <= r * r) for c in (x0 - 0.3 * bw, x0 + 0.3 * bw)]
            mask = wheels[0] | wheels[1] | ((np.abs(xx - x0) < 0.12 * bw) & (yy < bottom - r))
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

    GLOBAL = ("overexposed", "underexposed", "blur", "noise", "blocks")
    LOCAL = ("occluder", "shadow", "bars", "vehicle")

    def __init__(self, rng, frames, h, w, family):
        self.h, self.w = h, w
        self.events = {}  # frame -> list of (kind, params)
        self.jumps = np.zeros(frames, np.int64)
        self.repeats = np.zeros(frames, bool)
        t = 4
        while t < frames:
            if rng.random() < family.burst_rate:
                kind = str(rng.choice(list(family.kinds)))
                if kind == "patch":
                    length = int(rng.integers(*family.patch_length))
                elif kind in self.LOCAL:
                    length = int(rng.integers(*family.local_length))
                else:
                    length = int(rng.integers(*family.global_length))
                params = self._params(kind, rng, length)
                for k in range(t, min(frames, t + length)):
                    if kind == "repeat":
                        self.repeats[k] = True
                    else:
                        self.events.setdefault(k, []).append((kind, params, k - t))
                t += length + int(rng.integers(1, 4))  # a clean frame or more between bursts
            else:
                if rng.random() < family.jump_rate:
                    self.jumps[t] = int(rng.integers(1, 3))  # dropped frames
                t += 1

    def _params(self, kind, rng, length):
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
        if kind == "bars":  # thin bars sweeping across the view (a fence, wipers)
            count = int(rng.integers(3, 7))
            return dict(x=rng.uniform(0, w, count), width=int(rng.integers(max(2, w // 48), max(3, w // 20))),
                        speed=rng.choice([-1, 1]) * rng.uniform(w / 24, w / 8), slope=rng.uniform(-0.4, 0.4),
                        colour=rng.uniform(20, 90, 3))
        if kind == "patch":  # dirt on the lens: large, still, for many frames
            oh, ow = int(rng.integers(int(h / 2.5), int(h / 1.4))), int(rng.integers(w // 4, w // 2))
            return dict(y=int(rng.integers(0, h - oh)), x=int(rng.integers(0, w - ow)), oh=oh, ow=ow,
                        colour=rng.uniform(40, 160, 3), texture=rng.normal(0, 15, (oh, ow, 1)))
        if kind == "vehicle":  # a vehicle crossing close to the camera, across the view within the burst
            vw, top = int(rng.uniform(0.35, 0.7) * w), int(rng.uniform(0.1, 0.45) * h)
            return dict(width=vw, top=top, direction=int(rng.choice([-1, 1])), length=length,
                        colour=rng.uniform(20, 120, 3), texture=rng.normal(0, 12, (h - top, vw, 1)))
        if kind == "blocks":  # a starved video encoder: flat blocks, few colours
            return dict(block=int(rng.choice([max(4, w // 32), max(4, w // 16)])), step=rng.uniform(24, 56))
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
            elif kind == "bars":
                xs = np.arange(w)[None, :] - p["slope"] * (np.arange(h)[:, None] - h / 2)
                bars = np.zeros((h, w), bool)
                for x in p["x"]:
                    bars |= (xs - (x + age * p["speed"])) % w < p["width"]
                image[bars] = p["colour"]
                mask |= bars
            elif kind == "patch":
                y, x, oh, ow = p["y"], p["x"], p["oh"], p["ow"]
                image[y: y + oh, x: x + ow] = p["colour"] + p["texture"]
                mask[y: y + oh, x: x + ow] = True
            elif kind == "vehicle":
                vw, top = p["width"], p["top"]
                travel = (w + vw) * (age + 0.5) / p["length"]
                left = int(round(travel - vw if p["direction"] > 0 else w - travel))
                a, b = max(0, left), min(w, left + vw)
                if a < b:
                    image[top:, a:b] = p["colour"] + p["texture"][:, a - left: b - left]
                    mask[top:, a:b] = True
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
                elif kind == "blocks":
                    b = p["block"]
                    hb, wb = -(-h // b), -(-w // b)
                    padded = np.pad(image, ((0, hb * b - h), (0, wb * b - w), (0, 0)), mode="edge")
                    means = padded.reshape(hb, b, wb, b, 3).mean(axis=(1, 3))
                    means = np.round(means / p["step"]) * p["step"]
                    image = np.repeat(np.repeat(means, b, 0), b, 1)[:h, :w]
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


def write_video_command(args):
    """The command `python -m stt_keras_cli.synthetic_video` (parsed there): writes the video and says where."""
    from stt_keras.utils.errors import UserError

    h, w = args.size
    try:
        write_video(args.out, args.frames, h, w, args.seed)
    except OSError as error:
        raise UserError(f"cannot write --out {args.out}: {error}") from None
    print(f"wrote {args.frames} frames of {h}x{w} synthetic video to {args.out}")


if __name__ == "__main__":  # python -m stt_keras.data.synthetic: the same command
    from stt_keras_cli.synthetic_video import main

    main()
