"""Letterboxing to the model size and drawing the label overlay, legend and fps counter."""

import cv2
import numpy as np


def letterbox(frame, height, width):
    """Resize keeping the aspect ratio and pad with black to (height, width).

    Returns (image, (top, left, content_height, content_width)).
    """
    h, w = frame.shape[:2]
    scale = min(height / h, width / w)
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = cv2.resize(frame, (cw, ch), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top, left = (height - ch) // 2, (width - cw) // 2
    out = np.zeros((height, width, 3), frame.dtype)
    out[top:top + ch, left:left + cw] = resized
    return out, (top, left, ch, cw)


def unletterbox(labels, box, height, width):
    """Labels of the letterboxed image -> labels of the original frame (nearest neighbour)."""
    top, left, ch, cw = box
    crop = labels[top:top + ch, left:left + cw].astype(np.uint8 if labels.max(initial=0) < 256 else np.int32)
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_NEAREST).astype(np.int32)


def colorize(labels, palette_rgb):
    """Labels [H, W] -> BGR colour image from an RGB palette (unknown labels are black)."""
    palette = np.zeros((256, 3), np.uint8)
    colours = np.asarray(palette_rgb, np.uint8)[:, ::-1]  # RGB -> BGR
    palette[: len(colours)] = colours
    return palette[np.clip(labels, 0, 255)]


def blend(frame_bgr, colour_bgr, alpha):
    """alpha * colour + (1 - alpha) * frame."""
    return cv2.addWeighted(colour_bgr, float(alpha), frame_bgr, 1.0 - float(alpha), 0.0)


LEGEND_BOX = 14  # pixels per legend row at full scale (frames 640 pixels wide and more)
FONT = cv2.FONT_HERSHEY_SIMPLEX
MAX_LEGEND_WIDTH = 0.25   # the legend covers at most this share of the frame's width ...
MAX_LEGEND_HEIGHT = 0.5   # ... and of its height; below the smallest scale only the fps text remains


def _layout(classes, height, width, fps=True):
    """(scale, rows drawn) of the top-left legend for a frame of height x width: scaled with the frame
    (1.0 at 640 pixels wide, at most 2.0), shrunk until it fits MAX_LEGEND_WIDTH x MAX_LEGEND_HEIGHT;
    rows 0 (fps text only) when even the smallest readable scale does not fit."""
    scale = min(2.0, max(0.3, width / 640))
    names = [str(n) for n in classes]
    while True:
        h, w = _legend_extent(names, scale, fps)
        if w <= MAX_LEGEND_WIDTH * width and h <= MAX_LEGEND_HEIGHT * height:
            return scale, len(names)
        if scale <= 0.3:
            return scale, 0
        scale = max(0.3, scale * 0.85)


def _legend_extent(names, scale, fps):
    box, gap, margin = max(3, round(LEGEND_BOX * scale)), max(1, round(4 * scale)), max(2, round(6 * scale))
    text = max((cv2.getTextSize(n, FONT, 0.4 * scale, 1)[0][0] for n in names), default=0)
    fps_w = cv2.getTextSize("000.0 fps", FONT, 0.45 * scale, 1)[0][0] if fps else 0
    width = margin + max(box + margin + text, fps_w) + margin
    height = margin + (len(names) + (1 if fps else 0)) * (box + gap) + margin
    return height, width


def legend_size(classes, height, width, fps=True):
    """(height, width) of the top-left region the legend and the fps text cover on a height x width frame."""
    scale, rows = _layout(classes, height, width, fps)
    return _legend_extent([str(n) for n in classes][:rows], scale, fps)


def draw_legend(image, classes, palette_rgb, fps=None):
    """Class colour boxes with names, and the fps counter, in the top-left corner (in place), scaled
    to the frame (see _layout): on a small frame the legend stays small, or is left out."""
    scale, rows = _layout(classes, image.shape[0], image.shape[1], fps is not None)
    box, gap, margin = max(3, round(LEGEND_BOX * scale)), max(1, round(4 * scale)), max(2, round(6 * scale))
    thickness = 1 if scale < 1.5 else 2
    y = margin
    if fps is not None:
        cv2.putText(image, f"{fps:5.1f} fps", (margin, y + box - max(1, round(2 * scale))), FONT, 0.45 * scale,
                    (255, 255, 255), thickness, cv2.LINE_AA)
        y += box + gap
    for name, colour in list(zip(classes, palette_rgb))[:rows]:
        bgr = tuple(int(c) for c in colour[::-1])
        cv2.rectangle(image, (margin, y), (margin + box, y + box), bgr, -1)
        cv2.putText(image, str(name), (2 * margin + box, y + box - max(1, round(3 * scale))), FONT, 0.4 * scale,
                    (255, 255, 255), thickness, cv2.LINE_AA)
        y += box + gap
    return image
