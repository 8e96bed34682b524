"""The synthetic video set and the clip pipeline built on it."""

import numpy as np
import pytest
import tensorflow as tf

from stt_keras.data import SyntheticVideo, augment, clip_indices, make_synthetic_dataset, palette
from stt_keras.data.pipeline import check_label_values
from stt_keras.data.synthetic import CAR, CLASS_NAMES


def test_sequences_are_deterministic_and_independent():
    a = SyntheticVideo(3, 6, 64, 128, seed=1)
    b = SyntheticVideo(3, 6, 64, 128, seed=1)
    f1, l1 = a.sequence(2)
    b.sequence(0)
    f2, l2 = b.sequence(2)
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(l1, l2)
    f3, _ = SyntheticVideo(3, 6, 64, 128, seed=2).sequence(2)
    assert np.abs(f3.astype(int) - f1).mean() > 5


def test_objects_move_and_frames_change():
    frames, labels = SyntheticVideo(1, 10, 96, 192, seed=3).sequence(0)
    assert frames.dtype == np.uint8 and labels.dtype == np.uint8
    assert frames.shape == (10, 96, 192, 3) and labels.shape == (10, 96, 192)
    cars = [np.argwhere(l == CAR).mean(axis=0) for l in labels if (l == CAR).any()]
    assert len(cars) >= 5
    assert np.abs(cars[-1] - cars[0]).max() > 2.0  # the cars' centre of mass moved
    assert all(np.abs(frames[i + 1].astype(int) - frames[i]).mean() > 1 for i in range(9))


def test_every_class_appears_and_labels_are_valid():
    video = SyntheticVideo(8, 4, 64, 128, seed=0)
    seen = set()
    for i in range(8):
        _, labels = video.sequence(i)
        check_label_values(labels, video.num_classes, "synthetic")
        seen |= set(np.unique(labels).tolist())
    assert seen == set(range(len(CLASS_NAMES)))
    assert palette().shape == (len(CLASS_NAMES), 3)


def test_single_frames_are_ambiguous_in_colour():
    # Road and car pixels overlap in colour: a per-pixel colour rule cannot separate them.
    frames, labels = SyntheticVideo(4, 2, 64, 128, seed=0).sequence(0)
    road = frames[labels == 0].astype(float).mean(axis=0)
    sidewalk = frames[labels == 1].astype(float).mean(axis=0)
    assert np.abs(road - sidewalk).max() < 40


@pytest.mark.parametrize("kwargs", [dict(num_sequences=0), dict(num_sequences=1, height=8), dict(num_sequences=1, width="a")])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        SyntheticVideo(**kwargs)


def test_clip_indices():
    rows = clip_indices(30, [19, 2, 29], num_key_frames=3, frame_stride=2)
    np.testing.assert_array_equal(rows, [[13, 15, 17, 19], [23, 25, 27, 29]])
    assert clip_indices(5, [4], 7).shape == (0, 8)


def test_label_values_outside_the_classes_are_named():
    with pytest.raises(ValueError, match=r"\[7, 9\]"):
        check_label_values(np.array([[0, 7], [9, 255]], np.uint8), 7, "label.png")


def test_eval_clips_end_at_the_labelled_frame():
    video = SyntheticVideo(2, 9, 32, 64, seed=4)
    ds = make_synthetic_dataset(video, num_key_frames=3, batch_size=1, training=False, frame_stride=2)
    clips = list(ds)
    assert len(clips) == 2 * 3  # ends 6, 7, 8 in each sequence
    frames, labels = video.sequence(1)
    clip, label = clips[3]
    np.testing.assert_array_equal(clip[0].numpy(), frames[[0, 2, 4, 6]])
    np.testing.assert_array_equal(label[0].numpy(), labels[6])


def test_augmentation_is_identical_across_frames_and_label():
    # Every frame shows the label as grey levels, so alignment can be read back.
    label = np.zeros((40, 60), np.int32)
    label[:, 20:40] = 1
    label[25:, :] = 2
    frame = (label * 80 + 20).astype(np.uint8)[..., None].repeat(3, axis=-1)
    clip = np.stack([frame] * 4)
    for i in range(5):
        out, lab = augment(tf.constant(clip), tf.constant(label), tf.constant([7, i], tf.int64), (32, 48), jitter=0.0)
        out, lab = out.numpy(), lab.numpy()
        for f in range(1, 4):
            np.testing.assert_array_equal(out[f], out[0])
        valid = lab != 255
        decoded = np.round((out[0, ..., 0].astype(float) - 20) / 80)
        agree = (decoded[valid] == lab[valid]).mean()
        assert agree > 0.95, agree


def test_small_scales_pad_the_label_with_ignore():
    label = np.ones((20, 20), np.int32)
    clip = np.full((2, 20, 20, 3), 100, np.uint8)
    _, lab = augment(tf.constant(clip), tf.constant(label), tf.constant([0, 0], tf.int64), (32, 32), scale_range=(0.5, 0.5))
    lab = lab.numpy()
    assert (lab == 255).sum() == 32 * 32 - 10 * 10 and (lab == 1).sum() == 100


def test_training_pipeline_is_deterministic_under_its_seed():
    video = SyntheticVideo(3, 8, 32, 64, seed=0)

    def first(seed):
        c, l = next(iter(make_synthetic_dataset(video, 2, 4, crop_size=(24, 48), seed=seed)))
        return c.numpy(), l.numpy()

    a, b, c = first(5), first(5), first(6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (4, 3, 24, 48, 3) and a[1].shape == (4, 24, 48)


def test_degradation_bursts_persist_and_are_recorded():
    video = SyntheticVideo(8, 30, 64, 128, seed=0)
    degraded_frames, occluder_runs, repeats = [], 0, 0
    for i in range(8):
        frames, labels, degraded = video.sequence(i, with_degradation=True)
        f2, l2 = video.sequence(i)
        np.testing.assert_array_equal(frames, f2)  # the masks change nothing
        np.testing.assert_array_equal(labels, l2)
        assert degraded.dtype == bool and degraded.shape == labels.shape
        assert not degraded[:4].any()  # every sequence starts with clean history
        any_frame = degraded.any(axis=(1, 2))
        degraded_frames.append(any_frame)
        partial = (degraded.mean(axis=(1, 2)) > 0) & (degraded.mean(axis=(1, 2)) < 1)
        occluder_runs += int((partial[1:] & partial[:-1]).sum())  # local bursts last > 1 frame
        for t in range(1, 30):
            if np.array_equal(frames[t], frames[t - 1]):  # a stalled camera: the label moved on
                repeats += 1
                np.testing.assert_array_equal(degraded[t], labels[t] != labels[t - 1])
    share = np.concatenate(degraded_frames).mean()
    assert 0.2 <= share <= 0.5, share
    assert occluder_runs >= 3
    assert repeats >= 1


def test_degraded_pixels_differ_from_the_clean_render():
    # A burst changes the image where it says it does: compare against the same
    # frame's pixels far more than the light per-frame noise does.
    video = SyntheticVideo(6, 30, 64, 128, seed=4)
    gaps = []
    for i in range(6):
        frames, labels, degraded = video.sequence(i, with_degradation=True)
        for t in range(1, 30):
            if degraded[t].any() and not degraded[t - 1].any() and not np.array_equal(frames[t], frames[t - 1]):
                diff = np.abs(frames[t].astype(int) - frames[t - 1]).mean(-1)
                gaps.append(diff[degraded[t]].mean() - diff[~degraded[t]].mean() if (~degraded[t]).any()
                            else diff.mean())
    assert len(gaps) >= 5 and np.median(gaps) > 10, gaps


def test_target_damage_hits_only_the_labelled_frame_at_its_rate():
    """--target-damage: the last frame alone changes, in about the given share of clips; history and labels do not."""
    video = SyntheticVideo(4, 30, 64, 128, seed=0)
    plain = make_synthetic_dataset(video, 3, 64, (48, 48), True, seed=3)
    damaged = make_synthetic_dataset(video, 3, 64, (48, 48), True, seed=3, target_damage=0.5)
    (ca, la), (cb, lb) = next(iter(plain)), next(iter(damaged))
    np.testing.assert_array_equal(la, lb)  # labels unchanged
    np.testing.assert_array_equal(ca[:, :-1], cb[:, :-1])  # the history is the undamaged pipeline's, draw for draw
    change = np.abs(ca[:, -1].numpy().astype(int) - cb[:, -1].numpy().astype(int)).mean(axis=(1, 2, 3))
    hit = change > 0
    assert 16 <= hit.sum() <= 48, hit.sum()  # Binomial(64, 0.5): 32 ± 4 sigma
    assert np.median(change[hit]) > 10, change[hit]  # a damage, not a rounding difference
    never = make_synthetic_dataset(video, 3, 64, (48, 48), True, seed=3, target_damage=0.0)
    np.testing.assert_array_equal(next(iter(never))[0], ca)
    always = next(iter(make_synthetic_dataset(video, 3, 64, (48, 48), True, seed=3, target_damage=1.0)))[0]
    changed = (np.abs(ca[:, -1].numpy().astype(int) - always[:, -1].numpy().astype(int)).mean(axis=(1, 2, 3)) > 0)
    assert changed.sum() >= 60, changed.sum()  # every clip is hit (a blur of a flat crop may change nothing)


def test_each_damage_kind_changes_the_frame():
    from stt_keras.data.pipeline import DAMAGES, damage_frame

    rng = np.random.default_rng(0)
    frame = tf.constant(np.kron(rng.uniform(0, 255, (8, 8, 3)), np.ones((6, 6, 1))).astype("float32"))  # blocky
    kinds = {}
    for k in range(64):
        out = damage_frame(frame, tf.constant([k, 1], tf.int64)).numpy()
        assert out.shape == frame.shape and out.min() >= 0 and out.max() <= 255
        kinds.setdefault(int(tf.random.stateless_uniform(
            [], tf.random.experimental.stateless_split(tf.constant([k, 1], tf.int64), 8)[0], 0, len(DAMAGES),
            dtype=tf.int32)), []).append(np.abs(out - frame.numpy()).mean())
    assert sorted(kinds) == list(range(len(DAMAGES)))  # every kind is drawn
    for kind, changes in kinds.items():
        assert min(changes) > 3, (DAMAGES[kind], min(changes))
