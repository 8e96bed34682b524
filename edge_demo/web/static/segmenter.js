// The exported streaming step in LiteRT.js: frame (uint8 RGB) in, labels (int32) out, state carried.
//
// The contract is the one of export/step.py (edge interface), checked against the metadata JSON
// stt-export writes next to the model: inputs frame [1, H, W, 3] uint8, state [1, h, w, T*C]
// float32, reset [1] float32; outputs labels [1, H, W] int32, next_state like state.
// A per-frame model has only frame -> labels.
// @ts-check
import {loadAndCompile, loadLiteRt, supportsFeature, Tensor} from '@litertjs/core';

/** @typedef {{dtype: string, shape: number[]}} TensorSpec */
/** @typedef {{input_size: [number, number], inputs: Record<string, TensorSpec>, outputs: Record<string, TensorSpec>,
 *             classes: string[], palette: [number, number, number][], streaming?: boolean}} ModelMeta
 *  The metadata JSON stt-export writes next to the model (the fields the page reads). */
/** @typedef {'webgpu' | 'wasm'} Backend */

/** @type {Promise<unknown> | undefined} LiteRT.js's Wasm module loads once per page. */
let runtime;

/**
 * Throws when the model's tensors differ from the metadata's (a mismatch is an error, not garbage).
 * @param {string} kind 'input' or 'output'
 * @param {readonly import('@litertjs/core').TensorDetails[]} details what the compiled model has
 * @param {Record<string, TensorSpec>} expected what the metadata says
 */
function checkTensors(kind, details, expected) {
  const found = Object.fromEntries(details.map((d) => [d.name, d]));
  for (const [name, spec] of Object.entries(expected)) {
    const d = found[name];
    if (!d) throw new Error(`the model has no ${kind} "${name}" (it has ${Object.keys(found).join(', ')})`);
    const shape = Array.from(d.shape);
    if (d.dtype !== spec.dtype || shape.join() !== spec.shape.join()) {
      throw new Error(`model ${kind} "${name}" is [${shape}] ${d.dtype} but the metadata says ` +
                      `[${spec.shape}] ${spec.dtype}`);
    }
  }
}

/**
 * A model stream: `step(frame)` carries the state, `reset()` starts a new stream, `dispose()` frees it.
 * The browser's `stt_edge_demo.stream.Stream` (same contract and first-frame policy; the state stays in
 * LiteRT.js tensors, on the GPU under WebGPU, so it cannot be the Python object).
 */
export class Segmenter {
  /**
   * Loads the runtime (its Wasm files are served by the app under /wasm/) and compiles the model.
   * @param {string} modelUrl the .tflite to fetch
   * @param {ModelMeta} meta its metadata JSON
   * @param {Backend} accelerator
   * @returns {Promise<Segmenter>}
   */
  static async create(modelUrl, meta, accelerator) {
    if (!('labels' in meta.outputs)) {
      throw new Error('this page runs edge-interface models (int32 labels out): export with --interfaces edge');
    }
    if (accelerator === 'webgpu' && !(/** @type {any} */ (navigator)).gpu) throw new Error('this browser has no WebGPU: use Wasm');
    // JSPI lets LiteRT.js run ops WebGPU refuses on the CPU instead of moving the whole model there.
    runtime ??= loadLiteRt('/wasm/', {jspi: await supportsFeature('jspi')});
    await runtime;
    const model = await loadAndCompile(modelUrl, {accelerator});
    checkTensors('input', model.getInputDetails(), meta.inputs);
    checkTensors('output', model.getOutputDetails(), meta.outputs);
    return new Segmenter(model, meta, accelerator);
  }

  /**
   * Use `Segmenter.create`: it checks the model against its metadata first.
   * @param {import('@litertjs/core').CompiledModel} model
   * @param {ModelMeta} meta
   * @param {Backend} accelerator
   */
  constructor(model, meta, accelerator) {
    this.model = model;
    this.meta = meta;
    this.accelerator = accelerator;
    this.height = meta.input_size[0];
    this.width = meta.input_size[1];
    this.streaming = 'state' in meta.inputs;
    /** @type {Tensor | null} next_state of the previous frame, left where the model put it (GPU memory on WebGPU) */
    this.state = null;
    /** @type {Tensor | null} */
    this.zeros = null;
    /** @type {Tensor[]} reset = 0 and reset = 1 */
    this.resetFlags = [];
    if (this.streaming) {
      this.zeros = new Tensor(new Float32Array(meta.inputs.state.shape.reduce((a, b) => a * b)),
                              meta.inputs.state.shape);
      this.resetFlags = [new Tensor(new Float32Array([0]), [1]), new Tensor(new Float32Array([1]), [1])];
    }
  }

  /** true when every op runs on the chosen accelerator (no CPU fallback). */
  get fullyAccelerated() {
    return this.model.isFullyAccelerated;
  }

  /** The next frame starts a new stream (the state is ignored and rebuilt). */
  reset() {
    this.state?.delete();
    this.state = null;
  }

  /**
   * One frame through the model, the state carried to the next call.
   * @param {Uint8Array<ArrayBuffer>} rgb H * W * 3 bytes, letterboxed to the model size
   * @returns {Promise<Int32Array>} H * W class indices
   */
  async step(rgb) {
    const frame = new Tensor(rgb, [1, this.height, this.width, 3]);
    /** @type {Record<string, Tensor>} */
    const inputs = {frame};
    if (this.streaming) {
      inputs.state = /** @type {Tensor} */ (this.state ?? this.zeros);
      inputs.reset = this.resetFlags[this.state ? 0 : 1];
    }
    let outputs;
    try {
      outputs = await this.model.run(inputs);
    } finally {
      frame.delete();
    }
    this.state?.delete();
    this.state = outputs.next_state ?? null;
    // data() reads the labels back from the GPU on WebGPU; slice() copies them out of the Wasm heap.
    const values = /** @type {Int32Array} */ ((await outputs.labels.data()).slice());
    outputs.labels.delete();
    return values;
  }

  /** Frees the state and the constant tensors; the object is unusable after. */
  dispose() {
    this.reset();
    this.zeros?.delete();
    this.resetFlags.forEach((t) => t.delete());
    this.resetFlags = [];
    this.zeros = null;
  }
}
