// `idforge build`: compiles the native addon from source in the installed package (for platforms
// without a prebuilt @idforge/<platform> package), through scripts/build-native.mjs.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export async function build(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stderr.write('usage: idforge build    compile the addon into <package>/build/Release (C++17 compiler; CMake, and nvcc for CUDA, optional)\n' +
      '  IDFORGE_CUDA=0 CPU only · IDFORGE_CUDA_ARCHS="80;86;89;90" · IDFORGE_BUILD=gyp forces node-gyp\n');
    return 0;
  }
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
  const r = spawnSync(process.execPath, [path.join(root, 'scripts/build-native.mjs')], { cwd: root, stdio: 'inherit' });
  return r.status ?? 1;
}
