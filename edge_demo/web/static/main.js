// The page: loads the model the server offers, runs the camera / a video file / raw test frames
// through it with the state carried, draws the overlay. URL parameters:
//   backend=webgpu|wasm   (default: WebGPU when the browser has it)
//   model=NAME.tflite     (default: the server's choice, see /models.json)
//   frames=URL            raw frames letterboxed to the model size (tests, replays)
//   box=TOP,LEFT,H,W      the frames' content inside the letterbox (default: the whole frame); only it is shown
//   report=1              POST labels and a summary back to the server (tests)
import {drawLegend, FpsMeter, Overlay} from './draw.js';
import {fetchRawFrames, Letterboxer, openCamera, openFile} from './frames.js';
import {Segmenter} from './segmenter.js';

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const reporting = params.get('report') === '1';
let loop = 0;  // the running video loop's number: starting a new source stops the old loop

function setStatus(text, error = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', error);
}

async function getJson(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

async function report(kind, body, type = 'application/json') {
  if (!reporting) return;
  await fetch(`/report/${kind}`, {method: 'POST', headers: {'Content-Type': type}, body});
}

async function adapterName() {
  const adapter = await navigator.gpu?.requestAdapter();
  const info = adapter?.info ?? {};
  return adapter ? [info.vendor, info.architecture, info.description].filter(Boolean).join(' ') || 'unknown' : null;
}

function nextVideoFrame(video) {
  return new Promise((resolve) => ('requestVideoFrameCallback' in video
    ? video.requestVideoFrameCallback(() => resolve()) : requestAnimationFrame(() => resolve())));
}

/** Camera or video file: one model step per displayed frame (frames arriving meanwhile are skipped).
 *  With ?report=1&count=N it reports a summary after N frames (tests of the video path). */
async function runVideo(video, segmenter, overlay) {
  const id = ++loop;
  const [H, W] = segmenter.meta.input_size;
  const letterboxer = new Letterboxer(H, W);
  const fps = new FpsMeter();
  const count = Number(params.get('count') ?? 0);
  const seen = new Set();
  let size = '';
  let frames = 0;
  let resets = 0;
  while (id === loop) {
    await nextVideoFrame(video);
    if (id !== loop) break;  // another source took over while this loop waited
    if (video.readyState < 2 || !video.videoWidth) continue;
    const image = await createImageBitmap(video);  // one frame for both the model and the display
    const key = `${image.width}x${image.height}`;
    if (key !== size) {  // new resolution (camera switched, phone rotated): a new stream
      segmenter.reset();
      size = key;
      resets++;
    }
    const {rgb, box} = letterboxer.apply(image, image.height, image.width);
    const labels = await segmenter.step(rgb);
    overlay.draw(image, image.height, image.width, labels, box);
    image.close();
    $('fps').textContent = `${fps.tick().toFixed(1)} fps`;
    labels.forEach((label) => seen.add(label));
    if (++frames === count) {
      await report('summary', JSON.stringify({source: 'video', frames, size, resets, labels: [...seen].sort()}));
    }
  }
}

/** Raw frames from the server, in order, every one of them: deterministic, for tests and replays. */
async function runRawFrames(url, segmenter, overlay) {
  const [H, W] = segmenter.meta.input_size;
  const frames = await fetchRawFrames(url, H, W);
  const canvas = new OffscreenCanvas(W, H);
  const image = new ImageData(W, H);
  const all = new Uint8Array(frames.length * H * W);
  const times = [];
  const fps = new FpsMeter();
  const box = rawBox(params.get('box'), H, W);
  segmenter.reset();
  for (const [i, rgb] of frames.entries()) {
    const start = performance.now();
    const labels = await segmenter.step(rgb);
    times.push(performance.now() - start);
    all.set(labels, i * H * W);  // class indices are < 256
    for (let p = 0, q = 0; p < rgb.length; p += 3, q += 4) {
      image.data.set(rgb.subarray(p, p + 3), q);
      image.data[q + 3] = 255;
    }
    canvas.getContext('2d').putImageData(image, 0, 0);
    overlay.draw(canvas, box.height, box.width, labels, box, box);  // the content only: no letterbox bars
    $('fps').textContent = `${fps.tick().toFixed(1)} fps`;
    setStatus(`frame ${i + 1} of ${frames.length}`);
  }
  return {labels: all, frames: frames.length, msPerFrame: times};
}

/** The content box of letterboxed raw frames from ?box=top,left,height,width (checked), else the whole frame. */
function rawBox(text, H, W) {
  const whole = {top: 0, left: 0, height: H, width: W};
  if (!text) return whole;
  const [top, left, height, width] = text.split(',').map(Number);
  const ok = [top, left, height, width].every(Number.isInteger) && top >= 0 && left >= 0 && height > 0 && width > 0 &&
    top + height <= H && left + width <= W;
  if (!ok) throw new Error(`box=${text} is not top,left,height,width inside ${H}x${W}`);
  return {top, left, height, width};
}

async function main() {
  const catalog = await getJson('/models.json');
  const name = params.get('model') ?? catalog.default;
  if (!catalog.models.includes(name)) throw new Error(`unknown model ${name} (the server has ${catalog.models})`);
  const meta = await getJson(`/models/${name.replace(/\.tflite$/, '.json')}`);
  // A model WebGPU cannot build (not the gpu form, not the edge interface): Wasm by default, a clear error if asked.
  const webgpuProblem = (catalog.webgpu_problems ?? {})[name];
  const accelerator = params.get('backend') ?? (navigator.gpu && !webgpuProblem ? 'webgpu' : 'wasm');
  $('models').replaceChildren(...catalog.models.map((m) => new Option(m, m, false, m === name)));
  $('accelerator').value = accelerator;
  const reloadWith = (key) => (e) => { params.set(key, e.target.value); location.search = params; };
  $('models').onchange = reloadWith('model');
  $('accelerator').onchange = reloadWith('backend');
  if (accelerator === 'webgpu' && webgpuProblem) {
    throw new Error(`${webgpuProblem}: choose Wasm (CPU) as the backend, or another model`);
  }
  setStatus(`compiling ${name} for ${accelerator}…`);
  // On WebGPU the server's copy (edge_demo/web/webmodel.py): the file itself for the gpu form (no gathers); a model
  // with 1-D gather indices gets [1, n] ones, which LiteRT.js 2.5.3's WebGPU delegate leaves to the CPU.
  const url = accelerator === 'webgpu' ? `/models/webgpu/${name}` : `/models/${name}`;
  const segmenter = await Segmenter.load(url, meta, accelerator);
  const adapter = accelerator === 'webgpu' ? await adapterName() : null;
  const where = accelerator === 'webgpu'
    ? `WebGPU (${adapter})${segmenter.fullyAccelerated ? '' : ' + CPU for the ops it declines'}` : 'Wasm (CPU, XNNPACK)';
  $('backend').textContent = where;
  $('about').textContent = `${name}: ${meta.input_size.join('x')}, ${meta.streaming ? 'streaming' : 'per frame'}`;
  drawLegend($('legend'), meta.classes, meta.palette);
  const overlay = new Overlay($('view'), ...meta.input_size, meta.palette);
  const video = document.createElement('video');
  video.playsInline = true;
  video.muted = true;
  const start = (what, open) => open().then(() => {
    setStatus(`running: ${what}`);
    return runVideo(video, segmenter, overlay);
  }).catch(fail);
  $('camera').onclick = () => start('rear camera', () => openCamera(video));
  $('file').onchange = (e) => e.target.files[0] && start(e.target.files[0].name, () => openFile(video, e.target.files[0]));
  setStatus('ready: choose the camera or a video file');
  if (params.has('frames')) {
    const result = await runRawFrames(params.get('frames'), segmenter, overlay);
    await report('labels', result.labels, 'application/octet-stream');
    const mean = result.msPerFrame.reduce((a, b) => a + b, 0) / result.frames;
    await report('summary', JSON.stringify({
      model: name, accelerator, backend: where, fullyAccelerated: segmenter.fullyAccelerated, adapter,
      frames: result.frames, msPerFrame: result.msPerFrame, userAgent: navigator.userAgent}));
    setStatus(`done: ${result.frames} frames, ${mean.toFixed(1)} ms per frame on ${where}`);
  }
}

function fail(error) {
  console.error(error);
  setStatus(`error: ${error.message ?? error}`, true);
  report('error', JSON.stringify({message: String(error.message ?? error), stack: String(error.stack ?? '')}));
}

window.addEventListener('unhandledrejection', (e) => fail(e.reason));
main().catch(fail);
