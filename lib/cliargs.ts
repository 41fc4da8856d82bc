// Command-line values shared by the idforge subcommands (lib/cli.ts, lib/cli/*.ts, lib/eval/cli.ts,
// lib/dreamidentity/cli.ts): one number parser, one way to pass only the flags given (so that an option's
// default lives in the API it configures, not in each command), and flag tables: a command lists
// its flags once (name, argument, help, how the value enters the command's plan) and gets its
// parsing and its usage text from that list.
import { parseArgs } from 'node:util';
import { IdforgeError } from './errors.js';
import { invalid } from './validate.js';

/** A flag's number, or undefined when the flag is absent (E_ARGUMENT when it is not a number). */
export function num(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!v.trim() || !Number.isFinite(n)) throw invalid(`--${name}`, 'a number', v);
  return n;
}

/** `{ [k]: v }`, or nothing when v is undefined (spread into an options object). */
export const opt = <T>(k: string, v: T | undefined): Record<string, T> => (v === undefined ? {} : { [k]: v });

/** `--seed -1` → `--seed=-1`: parseArgs would read a negative number as an option. */
export function joinNegativeNumbers(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const next = args[i + 1];
    if (a.startsWith('--') && !a.includes('=') && next !== undefined && /^-\d/.test(next)) {
      out.push(`${a}=${next}`);
      i++;
    } else out.push(a);
  }
  return out;
}

/**
 * One flag of a command. `set` checks the value and records it in the command's plan; it runs
 * while the command line is read, before any model loads, once per occurrence (`multiple`).
 */
export interface Flag<P> {
  name: string;
  /** The value's placeholder in the usage text (e.g. 'N', 'FILE'); absent for a switch. */
  arg?: string;
  help: string;
  multiple?: boolean;
  set(plan: P, value: string | true): void;
}

/** Reads argv against a flag table into `plan`; returns the positional arguments and whether --help was given. */
export function readFlags<P>(argv: string[], flags: readonly Flag<P>[], plan: P, opts: { positionals?: boolean } = {}): { positionals: string[]; help: boolean } {
  const options: Record<string, { type: 'string' | 'boolean'; multiple: true }> = { help: { type: 'boolean', multiple: true } };
  // Every flag is read as a list, so that a repeated single flag is refused instead of the last one silently winning.
  for (const f of flags) options[f.name] = { type: f.arg ? 'string' : 'boolean', multiple: true };
  const { values, positionals } = parseArgs({ args: joinNegativeNumbers(argv), options, allowPositionals: opts.positionals ?? false, strict: true });
  if (values.help) return { positionals, help: true };
  for (const f of flags) {
    const v = values[f.name] as (string | boolean)[] | undefined;
    if (v === undefined) continue;
    if (v.length > 1 && !f.multiple) throw flagError(f.name, `was given ${v.length} times; it takes one value`);
    for (const one of v) f.set(plan, one === true ? true : String(one));
  }
  return { positionals, help: false };
}

/** The usage lines of a flag table: `  --name ARG   help`, aligned. */
export function flagUsage(flags: readonly Flag<unknown>[]): string {
  const left = flags.map((f) => `  --${f.name}${f.arg ? ` ${f.arg}` : ''}`);
  const w = Math.max(...left.map((l) => l.length)) + 2;
  return flags.map((f, i) => `${left[i]!.padEnd(w)}${f.help}${f.multiple ? ' (repeatable)' : ''}`).join('\n');
}

/** A command line that cannot work as written (E_ARGUMENT; the CLI exits with status 2, as for a usage error). */
export class UsageError extends IdforgeError {
  constructor(message: string) {
    super('E_ARGUMENT', message);
  }
}

/** E_ARGUMENT for a flag (`--name message`). */
export function flagError(name: string, msg: string): UsageError {
  return new UsageError(`--${name} ${msg}`);
}

/** A required flag that is missing. */
export function required<T>(v: T | undefined, name: string, command: string): T {
  if (v === undefined) throw new UsageError(`${command} needs --${name} (see idforge ${command} --help)`);
  return v;
}

/** A flag's integer (E_ARGUMENT when not an integer). */
export function int(v: string, name: string): number {
  const n = num(v, name)!;
  if (!Number.isSafeInteger(n)) throw flagError(name, `must be an integer, got '${v}'`);
  return n;
}

/** `--lora FILE[:scale]`: the scale is what follows the last ':' when it is a number (a Windows drive's ':' is not). */
export function loraArg(v: string): { path: string; scale: number } {
  const i = v.lastIndexOf(':');
  const tail = i > 0 ? v.slice(i + 1) : '';
  if (i > 0 && tail.trim() && Number.isFinite(Number(tail))) return { path: v.slice(0, i), scale: Number(tail) };
  if (!v) throw flagError('lora', 'needs a file (FILE or FILE:scale)');
  return { path: v, scale: 1 };
}
