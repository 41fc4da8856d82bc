// Command-line values shared by the idforge subcommands (lib/cli.ts, lib/eval/cli.ts,
// lib/dreamidentity/cli.ts): one number parser and one way to pass only the flags given, so that an
// option's default lives in the API it configures, not in each command.
import { IdforgeError } from './errors.js';

/** A flag's number, or undefined when the flag is absent (E_ARGUMENT when it is not a number). */
export function num(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!v.trim() || !Number.isFinite(n)) throw new IdforgeError('E_ARGUMENT', `--${name} must be a number, got '${v}'`);
  return n;
}

/** `{ [k]: v }`, or nothing when v is undefined (spread into an options object). */
export const opt = <T>(k: string, v: T | undefined): Record<string, T> => (v === undefined ? {} : { [k]: v });

/** `--lora FILE[:scale]`: the scale is what follows the last ':' when it is a number (a Windows drive's ':' is not). */
export function loraArg(v: string): { path: string; scale: number } {
  const i = v.lastIndexOf(':');
  const tail = i > 0 ? v.slice(i + 1) : '';
  if (i > 0 && tail.trim() && Number.isFinite(Number(tail))) return { path: v.slice(0, i), scale: Number(tail) };
  if (!v) throw new IdforgeError('E_ARGUMENT', '--lora needs a file (FILE or FILE:scale)');
  return { path: v, scale: 1 };
}
