// Which prebuilt platform package serves this machine: @idforge/<os>[musl]-<cpu>, the names the
// main package lists in optionalDependencies and scripts/platform-package.mjs builds.
export const PLATFORM_SCOPE = '@idforge';

/** Every platform a package can be built for (scripts/platform-package.mjs on that platform). */
export const PLATFORMS: readonly { key: string; os: string; cpu: string; libc?: 'glibc' | 'musl' }[] = [
  { key: 'linux-x64', os: 'linux', cpu: 'x64', libc: 'glibc' },
  { key: 'linux-arm64', os: 'linux', cpu: 'arm64', libc: 'glibc' },
  { key: 'linuxmusl-x64', os: 'linux', cpu: 'x64', libc: 'musl' },
  { key: 'darwin-arm64', os: 'darwin', cpu: 'arm64' },
  { key: 'win32-x64', os: 'win32', cpu: 'x64' },
];

/** glibc or musl on Linux (the process report names the glibc it runs on), undefined elsewhere. */
export function libc(): 'glibc' | 'musl' | undefined {
  if (process.platform !== 'linux') return undefined;
  const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
  return header?.glibcVersionRuntime ? 'glibc' : 'musl';
}

/** This machine's platform key, e.g. 'linux-x64' or 'linuxmusl-x64'. */
export function platformKey(): string {
  return `${process.platform}${libc() === 'musl' ? 'musl' : ''}-${process.arch}`;
}

export const platformPackage = (key = platformKey()): string => `${PLATFORM_SCOPE}/${key}`;

/**
 * The published package's optionalDependencies: the repository's own (the face models' packages)
 * and every platform package at this version. Added at pack time (scripts/pack.mjs), not in the
 * repository's package.json: until they are published, `npm ci` would refuse a lockfile without them.
 */
export function packedOptionalDependencies(optional: Record<string, string> | undefined, version: string): Record<string, string> {
  return { ...optional, ...Object.fromEntries(PLATFORMS.map((p) => [platformPackage(p.key), version])) };
}
