// Test and replay hooks, loaded by main.js only when the URL asks for them:
//   frames=URL            raw frames letterboxed to the model size, run in order, every one of them
//   box=TOP,LEFT,H,W      the frames' content inside the letterbox (default: the whole frame); only it is shown
//   report=1              POST labels (int32, little endian) and a summary back to the server (a test server)
//   count=N               with report=1 on the camera/video path: report a summary after N frames
// @ts-check
import {FpsMeter} from './draw.js';
import {fetchRawFrames} from './frames.js';

/**
 * POSTs a report to the test server (only a server started with reports collects them).
 * @param {string} kind @param {BodyInit} body @param {string} type
 */
async function report(kind, body, type = 'application/json') {
  await fetch(`/report/${kind}`, {method: 'POST', headers: {'Content-Type': type}, body});
}

/** @param {any} error the page's error, reported when report=1 */
export function reportError(error) {
  if (new URLSearchParams(location.search).get('report') !== '1') return;
  report('error', JSON.stringify({message: String(error?.message ?? error), stack: String(error?.stack ?? '')}));
}

/**
 * The content box of letterboxed raw frames from ?box=top,left,height,width (checked), else the whole frame.
 * @param {string | null} text @param {number} H @param {number} W
 * @returns {import('./draw.js').Box}
 */
function rawBox(text, H, W) {
  const whole = {top: 0, left: 0, height: H, width: W};
  if (!text) return whole;
  const [top, left, height, width] = text.split(',').map(Number);
  const ok = [top, left, height, width].every(Number.isInteger) && top >= 0 && left >= 0 && height > 0 && width > 0 &&
    top + height <= H && left + width <= W;
  if (!ok) throw new Error(`box=${text} is not top,left,height,width inside ${H}x${W}`);
  return {top, left, height, width};
}

/**
 * The hooks main.js calls.
 * @param {URLSearchParams} params the page's URL parameters
 * @param {{name: string, accelerator: string, where: string, adapter: string | null,
 *          setStatus: (text: string) => void}} page what the summary reports
 */
export function createHooks(params, page) {
  const reporting = params.get('report') === '1';
  const count = Number(params.get('count') ?? 0);
  /** @type {Set<number>} */
  const seen = new Set();
  let frames = 0;
  return {
    /** Camera/video path: after `count` frames, a summary of what was seen. */
    onVideoFrame: (/** @type {{labels: Int32Array, size: string, resets: number}} */ frame) => {
      frame.labels.forEach((label) => seen.add(label));
      if (reporting && ++frames === count) {
        report('summary', JSON.stringify({source: 'video', frames, size: frame.size, resets: frame.resets,
                                          labels: [...seen].sort((a, b) => a - b)}));
      }
    },

    /**
     * Runs ?frames= (if given) in order, state carried, and reports the labels and a summary.
     * @param {import('./segmenter.js').Segmenter} segmenter @param {import('./draw.js').Overlay} overlay
     */
    async runRawFrames(segmenter, overlay) {
      const url = params.get('frames');
      if (!url) return;
      const [H, W] = segmenter.meta.input_size;
      const rgbFrames = await fetchRawFrames(url, H, W);
      const canvas = new OffscreenCanvas(W, H);
      const image = new ImageData(W, H);
      const all = new Int32Array(rgbFrames.length * H * W);
      /** @type {number[]} */
      const times = [];
      const fps = new FpsMeter();
      const box = rawBox(params.get('box'), H, W);
      const context = /** @type {OffscreenCanvasRenderingContext2D} */ (canvas.getContext('2d'));
      segmenter.reset();
      for (const [i, rgb] of rgbFrames.entries()) {
        const start = performance.now();
        const labels = await segmenter.step(rgb);
        times.push(performance.now() - start);
        all.set(labels, i * H * W);
        for (let p = 0, q = 0; p < rgb.length; p += 3, q += 4) {
          image.data.set(rgb.subarray(p, p + 3), q);
          image.data[q + 3] = 255;
        }
        context.putImageData(image, 0, 0);
        overlay.draw(canvas, box.height, box.width, labels, box, box);  // the content only: no letterbox bars
        const fpsText = document.getElementById('fps');
        if (fpsText) fpsText.textContent = `${fps.tick().toFixed(1)} fps`;
        page.setStatus(`frame ${i + 1} of ${rgbFrames.length}`);
      }
      const mean = times.reduce((a, b) => a + b, 0) / rgbFrames.length;
      if (reporting) {
        await report('labels', new Uint8Array(all.buffer), 'application/octet-stream');
        await report('summary', JSON.stringify({
          model: page.name, accelerator: page.accelerator, backend: page.where,
          fullyAccelerated: segmenter.fullyAccelerated, adapter: page.adapter, frames: rgbFrames.length,
          msPerFrame: times, userAgent: navigator.userAgent}));
      }
      page.setStatus(`done: ${rgbFrames.length} frames, ${mean.toFixed(1)} ms per frame on ${page.where}`);
    },
  };
}
