// Frame sources (rear camera, a video file, or raw frames for tests) and letterboxing to the model size.
// @ts-check

/**
 * The box a frame of size h x w occupies after letterboxing to H x W (the same arithmetic as
 * edge_demo/overlay.py's letterbox).
 * @param {number} h @param {number} w @param {number} H @param {number} W
 * @returns {import('./draw.js').Box}
 */
export function letterboxBox(h, w, H, W) {
  const scale = Math.min(H / h, W / w);
  const ch = Math.max(1, Math.round(h * scale));
  const cw = Math.max(1, Math.round(w * scale));
  return {top: Math.floor((H - ch) / 2), left: Math.floor((W - cw) / 2), height: ch, width: cw};
}

/** Draws an image letterboxed into a H x W canvas and reads its RGB back. */
export class Letterboxer {
  /** @param {number} height @param {number} width the model size */
  constructor(height, width) {
    this.canvas = new OffscreenCanvas(width, height);
    this.context = /** @type {OffscreenCanvasRenderingContext2D} */ (
      this.canvas.getContext('2d', {willReadFrequently: true}));
  }

  /**
   * @param {CanvasImageSource} image a video, canvas or bitmap
   * @param {number} imageHeight @param {number} imageWidth its size
   * @returns {{rgb: Uint8Array<ArrayBuffer>, box: import('./draw.js').Box}}
   */
  apply(image, imageHeight, imageWidth) {
    const {width: W, height: H} = this.canvas;
    const box = letterboxBox(imageHeight, imageWidth, H, W);
    this.context.fillStyle = '#000';
    this.context.fillRect(0, 0, W, H);
    this.context.drawImage(image, box.left, box.top, box.width, box.height);
    return {rgb: rgbaToRgb(this.context.getImageData(0, 0, W, H).data), box};
  }
}

/** @param {Uint8ClampedArray | Uint8Array} rgba @returns {Uint8Array<ArrayBuffer>} the same pixels without alpha */
export function rgbaToRgb(rgba) {
  const rgb = new Uint8Array((rgba.length / 4) * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i];
    rgb[j + 1] = rgba[i + 1];
    rgb[j + 2] = rgba[i + 2];
  }
  return rgb;
}

/**
 * A <video> element playing the rear camera (needs https or localhost).
 * @param {HTMLVideoElement} video @returns {Promise<HTMLVideoElement>}
 */
export async function openCamera(video) {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error('no camera access: the page must be opened over https or on localhost');
  }
  video.srcObject = await navigator.mediaDevices.getUserMedia(
      {video: {facingMode: {ideal: 'environment'}, width: {ideal: 1280}, height: {ideal: 720}}, audio: false});
  await video.play();
  return video;
}

/**
 * A <video> element playing a file the user picked (nothing is uploaded).
 * @param {HTMLVideoElement} video @param {File} file @returns {Promise<HTMLVideoElement>}
 */
export async function openFile(video, file) {
  video.srcObject = null;
  video.src = URL.createObjectURL(file);
  video.loop = true;
  video.muted = true;
  await video.play();
  return video;
}

/**
 * Raw frames already letterboxed to H x W (N * H * W * 3 bytes of RGB), e.g. the ones the test
 * feeds so that the page and the Python edge demo see the very same pixels.
 * @param {string} url @param {number} height @param {number} width
 * @returns {Promise<Uint8Array<ArrayBuffer>[]>} one H * W * 3 view per frame
 */
export async function fetchRawFrames(url, height, width) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`cannot load frames ${url}: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  const size = height * width * 3;
  if (bytes.length === 0 || bytes.length % size) {
    throw new Error(`${url}: ${bytes.length} bytes is not a whole number of ${height}x${width} RGB frames`);
  }
  return Array.from({length: bytes.length / size}, (_, i) => bytes.subarray(i * size, (i + 1) * size));
}
