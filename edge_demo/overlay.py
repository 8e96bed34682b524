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


LEGEND_BOX = 14  # pixels per legend row; the legend and fps text live in the top-left corner


def legend_size(num_classes):
    """(height, width) of the top-left region the legend and the fps text cover."""
    return (num_classes + 1) * (LEGEND_BOX + 4) + 8, 170


def draw_legend(image, classes, palette_rgb, fps=None):
    """Class colour boxes with names, and the fps counter, in the top-left corner (in place)."""
    y = 6
    if fps is not None:
        cv2.putText(image, f"{fps:5.1f} fps", (6, y + LEGEND_BOX - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                    cv2.LINE_AA)
    y += LEGEND_BOX + 4
    for name, colour in zip(classes, palette_rgb):
        bgr = tuple(int(c) for c in colour[::-1])
        cv2.rectangle(image, (6, y), (6 + LEGEND_BOX, y + LEGEND_BOX), bgr, -1)
        cv2.putText(image, str(name), (26, y + LEGEND_BOX - 3), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                    cv2.LINE_AA)
        y += LEGEND_BOX + 4
    return image
