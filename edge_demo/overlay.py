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
MAX_LEGEND_WIDTH = 0.3    # the legend covers at most this share of the frame's width ...
MAX_LEGEND_HEIGHT = 0.8   # ... and of its height (a narrow column in the corner)
MIN_SCALE, MAX_SCALE = 0.5, 2.0  # 0.5: 7-pixel colour boxes and 5-pixel letters, still legible


class _Layout:
    """Where the legend of `classes` goes on a height x width frame (top-left corner).

    Scaled with the frame (1.0 at 640 pixels wide), shrunk to MIN_SCALE to fit MAX_LEGEND_WIDTH x
    MAX_LEGEND_HEIGHT; names that are still too wide are cut (ending in "."); when even the rows do
    not fit, only the fps counter is drawn. The first row is always the fps counter's.
    """

    def __init__(self, classes, height, width):
        names = [str(n) for n in classes]
        scale = min(MAX_SCALE, max(MIN_SCALE, width / 640))
        while True:
            self._set(scale)
            if self._fits(names, height, width) or scale <= MIN_SCALE:
                break
            scale = max(MIN_SCALE, scale * 0.85)
        room = int(MAX_LEGEND_WIDTH * width) - (3 * self.margin + self.box)
        self.names = [self._cut(n, room) for n in names]
        self.rows = len(names) if self._rows_height(len(names)) <= MAX_LEGEND_HEIGHT * height and room > 0 else 0

    def _set(self, scale):
        self.scale = scale
        self.box, self.gap, self.margin = max(3, round(LEGEND_BOX * scale)), max(1, round(4 * scale)), max(2, round(6 * scale))
        self.font, self.fps_font = 0.4 * scale, 0.45 * scale
        self.thickness = 1 if scale < 1.5 else 2
        self.crisp = scale < 1  # small letters: thresholded, every pixel of them fully white (no grey fringe)

    def _text_width(self, text):
        return cv2.getTextSize(text, FONT, self.font, self.thickness)[0][0]

    def _rows_height(self, rows):
        return self.margin + (rows + 1) * (self.box + self.gap) + self.margin

    def _fits(self, names, height, width):
        text = max((self._text_width(n) for n in names), default=0)
        return (3 * self.margin + self.box + text <= MAX_LEGEND_WIDTH * width
                and self._rows_height(len(names)) <= MAX_LEGEND_HEIGHT * height)

    def _cut(self, name, room):
        if self._text_width(name) <= room:
            return name
        while len(name) > 1 and self._text_width(name + ".") > room:
            name = name[:-1]
        return name + "."

    def boxes(self):
        """[(x0, y0, x1, y1)] of the colour box of each class drawn (inclusive corners)."""
        top = self.margin + self.box + self.gap
        return [(self.margin, top + i * (self.box + self.gap), self.margin + self.box, top + i * (self.box + self.gap) + self.box)
                for i in range(self.rows)]

    def size(self, fps=True):
        text = max([self._text_width(n) for n in self.names[:self.rows]], default=0)
        fps_w = cv2.getTextSize("000.0 fps", FONT, self.fps_font, self.thickness)[0][0] if fps else 0
        width = max(self.margin + self.box + self.margin + text, self.margin + fps_w) + self.margin
        return self._rows_height(self.rows), width


def legend_size(classes, height, width, fps=True):
    """(height, width) of the top-left region the legend and the fps text cover on a height x width frame."""
    return _Layout(classes, height, width).size(fps)


def legend_boxes(classes, height, width):
    """[(x0, y0, x1, y1)] of the legend's colour boxes on a height x width frame (one per class drawn)."""
    return _Layout(classes, height, width).boxes()


def _put_text(image, text, org, font, layout):
    if not layout.crisp:
        cv2.putText(image, text, org, FONT, font, (255, 255, 255), layout.thickness, cv2.LINE_AA)
        return
    x, y = org
    (w, h), base = cv2.getTextSize(text, FONT, font, layout.thickness)
    top, left = max(0, y - h - 2), max(0, x - 1)
    bottom, right = min(image.shape[0], y + base + 2), min(image.shape[1], x + w + 2)
    if bottom <= top or right <= left:
        return
    mask = np.zeros((bottom - top, right - left), np.uint8)
    cv2.putText(mask, text, (x - left, y - top), FONT, font, 255, layout.thickness, cv2.LINE_AA)
    image[top:bottom, left:right][mask >= 128] = 255


def draw_legend(image, classes, palette_rgb, fps=None):
    """Class colour boxes with names, and the fps counter, in the top-left corner (in place), scaled
    to the frame (see _Layout): on a small frame the legend stays small."""
    layout = _Layout(classes, image.shape[0], image.shape[1])
    if fps is not None:
        _put_text(image, f"{fps:5.1f} fps", (layout.margin, layout.margin + layout.box - max(1, round(2 * layout.scale))),
                  layout.fps_font, layout)
    for (x0, y0, x1, y1), name, colour in zip(layout.boxes(), layout.names, palette_rgb):
        cv2.rectangle(image, (x0, y0), (x1, y1), tuple(int(c) for c in colour[::-1]), -1)
        _put_text(image, name, (x1 + layout.margin, y1 - max(1, round(3 * layout.scale))), layout.font, layout)
    return image
