"""The synthetic scene families: the default stays the built-in video, every family is what it declares."""

import hashlib

import numpy as np
import pytest

from stt_keras.data import FAMILIES, SyntheticVideo, make_synthetic_dataset
from stt_keras.data.pipeline import check_label_values
from stt_keras.data.synthetic import _Bursts, _Scene, get_family, palette


def _digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# SHA-256 of (frames, labels, degraded) of the built-in video before it became a family: the default
# family must reproduce it bit for bit (every result measured on it stays reproducible).
PINNED = [
    ((3, 12, 64, 128, 0, 2), "3185ed1acc7f60c7870c5cb82a3c219b916b1ef810058cfa265a5fb1728a050c"),
    ((2, 30, 128, 256, 1000, 1), "f24e52c67f56451ff01cbc175cc50968e06310bdfe9dc3c79067fdfeefb42017"),
]


@pytest.mark.parametrize("args, digest", PINNED)
def test_default_family_is_the_built_in_video(args, digest):
    n, frames, h, w, seed, index = args
    for video in (SyntheticVideo(n, frames, h, w, seed=seed), SyntheticVideo(n, frames, h, w, seed=seed, family="default")):
        assert _digest(*video.sequence(index, with_degradation=True)) == digest


def test_at_least_six_families_with_4_to_12_classes_and_several_sizes():
    assert len(FAMILIES) >= 6
    counts = {f.num_classes for f in FAMILIES.values()}
    assert min(counts) >= 4 and max(counts) <= 12 and {4, 12} <= counts
    assert len({f.size for f in FAMILIES.values()}) >= 2
    assert {f.camera for f in FAMILIES.values()} == {"pan", "static", "zoom"}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_is_deterministic_and_has_its_classes_and_size(name):
    family = FAMILIES[name]
    video = SyntheticVideo(2, 12, seed=5, family=name)
    assert (video.height, video.width) == family.size and video.num_classes == family.num_classes
    frames, labels, degraded = video.sequence(1, with_degradation=True)
    again = SyntheticVideo(2, 12, seed=5, family=name).sequence(1, with_degradation=True)
    assert _digest(frames, labels, degraded) == _digest(*again)
    assert frames.shape == (12, *family.size, 3) and labels.shape == (12, *family.size)
    check_label_values(labels, family.num_classes, name)
    assert palette(name).shape == (family.num_classes, 3)
    other = SyntheticVideo(2, 12, seed=6, family=name).sequence(1)[0]
    assert np.abs(other.astype(int) - frames).mean() > 3


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_class_of_a_family_appears(name):
    video = SyntheticVideo(6, 10, 64, 128, seed=0, family=name)
    seen = set()
    for i in range(6):
        seen |= set(np.unique(video.sequence(i)[1]).tolist())
    assert seen == set(range(video.num_classes))


def _scene(name, h=64, w=128, seed=0):
    return _Scene(np.random.default_rng([seed, 0]), h, w, 60, get_family(name))


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if f.camera == "static"])
def test_a_static_camera_does_not_pan(name):
    scene = _scene(name)
    assert scene.pan == 0
    # Without objects the whole view is the same in every frame.
    scene.objects = []
    first = scene.render(0)[1]
    assert all(np.array_equal(first, scene.render(t)[1]) for t in (5, 17, 40))


def test_a_panning_camera_scrolls_the_skyline():
    scene = _scene("default", seed=3)
    scene.objects = []
    assert abs(scene.pan) > 0.1
    assert not np.array_equal(scene.render(0)[1][: scene.horizon], scene.render(20)[1][: scene.horizon])


def test_a_zoom_camera_magnifies_about_the_horizon():
    scene = _scene("zoom_vehicles", seed=1)
    scene.objects = []
    scene.pan = 0.0
    scene.zoom_phase = 0.0  # scale 1 at t = 0, 1 + zoom at t = 30
    near, far = scene.render(0)[1], scene.render(30)[1]
    rows_sky_near = (near == 4).all(axis=1).sum()  # class 4 is sky in the family's classes
    rows_sky_far = (far == 4).all(axis=1).sum()
    assert rows_sky_far < rows_sky_near  # the magnified view shows less of the sky above the skyline


@pytest.mark.parametrize("name", list(FAMILIES))
def test_bursts_are_of_the_declared_kinds_and_rate(name):
    family = FAMILIES[name]
    kinds, burst_frames, total, jumps = set(), 0, 0, 0
    for seed in range(40):
        bursts = _Bursts(np.random.default_rng([seed, 0, 1]), 30, 64, 128, family)
        kinds |= {kind for events in bursts.events.values() for kind, _, _ in events}
        kinds |= {"repeat"} if bursts.repeats.any() else set()
        burst_frames += len(bursts.events) + int(bursts.repeats.sum())
        total += 26
        jumps += int((bursts.jumps > 0).sum())
    assert kinds == set(family.kinds)
    # The share of frames under a burst grows with the burst rate (each burst lasts >= 1 frame).
    assert burst_frames / total > family.burst_rate * 0.5
    assert (jumps > 0) == (family.jump_rate > 0)


def test_the_burst_kinds_degrade_what_they_say():
    h, w = 64, 128
    image = np.full((h, w, 3), 120.0)
    for kind, whole_frame in (("bars", False), ("patch", False), ("vehicle", False), ("blocks", True)):
        family = get_family("default").__class__("test", kinds=(kind,), burst_rate=1.0, jump_rate=0.0)
        bursts = _Bursts(np.random.default_rng(0), 12, h, w, family)
        t = min(bursts.events)
        out, mask = bursts.apply(t, image.copy(), np.random.default_rng(1))
        assert mask.all() == whole_frame and mask.any()
        if not whole_frame:
            assert np.abs(out[mask].astype(float) - 120).mean() > 3 * np.abs(out[~mask].astype(float) - 120).mean()


def test_patches_stay_still_and_vehicles_cross():
    family = get_family("default").__class__("test", kinds=("patch",), burst_rate=1.0, jump_rate=0.0)
    bursts = _Bursts(np.random.default_rng(0), 30, 64, 128, family)
    frames = sorted(k for k, events in bursts.events.items())
    masks = [bursts.apply(t, np.zeros((64, 128, 3)), np.random.default_rng(0))[1] for t in frames[:3]]
    assert np.array_equal(masks[0], masks[1]) and np.array_equal(masks[1], masks[2])
    family = get_family("default").__class__("test", kinds=("vehicle",), burst_rate=1.0, jump_rate=0.0,
                                             local_length=(4, 5))
    bursts = _Bursts(np.random.default_rng(0), 12, 64, 128, family)
    t = min(bursts.events)
    centres = [np.argwhere(bursts.apply(k, np.zeros((64, 128, 3)), np.random.default_rng(0))[1])[:, 1].mean()
               for k in range(t, t + 4)]
    assert np.all(np.diff(centres) > 0) or np.all(np.diff(centres) < 0)


def test_object_speed_scales_motion():
    slow, fast = _scene("lens_patches", seed=2), _scene("fast_traffic", seed=2)
    mean_speed = lambda s: np.mean([abs(o["vx"]) for o in s.objects])  # noqa: E731
    assert mean_speed(fast) > 2 * mean_speed(slow)


def test_unknown_family_is_named():
    with pytest.raises(ValueError, match="unknown synthetic family 'nope'.*default"):
        SyntheticVideo(1, family="nope")


def test_pipeline_takes_a_family():
    video = SyntheticVideo(2, 10, 64, 128, seed=0, family="night")
    clip, label = next(iter(make_synthetic_dataset(video, 3, 2, (32, 32), True, 0)))
    assert clip.shape == (2, 4, 32, 32, 3) and int(label.numpy().max()) < 4
