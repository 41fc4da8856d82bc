// Shared by the GPU check scripts (gpu-engine-check.mjs, gpu-learn-check.mjs): where things are,
// how dist/ modules load (no npm on the GPU machine), and the relative L2 error of the goldens.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const out = process.env.OUT || path.join(root, 'gpu-out');
fs.mkdirSync(out, { recursive: true });
/** A compiled module of the package: dist/<p>. */
export const dist = (p) => import(path.join(root, 'dist', p));
/** A path under test/fixtures. */
export const fx = (p) => path.join(root, 'test/fixtures', p);
/** ‖a − b‖ / ‖b‖ */
export const relL2 = (a, b) => {
  let n = 0, m = 0;
  for (let i = 0; i < b.length; i++) { n += (a[i] - b[i]) ** 2; m += b[i] ** 2; }
  return Math.sqrt(n / m);
};
