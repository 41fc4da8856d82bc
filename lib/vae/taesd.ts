// diffusers' AutoencoderTiny (TAESD): a VAE of plain 3x3 convs and ReLUs that decodes the UNet's
// latents directly (scaling factor 1). The module list is lib/io/taesd.ts's, shared with the layout.
import type { VaeConfig } from '../io/configs.js';
import { tinyDecoderModules, tinyEncoderModules, type TinyModule } from '../io/taesd.js';
import type { Graph, Value } from '../graph/graph.js';
import { convW, type Weights } from '../graph/weights.js';

function run(g: Graph, w: Weights, modules: TinyModule[], x: Value): Value {
  for (const m of modules) {
    if (m.kind === 'relu') x = g.relu(x);
    else if (m.kind === 'upsample') x = g.upsample2x(x);
    else if (m.kind === 'conv') x = convW(g, w, x, m.name, { stride: m.stride, pad: 1 });
    else {
      // relu(conv(x) + skip(x)): the skip is conv.4's residual (added in its epilogue).
      const skip = m.inp !== m.out ? convW(g, w, x, `${m.name}.skip`) : x;
      let h = g.relu(convW(g, w, x, `${m.name}.conv.0`));
      h = g.relu(convW(g, w, h, `${m.name}.conv.2`));
      x = g.relu(convW(g, w, h, `${m.name}.conv.4`, { residual: skip }));
    }
  }
  return x;
}

/** image [B, 3, 8h, 8w] in [−1, 1] from latents z [B, 4, h, w] (TAESD's own scale: the UNet's latents as they are). */
export function buildTinyDecoder(g: Graph, w: Weights, cfg: VaeConfig, z: Value): Value {
  const clamped = g.scale(g.tanh(g.scale(z, 1 / 3)), 3); // DecoderTiny: tanh(z / 3) · 3
  return g.scale(run(g, w, tinyDecoderModules(cfg), clamped), 2, -1);
}

/** Latents [B, 4, H/8, W/8] of image [B, 3, H, W] in [−1, 1] (EncoderTiny sees (image + 1)/2). */
export function buildTinyEncoder(g: Graph, w: Weights, cfg: VaeConfig, image: Value): Value {
  return run(g, w, tinyEncoderModules(cfg), g.scale(image, 0.5, 0.5));
}
