#!/usr/bin/env node
// Packs the main idforge package for release: the files `npm pack` would take, with the
// optionalDependencies of lib/platform.ts packedOptionalDependencies (every prebuilt platform
// package at this version, beside the repository's own), and binding.gyp moved out of the package
// root (see below).
//   node scripts/pack.mjs [--out DIR]      prints the tarball's path
import { execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({ options: { out: { type: 'string' } } });
const out = path.resolve(values.out ?? root);
const { packedOptionalDependencies } = await import(path.join(root, 'dist/platform.js'));

const npm = (args, cwd) => execFileSync('npm', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
const [listing] = JSON.parse(npm(['pack', '--dry-run', '--json', '--ignore-scripts'], root));
const stage = mkdtempSync(path.join(os.tmpdir(), 'idforge-pack-'));
try {
  for (const f of listing.files) cpSync(path.join(root, f.path), path.join(stage, f.path));
  // binding.gyp travels as scripts/binding.gyp: at the package root, npm would run
  // `node-gyp rebuild` on install (lockfile entries do not record "gypfile": false).
  // scripts/build-native.mjs puts it back for a from-source build without CMake.
  cpSync(path.join(root, 'binding.gyp'), path.join(stage, 'scripts/binding.gyp'));
  const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
  pkg.optionalDependencies = packedOptionalDependencies(pkg.optionalDependencies, pkg.version);
  writeFileSync(path.join(stage, 'package.json'), `${JSON.stringify(pkg, null, 2)}\n`);
  const [packed] = JSON.parse(npm(['pack', '--json', '--ignore-scripts', '--pack-destination', out, stage], out));
  process.stdout.write(`${path.join(out, packed.filename)}\n`);
} finally {
  rmSync(stage, { recursive: true, force: true });
}
