// The colour overlay (labels blended over the frame), the legend and the frames/s counter.

export class Overlay {
  /** canvas: the visible canvas; height x width: the model size; palette: [[r, g, b], ...]. */
  constructor(canvas, height, width, palette, alpha = 0.5) {
    this.canvas = canvas;
    this.context = canvas.getContext('2d');
    this.alpha = alpha;
    this.labelCanvas = new OffscreenCanvas(width, height);
    this.labelContext = this.labelCanvas.getContext('2d');
    this.labelImage = this.labelContext.createImageData(width, height);
    // RGBA per class as one 32-bit word (little endian: r | g << 8 | b << 16 | a << 24); unknown labels black.
    this.colours = new Uint32Array(256).fill(0xff000000);
    palette.forEach(([r, g, b], i) => { this.colours[i] = (0xff000000 | (b << 16) | (g << 8) | r) >>> 0; });
  }

  /** Draws `image` (frame size h x w) and over it the labels of its letterboxed box: the labels of the
   *  box only, so the letterbox bars never get a colour. `source` (optional): the part of `image` to
   *  show, for an image that is itself letterboxed (raw test frames): then only that box is drawn. */
  draw(image, h, w, labels, box, source = null) {
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
    const pixels = new Uint32Array(this.labelImage.data.buffer);
    for (let i = 0; i < labels.length; i++) pixels[i] = this.colours[labels[i] & 255];
    this.labelContext.putImageData(this.labelImage, 0, 0);
    const c = this.context;
    c.globalAlpha = 1;
    if (source) c.drawImage(image, source.left, source.top, source.width, source.height, 0, 0, w, h);
    else c.drawImage(image, 0, 0, w, h);
    c.globalAlpha = this.alpha;
    c.imageSmoothingEnabled = false;  // nearest neighbour, like edge_demo's unletterbox
    c.drawImage(this.labelCanvas, box.left, box.top, box.width, box.height, 0, 0, w, h);
    c.globalAlpha = 1;
  }
}

export function drawLegend(list, classes, palette) {
  list.replaceChildren(...classes.map((name, i) => {
    const item = document.createElement('li');
    const swatch = document.createElement('i');
    swatch.style.background = `rgb(${palette[i].join(',')})`;
    item.append(swatch, document.createTextNode(name));
    return item;
  }));
}

/** Frames per second over the last `window` frames. */
export class FpsMeter {
  constructor(window = 30) {
    this.times = [];
    this.window = window;
  }

  tick(now = performance.now()) {
    this.times.push(now);
    if (this.times.length > this.window) this.times.shift();
    const n = this.times.length - 1;
    return n > 0 ? (1000 * n) / (this.times[n] - this.times[0]) : 0;
  }
}
