// Frame sources (rear camera, a video file, or raw frames for tests) and letterboxing to the model size.

/** The box (top, left, height, width) a frame of size h x w occupies after letterboxing to H x W
 *  (the same arithmetic as edge_demo/overlay.py's letterbox). */
export function letterboxBox(h, w, H, W) {
  const scale = Math.min(H / h, W / w);
  const ch = Math.max(1, Math.round(h * scale));
  const cw = Math.max(1, Math.round(w * scale));
  return {top: Math.floor((H - ch) / 2), left: Math.floor((W - cw) / 2), height: ch, width: cw};
}

/** Draws `image` (video, canvas, bitmap) letterboxed into a H x W canvas; returns {rgb, box}. */
export class Letterboxer {
  constructor(height, width) {
    this.canvas = new OffscreenCanvas(width, height);
    this.context = this.canvas.getContext('2d', {willReadFrequently: true});
  }

  apply(image, imageHeight, imageWidth) {
    const {width: W, height: H} = this.canvas;
    const box = letterboxBox(imageHeight, imageWidth, H, W);
    this.context.fillStyle = '#000';
    this.context.fillRect(0, 0, W, H);
    this.context.drawImage(image, box.left, box.top, box.width, box.height);
    return {rgb: rgbaToRgb(this.context.getImageData(0, 0, W, H).data), box};
  }
}

export function rgbaToRgb(rgba) {
  const rgb = new Uint8Array((rgba.length / 4) * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i];
    rgb[j + 1] = rgba[i + 1];
    rgb[j + 2] = rgba[i + 2];
  }
  return rgb;
}

/** A <video> element playing the rear camera (needs https or localhost). */
export async function openCamera(video) {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error('no camera access: the page must be opened over https or on localhost');
  }
  video.srcObject = await navigator.mediaDevices.getUserMedia(
      {video: {facingMode: {ideal: 'environment'}, width: {ideal: 1280}, height: {ideal: 720}}, audio: false});
  await video.play();
  return video;
}

/** A <video> element playing a file the user picked (nothing is uploaded). */
export async function openFile(video, file) {
  video.srcObject = null;
  video.src = URL.createObjectURL(file);
  video.loop = true;
  video.muted = true;
  await video.play();
  return video;
}

/** Raw frames already letterboxed to H x W (N * H * W * 3 bytes of RGB), e.g. the ones the test
 *  feeds so that the page and the Python edge demo see the very same pixels. */
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
