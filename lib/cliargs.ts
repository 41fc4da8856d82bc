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
