// On a machine with a usable GPU, `npm test` runs every CUDA check: the op table's CUDA modes
// (test/ops-cuda.test.ts), the stream checks (test/cuda-streams.test.ts), the tiny-model goldens
// (test/gpu-goldens.test.ts) and here the native CUDA checks: the kernel paths only a native call
// can force, bad ids raised at synchronisation, the stream stress check (scripts/gpu-check.sh
// builds test/native/cuda_ops_test.cu; no benchmarks). Skips with the reason elsewhere.
import t from 'tap';
import { backends } from '../lib/native.js';
import { runScript } from './helpers/gpu-scripts.js';

const cuda = backends().cuda;
const skip = cuda.available ? false : `CUDA not available: ${cuda.reason}`;

t.test('native CUDA checks (forced kernel paths, bad ids, stream stress)', { skip }, async (t) => {
  runScript(t, 'scripts/gpu-check.sh', 'bash', ['scripts/gpu-check.sh', '--no-bench']);
});
