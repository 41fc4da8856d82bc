// Fuzzing the two parsers that read untrusted files: the safetensors reader and the config
// parser (+ bounds). A few thousand mutated inputs in a bounded loop: no crash, no hang, and only
// typed errors (IdforgeError with a code), never a TypeError / RangeError / heap blow-up.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { IdforgeError } from '../lib/errors.js';
import { checkSchedulerConfig, checkTextConfig, checkUNetConfig, checkVaeConfig } from '../lib/io/bounds.js';
import { parseTextConfig, parseUNetConfig, parseVaeConfig, readJsonFile } from '../lib/io/configs.js';
import { parseSchedulerConfig } from '../lib/sched/config.js';
import { textLayout, unetLayout, vaeLayout } from '../lib/io/layout.js';
import { SafetensorsFile, writeSafetensors } from '../lib/io/safetensors.js';
import { TINY_SD } from './helpers/fixtures.js';
import { rng } from './helpers/random.js';

const CASES = Number(process.env.IDFORGE_FUZZ_CASES ?? 2000);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'idforge-fuzz-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Runs `body` on every case; anything thrown that is not an IdforgeError is a finding. */
function fuzz(t: Test, name: string, cases: number, body: (r: () => number, i: number) => void): void {
  const r = rng(1234);
  const findings: string[] = [];
  let ok = 0, typed = 0;
  const t0 = Date.now();
  for (let i = 0; i < cases; i++) {
    try {
      body(r, i);
      ok++;
    } catch (e) {
      if (e instanceof IdforgeError && typeof e.code === 'string') typed++;
      else if (findings.length < 5) findings.push(`case ${i}: ${(e as Error)?.stack ?? String(e)}`);
      else findings.push('');
    }
  }
  t.same(findings.filter(Boolean), [], `${name}: only typed errors`);
  t.equal(findings.length, 0, `${name}: ${cases} cases, ${ok} accepted, ${typed} typed errors, 0 others`);
  t.comment(`${name}: ${cases} cases in ${Date.now() - t0} ms (${ok} accepted, ${typed} refused with a typed error)`);
}

t.test('safetensors reader', async (t) => {
  const base = path.join(tmp, 'base.safetensors');
  writeSafetensors(base, {
    w: { dtype: 'F32', shape: [3, 4], data: new Float32Array(12).fill(1.5) },
    h: { dtype: 'F16', shape: [5], data: new Uint16Array(5).fill(0x3c00) },
    i: { dtype: 'I64', shape: [2], data: new BigInt64Array([1n, -2n]) },
    e: { dtype: 'U8', shape: [0], data: new Uint8Array(0) },
  }, { format: 'pt' });
  const bytes = fs.readFileSync(base);
  const headerLen = Number(bytes.readBigUInt64LE(0));
  const file = path.join(tmp, 'case.safetensors');
  const tokens = ['0', '-1', '1e300', '18446744073709551616', '"F32"', '"BF16"', '"X"', 'null', '[]', '{}', '[0,0]', '[9007199254740993]', '"__metadata__"', 'true'];
  fuzz(t, 'safetensors', CASES, (r, i) => {
    let b = Buffer.from(bytes);
    switch (i % 5) {
      case 0: // flip 1-4 bytes anywhere (header length included)
        for (let k = 1 + Math.floor(r() * 4); k > 0; k--) b[Math.floor(r() * b.length)] = Math.floor(r() * 256);
        break;
      case 1: // flip bytes inside the JSON header
        for (let k = 1 + Math.floor(r() * 3); k > 0; k--) b[8 + Math.floor(r() * headerLen)] = ' {}[]":,0123456789-eE.'.charCodeAt(Math.floor(r() * 22));
        break;
      case 2: // truncate or extend
        b = r() < 0.5 ? b.subarray(0, Math.floor(r() * b.length)) : Buffer.concat([b, Buffer.alloc(1 + Math.floor(r() * 64), Math.floor(r() * 256))]);
        break;
      case 3: { // replace a JSON value token in the header, keeping the length field consistent
        const text = b.subarray(8, 8 + headerLen).toString('utf8');
        const nums = [...text.matchAll(/-?\d+|"[A-Z0-9]+"|\[[^\]]*\]/g)];
        const m = nums[Math.floor(r() * nums.length)]!;
        const json = text.slice(0, m.index) + tokens[Math.floor(r() * tokens.length)] + text.slice(m.index! + m[0].length);
        const len = Buffer.alloc(8);
        len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
        b = Buffer.concat([len, Buffer.from(json), b.subarray(8 + headerLen)]);
        break;
      }
      case 4: // a random header length
        b.writeBigUInt64LE(BigInt(Math.floor(r() * 2 ** 40)) * (r() < 0.5 ? 1n : 2n ** 23n), 0);
        break;
    }
    fs.writeFileSync(file, b);
    using f = SafetensorsFile.open(file);
    for (const n of f.names()) {
      const info = f.info(n);
      if (['F32', 'F16', 'BF16', 'F64'].includes(info.dtype)) f.readFloat32(n);
      else f.readInt32(n);
    }
  });
});

t.test('config parser and bounds', async (t) => {
  const comps = [
    { file: 'unet/config.json', parse: parseUNetConfig, check: checkUNetConfig, layout: unetLayout },
    { file: 'vae/config.json', parse: parseVaeConfig, check: checkVaeConfig, layout: vaeLayout },
    { file: 'text_encoder/config.json', parse: parseTextConfig, check: checkTextConfig, layout: textLayout },
    { file: 'scheduler/scheduler_config.json', parse: parseSchedulerConfig, check: checkSchedulerConfig, layout: undefined },
  ] as const;
  const bases = comps.map((c) => readJsonFile(path.join(TINY_SD, c.file)));
  const values: unknown[] = [null, -1, 0, 1, 2.5, 1e5, 1e308, -1e308, 2 ** 53, 'silu', 'relu', '', [], [0], [1e9, 1], [8, 8, 8, 8], [32, 64], {}, { a: 1 }, true, 'CrossAttnDownBlock2D'];
  const file = path.join(tmp, 'config.json');
  fuzz(t, 'configs', CASES, (r, i) => {
    const c = comps[i % comps.length]!;
    const json: Record<string, unknown> = structuredClone(bases[i % comps.length]!);
    const keys = Object.keys(json);
    for (let k = 1 + Math.floor(r() * 3); k > 0; k--) {
      const key = keys[Math.floor(r() * keys.length)]!;
      if (r() < 0.15) delete json[key];
      else json[key] = values[Math.floor(r() * values.length)];
    }
    let text = JSON.stringify(json);
    if (i % 7 === 0) {
      // Textual damage too: duplicate keys, cut-off text, stray bytes.
      const cut = Math.floor(r() * text.length);
      text = r() < 0.5 ? text.slice(0, cut) + text.slice(cut).replace(/"(\w+)":/, '"$1": 1, "$1":') : text.slice(0, cut) + '\u0000\uffff' + text.slice(cut);
    }
    fs.writeFileSync(file, text);
    const cfg = c.parse(readJsonFile(file), file) as never;
    c.check(cfg);
    // Anything that passes the bounds builds its layout at once (bounded by construction).
    if (c.layout) (c.layout as (x: never) => unknown[])(cfg);
  });
});
