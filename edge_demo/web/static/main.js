// The page: loads the model the server offers, runs the camera or a video file through it with the
// state carried, draws the overlay. URL parameters:
//   backend=webgpu|wasm   (default: WebGPU when the browser has it)
//   model=NAME.tflite     (default: the server's choice, see /models.json)
// Tests and replays add the parameters testing.js reads (frames=, box=, report=, count=); that module
// is loaded only when one of them is given.
// @ts-check
import {drawLegend, FpsMeter, Overlay} from './draw.js';
import {Letterboxer, openCamera, openFile} from './frames.js';
import {Segmenter} from './segmenter.js';

const params = new URLSearchParams(location.search);
/** @param {string} id @returns {any} the page's element with this id */
const $ = (id) => document.getElementById(id);
const testing = ['frames', 'report', 'count', 'box'].some((key) => params.has(key)) ? import('./testing.js') : null;
let loop = 0;  // the running video loop's number: starting a new source stops the old loop

/** @param {string} text @param {boolean} error */
function setStatus(text, error = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', error);
}

/** @param {string} url @returns {Promise<any>} */
async function getJson(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

/** @returns {Promise<string | null>} the WebGPU adapter's name, null without WebGPU */
async function adapterName() {
  const adapter = await (/** @type {any} */ (navigator)).gpu?.requestAdapter();
  const info = adapter?.info ?? {};
  return adapter ? [info.vendor, info.architecture, info.description].filter(Boolean).join(' ') || 'unknown' : null;
}

/** @param {HTMLVideoElement} video @returns {Promise<void>} */
function nextVideoFrame(video) {
  return new Promise((resolve) => ('requestVideoFrameCallback' in video
    ? video.requestVideoFrameCallback(() => resolve()) : requestAnimationFrame(() => resolve())));
}

/**
 * Camera or video file: one model step per displayed frame (frames arriving meanwhile are skipped).
 * @param {HTMLVideoElement} video
 * @param {Segmenter} segmenter
 * @param {Overlay} overlay
 * @param {((frame: {labels: Int32Array, size: string, resets: number}) => void) | null} onFrame
 *     called after every frame (the test hooks' summary)
 */
async function runVideo(video, segmenter, overlay, onFrame) {
  const id = ++loop;
  const [H, W] = segmenter.meta.input_size;
  const letterboxer = new Letterboxer(H, W);
  const fps = new FpsMeter();
  let size = '';
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
    onFrame?.({labels, size, resets});
  }
}

async function main() {
  const catalog = await getJson('/models.json');
  const name = params.get('model') ?? catalog.default;
  if (!catalog.models.includes(name)) throw new Error(`unknown model ${name} (the server has ${catalog.models})`);
  /** @type {import('./segmenter.js').ModelMeta} */
  const meta = await getJson(`/models/${name.replace(/\.tflite$/, '.json')}`);
  // A model WebGPU cannot build (not the dense_masked form, not the edge interface): Wasm by default, a clear error if asked.
  const webgpuProblem = (catalog.webgpu_problems ?? {})[name];
  const hasWebGpu = Boolean((/** @type {any} */ (navigator)).gpu);
  const accelerator = /** @type {import('./segmenter.js').Backend} */ (
    params.get('backend') ?? (hasWebGpu && !webgpuProblem ? 'webgpu' : 'wasm'));
  $('models').replaceChildren(...catalog.models.map((/** @type {string} */ m) => new Option(m, m, false, m === name)));
  $('accelerator').value = accelerator;
  /** @param {string} key @returns {(e: Event) => void} */
  const reloadWith = (key) => (e) => {
    params.set(key, /** @type {HTMLSelectElement} */ (e.target).value);
    location.search = params.toString();
  };
  $('models').onchange = reloadWith('model');
  $('accelerator').onchange = reloadWith('backend');
  if (accelerator === 'webgpu' && webgpuProblem) {
    throw new Error(`${webgpuProblem}: choose Wasm (CPU) as the backend, or another model`);
  }
  setStatus(`compiling ${name} for ${accelerator}…`);
  // On WebGPU the server's copy (edge_demo/web/webmodel.py): the file itself for the dense_masked form (no gathers); a model
  // with 1-D gather indices gets [1, n] ones, which LiteRT.js 2.5.3's WebGPU delegate leaves to the CPU.
  const url = accelerator === 'webgpu' ? `/models/webgpu/${name}` : `/models/${name}`;
  const segmenter = await Segmenter.create(url, meta, accelerator);
  addEventListener('pagehide', () => segmenter.dispose());
  const adapter = accelerator === 'webgpu' ? await adapterName() : null;
  const where = accelerator === 'webgpu'
    ? `WebGPU (${adapter})${segmenter.fullyAccelerated ? '' : ' + CPU for the ops it declines'}` : 'Wasm (CPU, XNNPACK)';
  $('backend').textContent = where;
  $('about').textContent = `${name}: ${meta.input_size.join('x')}, ${meta.streaming ? 'streaming' : 'per frame'}`;
  drawLegend($('legend'), meta.classes, meta.palette);
  const overlay = new Overlay($('view'), ...meta.input_size, meta.palette);
  const hooks = testing && (await testing).createHooks(params, {name, accelerator, where, adapter, setStatus});
  const video = document.createElement('video');
  video.playsInline = true;
  video.muted = true;
  /** @param {string} what @param {() => Promise<HTMLVideoElement>} open */
  const start = (what, open) => open().then(() => {
    setStatus(`running: ${what}`);
    return runVideo(video, segmenter, overlay, hooks?.onVideoFrame ?? null);
  }).catch(fail);
  $('camera').onclick = () => start('rear camera', () => openCamera(video));
  $('file').onchange = (/** @type {Event} */ e) => {
    const file = /** @type {HTMLInputElement} */ (e.target).files?.[0];
    if (file) start(file.name, () => openFile(video, file));
  };
  setStatus('ready: choose the camera or a video file');
  await hooks?.runRawFrames(segmenter, overlay);
}

/** @param {any} error */
function fail(error) {
  console.error(error);
  setStatus(`error: ${error?.message ?? error}`, true);
  testing?.then((t) => t.reportError(error));
}

window.addEventListener('unhandledrejection', (e) => fail(e.reason));
main().catch(fail);
