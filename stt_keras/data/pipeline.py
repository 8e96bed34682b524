"""tf.data clip pipelines: (clip [T+1, H, W, 3] uint8, label [H, W] int32 of the LAST frame).

A sample is a clip of T+1 frames taken every `frame_stride` frames and ending at
a labelled frame. Training augmentation is geometric and identical for every
frame of a clip and its label (random scale, random crop with 255-padding of the
label where the scaled image is smaller than the crop, horizontal flip), plus a
photometric jitter drawn once per clip (brightness and contrast: the frames of a
real clip come from one camera). All randomness is stateless and keyed by
(seed, sample index), so a pipeline is deterministic under its seed whatever the
parallelism.

Optional `target_damage` (a training recipe, not a property of any data): with
that probability per clip, the labelled last frame alone is damaged, its label
unchanged, so that only the earlier frames can tell the model what is there. One
of four damages, drawn per clip: a random rectangle erased to noise, heavy
Gaussian noise, under/over-exposure, or a strong blur (see `damage_frame`).
"""

import numpy as np
import tensorflow as tf

from stt_keras.metrics import IGNORE_LABEL


def clip_indices(num_frames, labelled, num_key_frames, frame_stride=1, pad_start=False):
    """Frame indices [T+1] of the clip ending at each labelled frame.

    Args:
        num_frames: frames in the sequence.
        labelled: indices of the labelled frames.
        num_key_frames: T.
        frame_stride: step between the clip's frames.
        pad_start: False: only labelled frames with T * stride frames before them end
            a clip. True: every labelled frame does, and history before the sequence
            is its first frame (index 0), the streaming first-frame policy.

    Returns:
        int array [n, T+1], oldest frame first, the labelled frame last.
    """
    span = num_key_frames * frame_stride
    rows = [np.maximum(np.arange(end - span, end + 1, frame_stride), 0) for end in labelled
            if (pad_start or end - span >= 0) and 0 <= end < num_frames]
    return np.array(rows, np.int64).reshape(-1, num_key_frames + 1)


def check_label_values(label, num_classes, where):
    """Raises if a label holds values outside [0, num_classes) other than 255."""
    values = np.unique(label)
    bad = values[(values >= num_classes) & (values != IGNORE_LABEL)]
    if bad.size:
        raise ValueError(
            f"{where}: label values {bad.tolist()} are outside the {num_classes} classes "
            f"(0..{num_classes - 1}, and {IGNORE_LABEL} for ignore)."
        )


def synthetic_arrays(video, num_key_frames, frame_stride=1, labelled_every=1):
    """All clips of a SyntheticVideo as in-memory arrays.

    Returns (frames uint8 [S, N, H, W, 3], labels uint8 [S, N, H, W], index int64 [n, 2]
    of (sequence, end frame)) where every `labelled_every`-th frame with enough history
    ends a clip.
    """
    frames, labels = zip(*(video.sequence(i) for i in range(len(video))))
    frames, labels = np.stack(frames), np.stack(labels)
    ends = clip_indices(frames.shape[1], range(0, frames.shape[1], labelled_every), num_key_frames, frame_stride)[:, -1]
    index = np.array([(s, e) for s in range(frames.shape[0]) for e in ends], np.int64)
    return frames, labels, index


DAMAGES = ("erase", "noise", "exposure", "blur")


def damage_frame(frame, seed):
    """One random damage of a float32 frame [H, W, 3] in 0..255 (stateless under `seed`); see DAMAGES.

    erase: a rectangle of 30-70% of each side becomes uniform noise; noise: Gaussian,
    sigma 40-80; exposure: x 0.1-0.35 (dark) or pushed 65-90% towards white; blur:
    a 9 x 9 box blur. Each damage keeps little of what the frame showed.
    """
    seeds = tf.random.experimental.stateless_split(seed, 8)
    h, w = tf.shape(frame)[0], tf.shape(frame)[1]
    kind = tf.random.stateless_uniform([], seeds[0], 0, len(DAMAGES), dtype=tf.int32)
    # erase
    fh = tf.random.stateless_uniform([2], seeds[1], 0.3, 0.7)
    eh = tf.maximum(1, tf.cast(fh[0] * tf.cast(h, tf.float32), tf.int32))
    ew = tf.maximum(1, tf.cast(fh[1] * tf.cast(w, tf.float32), tf.int32))
    y0 = tf.random.stateless_uniform([], seeds[2], 0, h - eh + 1, dtype=tf.int32)
    x0 = tf.random.stateless_uniform([], seeds[3], 0, w - ew + 1, dtype=tf.int32)
    rows, cols = tf.range(h)[:, None, None], tf.range(w)[None, :, None]
    inside = (rows >= y0) & (rows < y0 + eh) & (cols >= x0) & (cols < x0 + ew)
    erased = tf.where(inside, tf.random.stateless_uniform(tf.shape(frame), seeds[4], 0.0, 255.0), frame)
    # noise
    sigma = tf.random.stateless_uniform([], seeds[5], 40.0, 80.0)
    noisy = frame + sigma * tf.random.stateless_normal(tf.shape(frame), seeds[6])
    # exposure: dark or washed out (one uniform draw picks the side and the amount)
    u = tf.random.stateless_uniform([], seeds[7], 0.0, 1.0)
    exposed = tf.where(u < 0.5, frame * (0.1 + 0.5 * u), frame + (255.0 - frame) * (0.65 + 0.5 * (u - 0.5)))
    # blur
    blurred = tf.nn.avg_pool2d(frame[None], 9, 1, "SAME")[0]
    damaged = tf.gather(tf.stack([erased, noisy, exposed, blurred]), kind)
    return tf.clip_by_value(damaged, 0.0, 255.0)


def augment(clip, label, seed, crop_size, scale_range=(0.75, 1.5), jitter=0.2, target_damage=0.0):
    """Identical random scale / crop / flip on every frame and the label, one photometric jitter.

    Args:
        clip: uint8 [F, H, W, 3]. label: int32 [H, W]. seed: int32 [2] stateless seed.
        crop_size: (height, width) of the output.
        target_damage: probability that the last (labelled) frame alone is damaged
            (`damage_frame`), its label unchanged.
    """
    seeds = tf.random.experimental.stateless_split(seed, 6)
    h, w = tf.shape(clip)[1], tf.shape(clip)[2]
    ch, cw = crop_size
    scale = tf.random.stateless_uniform([], seeds[0], *scale_range)
    sh = tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32)
    sw = tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32)
    frames = tf.image.resize(tf.cast(clip, tf.float32), [sh, sw], method="bilinear")
    lab = tf.image.resize(label[..., None], [sh, sw], method="nearest")[..., 0]
    # Pad to at least the crop (frames with 0, labels with ignore), then crop.
    ph, pw = tf.maximum(ch - sh, 0), tf.maximum(cw - sw, 0)
    frames = tf.pad(frames, [[0, 0], [0, ph], [0, pw], [0, 0]])
    lab = tf.pad(lab, [[0, ph], [0, pw]], constant_values=IGNORE_LABEL)
    oy = tf.random.stateless_uniform([], seeds[1], 0, tf.shape(lab)[0] - ch + 1, dtype=tf.int32)
    ox = tf.random.stateless_uniform([], seeds[2], 0, tf.shape(lab)[1] - cw + 1, dtype=tf.int32)
    frames = frames[:, oy: oy + ch, ox: ox + cw]
    lab = lab[oy: oy + ch, ox: ox + cw]
    flip = tf.random.stateless_uniform([], seeds[3]) < 0.5
    frames = tf.where(flip, frames[:, :, ::-1], frames)
    lab = tf.where(flip, lab[:, ::-1], lab)
    brightness = tf.random.stateless_uniform([], seeds[4], -jitter, jitter) * 255.0
    contrast = tf.random.stateless_uniform([], seeds[5], 1.0 - jitter, 1.0 + jitter)
    mean = tf.reduce_mean(frames)
    frames = (frames - mean) * contrast + mean + brightness
    if target_damage > 0:  # drawn from a key of its own: the other draws stay what they were without it
        keys = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(seed, 7), 2)
        hit = tf.random.stateless_uniform([], keys[0]) < target_damage
        last = tf.where(hit, damage_frame(tf.clip_by_value(frames[-1], 0.0, 255.0), keys[1]), frames[-1])
        frames = tf.concat([frames[:-1], last[None]], axis=0)
    frames = tf.cast(tf.clip_by_value(tf.round(frames), 0, 255), tf.uint8)
    return tf.ensure_shape(frames, [None, ch, cw, 3]), tf.ensure_shape(lab, [ch, cw])


def make_synthetic_dataset(video, num_key_frames, batch_size, crop_size=None, training=True, seed=0,
                           frame_stride=1, labelled_every=1, repeat=None, skip=0, target_damage=0.0):
    """Batched (clip [B, T+1, H, W, 3] uint8, label [B, H, W] int32) from a SyntheticVideo.

    Args:
        video: a SyntheticVideo.
        num_key_frames: T.
        batch_size: clips per batch.
        crop_size: (h, w) crop for training; None keeps the frame size.
        training: shuffle and augment; otherwise a fixed order without augmentation.
        seed: seed of the shuffle and of every augmentation.
        frame_stride: step between the frames of a clip.
        labelled_every: only every n-th frame ends a clip (sparse annotation).
        repeat: repeat the data (default: when training).
        skip: samples to skip first (resuming an interrupted run).
        target_damage: training only: probability of damaging a clip's labelled frame (`augment`).
    """
    frames, labels, index = synthetic_arrays(video, num_key_frames, frame_stride, labelled_every)
    check_label_values(labels, video.num_classes, "synthetic video")
    frames, labels = tf.constant(frames), tf.constant(labels)
    offsets = tf.range(-num_key_frames * frame_stride, 1, frame_stride, dtype=tf.int64)
    size = crop_size or (video.height, video.width)

    def load(i, sample):
        seq, end = sample[0], sample[1]
        clip = tf.gather(frames[seq], end + offsets)
        label = tf.cast(labels[seq, end], tf.int32)
        if training:
            clip, label = augment(clip, label, tf.stack([tf.cast(seed, tf.int64), i]), size,
                                  target_damage=target_damage)
        return clip, label

    return sample_dataset(index, load, batch_size, training, seed, repeat, skip)


def sample_dataset(samples, load, batch_size, training, seed, repeat=None, skip=0):
    """The shared tail of every clip pipeline: (index, sample) -> shuffle, repeat, skip, load, batch.

    Enumerating before shuffling gives every sample a stable index, which keys its
    stateless augmentation; skipping happens before `load`, so resuming a run does
    not decode the samples it skips.
    """
    ds = tf.data.Dataset.from_tensor_slices(samples).enumerate()
    if training:
        ds = ds.shuffle(len(samples[0]) if isinstance(samples, tuple) else len(samples), seed=seed,
                        reshuffle_each_iteration=True)
    if repeat if repeat is not None else training:
        ds = ds.repeat()
    if skip:
        ds = ds.skip(skip)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)
