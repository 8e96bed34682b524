// The exported streaming step in LiteRT.js: frame (uint8 RGB) in, labels (int32) out, state carried.
//
// The contract is the one of export/step.py (edge interface), checked against the metadata JSON
// stt-export writes next to the model: inputs frame [1, H, W, 3] uint8, state [1, h, w, T*C]
// float32, reset [1] float32; outputs labels [1, H, W] int32, next_state like state.
// A per-frame model has only frame -> labels.
import {loadAndCompile, loadLiteRt, supportsFeature, Tensor} from '@litertjs/core';

let runtime;  // LiteRT.js's Wasm module loads once per page

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

export class Segmenter {
  /** Loads the runtime (Wasm files from `wasmDir`, served by the app) and compiles the model. */
  static async load(modelUrl, meta, accelerator) {
    if (!('labels' in meta.outputs)) {
      throw new Error('this page runs edge-interface models (int32 labels out): export with --interfaces edge');
    }
    if (accelerator === 'webgpu' && !navigator.gpu) throw new Error('this browser has no WebGPU: use Wasm');
    // JSPI lets LiteRT.js run ops WebGPU refuses on the CPU instead of moving the whole model there.
    runtime ??= loadLiteRt('/wasm/', {jspi: await supportsFeature('jspi')});
    await runtime;
    const model = await loadAndCompile(modelUrl, {accelerator});
    checkTensors('input', model.getInputDetails(), meta.inputs);
    checkTensors('output', model.getOutputDetails(), meta.outputs);
    return new Segmenter(model, meta, accelerator);
  }

  constructor(model, meta, accelerator) {
    this.model = model;
    this.meta = meta;
    this.accelerator = accelerator;
    [this.height, this.width] = meta.input_size;
    this.streaming = 'state' in meta.inputs;
    this.state = null;  // next_state of the previous frame, left where the model put it (GPU memory on WebGPU)
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

  /** rgb: Uint8Array H*W*3 -> Int32Array H*W of class indices; carries the state. */
  async step(rgb) {
    const frame = new Tensor(rgb, [1, this.height, this.width, 3]);
    const inputs = {frame};
    if (this.streaming) {
      inputs.state = this.state ?? this.zeros;
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
    const values = (await outputs.labels.data()).slice();
    outputs.labels.delete();
    return values;
  }
}
