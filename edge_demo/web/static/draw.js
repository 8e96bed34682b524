// The colour overlay (labels blended over the frame), the legend and the frames/s counter.
// @ts-check

/** @typedef {{top: number, left: number, height: number, width: number}} Box */

const UNKNOWN = 0xff000000;  // opaque black: the colour of a class the palette does not have

export class Overlay {
  /**
   * @param {HTMLCanvasElement} canvas the visible canvas
   * @param {number} height the model's input height
   * @param {number} width the model's input width
   * @param {[number, number, number][]} palette RGB per class
   * @param {number} alpha the labels' opacity over the frame
   */
  constructor(canvas, height, width, palette, alpha = 0.5) {
    this.canvas = canvas;
    this.context = /** @type {CanvasRenderingContext2D} */ (canvas.getContext('2d'));
    this.alpha = alpha;
    this.labelCanvas = new OffscreenCanvas(width, height);
    this.labelContext = /** @type {OffscreenCanvasRenderingContext2D} */ (this.labelCanvas.getContext('2d'));
    this.labelImage = this.labelContext.createImageData(width, height);
    // RGBA per class as one 32-bit word (little endian: r | g << 8 | b << 16 | a << 24); a label the palette
    // has no colour for is black (never another class's colour: no truncation of class ids to 8 bits).
    this.colours = new Uint32Array(palette.length).fill(UNKNOWN);
    palette.forEach(([r, g, b], i) => { this.colours[i] = (0xff000000 | (b << 16) | (g << 8) | r) >>> 0; });
  }

  /**
   * Draws `image` (frame size h x w) and over it the labels of its letterboxed box: the labels of the
   * box only, so the letterbox bars never get a colour.
   * @param {CanvasImageSource} image the frame
   * @param {number} h its height
   * @param {number} w its width
   * @param {Int32Array} labels model-size class indices
   * @param {Box} box where the frame lies inside the model-size letterbox
   * @param {Box | null} source the part of `image` to show, for an image that is itself letterboxed
   *     (raw test frames): then only that box is drawn
   */
  draw(image, h, w, labels, box, source = null) {
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
    const pixels = new Uint32Array(this.labelImage.data.buffer);
    const colours = this.colours;
    for (let i = 0; i < labels.length; i++) pixels[i] = colours[labels[i]] ?? UNKNOWN;
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

/**
 * The legend: one swatch and name per class.
 * @param {HTMLElement} list the <ul>
 * @param {string[]} classes
 * @param {[number, number, number][]} palette
 */
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
  /** @param {number} window */
  constructor(window = 30) {
    /** @type {number[]} */
    this.times = [];
    this.window = window;
  }

  /** @param {number} now a timestamp in ms @returns {number} frames per second */
  tick(now = performance.now()) {
    this.times.push(now);
    if (this.times.length > this.window) this.times.shift();
    const n = this.times.length - 1;
    return n > 0 ? (1000 * n) / (this.times[n] - this.times[0]) : 0;
  }
}
