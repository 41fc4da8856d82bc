/**
 * Opening model files safely: only regular files are read (a FIFO would block a synchronous open or
 * read forever, a device never ends, a folder is not a file), and every failure is a typed error
 * saying what is actually wrong (a symlink loop is not "missing", a permission problem is not a
 * format problem). Plus a strict JSON reader that refuses duplicate keys.
 */
import * as fs from 'node:fs';
import { IdforgeError } from '../errors.js';

function kindOf(st: fs.Stats): string {
  if (st.isDirectory()) return 'a folder';
  if (st.isFIFO()) return 'a FIFO (named pipe)';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}

/** The typed error for a failed open/stat of `p` (what: e.g. 'safetensors file'). */
export function fileError(p: string, e: unknown, what = 'file'): IdforgeError {
  const code = (e as NodeJS.ErrnoException)?.code;
  switch (code) {
    case 'ENOENT':
      return new IdforgeError('E_NOT_FOUND', `${p}: no such ${what}${isLink(p) ? ' (a symbolic link to a missing target)' : ''}`, { cause: e });
    case 'ENOTDIR':
      return new IdforgeError('E_NOT_FOUND', `${p}: no such ${what} (a parent in the path is not a folder)`, { cause: e });
    case 'ELOOP':
      return new IdforgeError('E_MODEL_FORMAT', `${p}: symbolic link loop (too many levels of symbolic links)`, { cause: e });
    case 'EACCES':
    case 'EPERM':
      return new IdforgeError('E_MODEL_FORMAT', `${p}: permission denied (the ${what} is not readable by this process)`, { cause: e });
    case 'EISDIR':
      return new IdforgeError('E_MODEL_FORMAT', `${p}: is a folder, not a ${what}`, { cause: e });
    case 'ENXIO':
    case 'ENODEV':
      return new IdforgeError('E_MODEL_FORMAT', `${p}: is a device or socket, not a regular ${what}`, { cause: e });
    default:
      return new IdforgeError('E_MODEL_FORMAT', `${p}: cannot open the ${what} (${code ?? String(e)})`, { cause: e });
  }
}

function isLink(p: string): boolean {
  try {
    return fs.lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

/** True when something (even a broken or looping link) is at `p`: "missing" is then the wrong report. */
export function entryExists(p: string): boolean {
  try {
    fs.lstatSync(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * Opens `p` for reading only if it is a regular file: non-blocking (a FIFO opens at once instead of
 * waiting for a writer), then fstat on the descriptor itself (no race between check and use).
 * Returns the descriptor (the caller closes it) and the file size.
 */
export function openRegularFile(p: string, what = 'file'): { fd: number; size: number } {
  let fd: number;
  try {
    fd = fs.openSync(p, fs.constants.O_RDONLY | (fs.constants.O_NONBLOCK ?? 0));
  } catch (e) {
    throw fileError(p, e, what);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new IdforgeError('E_MODEL_FORMAT', `${p}: is ${kindOf(st)}, not a regular ${what}`);
    return { fd, size: st.size };
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/** Reads a whole regular file of at most `maxBytes` (refused past it: a config is never gigabytes). */
export function readRegularFile(p: string, maxBytes: number, what = 'file'): Buffer {
  const { fd, size } = openRegularFile(p, what);
  try {
    if (size > maxBytes) throw new IdforgeError('E_MODEL_FORMAT', `${p}: ${size} bytes, more than the ${maxBytes} a ${what} may have`);
    const buf = Buffer.alloc(size);
    let done = 0;
    while (done < size) {
      const n = fs.readSync(fd, buf, done, size - done, done);
      if (n <= 0) break;
      done += n;
    }
    return done === size ? buf : buf.subarray(0, done);
  } catch (e) {
    if (e instanceof IdforgeError) throw e;
    throw fileError(p, e, what);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The first key that appears twice in one object of a JSON text (already known to be valid JSON),
 * or undefined. JSON.parse silently keeps the last one; the safetensors spec forbids duplicates and
 * a config with two values for one key is ambiguous. One linear pass, no recursion.
 */
export function duplicateJsonKey(text: string): string | undefined {
  const stack: { keys: Set<string> | null; expectKey: boolean }[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      // The closing quote: the next one not escaped (an odd run of backslashes before it). indexOf
      // keeps megabyte strings (a base64 upload) at native speed.
      let j = text.indexOf('"', i + 1);
      while (j !== -1 && escaped(text, j)) j = text.indexOf('"', j + 1);
      if (j === -1) j = text.length;
      const top = stack[stack.length - 1];
      if (top?.keys && top.expectKey) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        if (top.keys.has(key)) return key;
        top.keys.add(key);
        top.expectKey = false;
      }
      i = j;
    } else if (c === 0x7b /* { */) stack.push({ keys: new Set(), expectKey: true });
    else if (c === 0x5b /* [ */) stack.push({ keys: null, expectKey: false });
    else if (c === 0x7d /* } */ || c === 0x5d /* ] */) stack.pop();
    else if (c === 0x2c /* , */) {
      const top = stack[stack.length - 1];
      if (top?.keys) top.expectKey = true;
    }
  }
  return undefined;
}

function escaped(text: string, quote: number): boolean {
  let n = 0;
  for (let k = quote - 1; k >= 0 && text.charCodeAt(k) === 0x5c; k--) n++;
  return n % 2 === 1;
}

/** JSON.parse that also refuses duplicate keys (E_MODEL_FORMAT naming `where`). */
export function parseStrictJson(text: string, where: string): unknown {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new IdforgeError('E_MODEL_FORMAT', `${where}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
  const dup = duplicateJsonKey(text);
  if (dup !== undefined) throw new IdforgeError('E_MODEL_FORMAT', `${where}: the key ${JSON.stringify(dup)} appears twice in one object`);
  return json;
}
