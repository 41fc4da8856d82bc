// The utility process: owns one Engine, runs one generation at a time, and reports every step.
// The addon's native calls run off this process's main thread already; worker_threads are not needed.
import { Engine } from 'idforge';

const engine = await Engine.load(process.env.IDFORGE_MODEL);
const port = process.parentPort;
port.postMessage({ type: 'ready', device: engine.backend.device, dtype: engine.backend.dtype });

let busy = Promise.resolve();
port.on('message', ({ data }) => {
  if (data?.type !== 'generate') return;
  busy = busy.then(async () => {
    try {
      const { prompt, steps = 10, seed = 1, width = 128, height = 128 } = data.request;
      const r = await engine.generate({
        prompt, steps, seed, width, height,
        onProgress: ({ step, steps }) => port.postMessage({ type: 'progress', step, steps }),
      });
      const img = r.images[0];
      r.latents.dispose();
      r.pixels.dispose();
      // Raw RGB to the window (it paints it on a canvas): no image encoding on either side.
      port.postMessage({ type: 'image', width: img.width, height: img.height, rgb: img.data });
    } catch (e) {
      port.postMessage({ type: 'error', code: e.code, message: e.message });
    }
  });
});
