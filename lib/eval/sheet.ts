/**
 * A contact sheet: images in a grid, each with a label (its number) drawn under it in a 5×7
 * pixel font, so that the PNG needs no font library and reads the same everywhere.
 */
import type { RawImage } from '../io/image.js';
import { invalid, shown } from '../validate.js';

// 5×7 glyphs, one string per row ('#' = ink).
const GLYPHS: Record<string, string[]> = {
  '0': ['.###.', '#...#', '#..##', '#.#.#', '##..#', '#...#', '.###.'],
  '1': ['..#..', '.##..', '..#..', '..#..', '..#..', '..#..', '.###.'],
  '2': ['.###.', '#...#', '....#', '...#.', '..#..', '.#...', '#####'],
  '3': ['####.', '....#', '....#', '.###.', '....#', '....#', '####.'],
  '4': ['...#.', '..##.', '.#.#.', '#..#.', '#####', '...#.', '...#.'],
  '5': ['#####', '#....', '####.', '....#', '....#', '#...#', '.###.'],
  '6': ['..##.', '.#...', '#....', '####.', '#...#', '#...#', '.###.'],
  '7': ['#####', '....#', '...#.', '..#..', '.#...', '.#...', '.#...'],
  '8': ['.###.', '#...#', '#...#', '.###.', '#...#', '#...#', '.###.'],
  '9': ['.###.', '#...#', '#...#', '.####', '....#', '...#.', '.##..'],
  R: ['####.', '#...#', '#...#', '####.', '#.#..', '#..#.', '#...#'],
  G: ['.###.', '#...#', '#....', '#.###', '#...#', '#...#', '.###.'],
  '-': ['.....', '.....', '.....', '#####', '.....', '.....', '.....'],
  ' ': ['.....', '.....', '.....', '.....', '.....', '.....', '.....'],
};

export interface SheetTile {
  /** null leaves the cell empty (to start a group on a new row). */
  image: RawImage | null;
  /** Digits, 'R', 'G', '-' and spaces. */
  label: string;
}

function blitScaled(dst: RawImage, src: RawImage, x0: number, y0: number, size: number): void {
  // Nearest neighbour into a size×size cell, aspect kept, centred: the pixels stay as generated.
  const s = Math.min(size / src.width, size / src.height);
  const w = Math.max(1, Math.round(src.width * s)), h = Math.max(1, Math.round(src.height * s));
  const ox = x0 + ((size - w) >> 1), oy = y0 + ((size - h) >> 1);
  for (let y = 0; y < h; y++) {
    const sy = Math.min(src.height - 1, Math.floor(y / s));
    for (let x = 0; x < w; x++) {
      const sx = Math.min(src.width - 1, Math.floor(x / s));
      const d = ((oy + y) * dst.width + ox + x) * 3, o = (sy * src.width + sx) * 3;
      dst.data[d] = src.data[o]!;
      dst.data[d + 1] = src.data[o + 1]!;
      dst.data[d + 2] = src.data[o + 2]!;
    }
  }
}

function drawText(dst: RawImage, text: string, cx: number, y0: number, scale: number): void {
  const w = text.length * 6 * scale - scale;
  let x0 = Math.round(cx - w / 2);
  for (const ch of text) {
    const g = GLYPHS[ch];
    if (!g) throw invalid('a contact sheet label character', 'one the sheet has a glyph for', ch);
    for (let gy = 0; gy < 7; gy++)
      for (let gx = 0; gx < 5; gx++) {
        if (g[gy]![gx] !== '#') continue;
        for (let dy = 0; dy < scale; dy++)
          for (let dx = 0; dx < scale; dx++) {
            const x = x0 + gx * scale + dx, y = y0 + gy * scale + dy;
            if (x < 0 || y < 0 || x >= dst.width || y >= dst.height) continue;
            dst.data.fill(0, (y * dst.width + x) * 3, (y * dst.width + x) * 3 + 3);
          }
      }
    x0 += 6 * scale;
  }
}

/** Tiles in rows of `columns`, each in a `cell`×`cell` square (scaled, aspect kept) over its label, on white. */
export function contactSheet(tiles: readonly SheetTile[], opts: { columns?: number; cell?: number } = {}): RawImage {
  if (tiles.length === 0) throw invalid('the contact sheet tiles', 'at least one image', shown('none'));
  const cell = opts.cell ?? 160;
  const columns = Math.max(1, Math.min(opts.columns ?? 8, tiles.length));
  const rows = Math.ceil(tiles.length / columns);
  const scale = Math.max(2, Math.round(cell / 64));
  const gap = 4 * scale;
  const labelH = 7 * scale + 2 * gap;
  const width = columns * (cell + gap) + gap;
  const height = rows * (cell + labelH) + gap;
  const sheet: RawImage = { width, height, channels: 3, data: new Uint8Array(width * height * 3).fill(255) };
  tiles.forEach((t, i) => {
    if (!t.image) return;
    const x = gap + (i % columns) * (cell + gap);
    const y = gap + Math.floor(i / columns) * (cell + labelH);
    blitScaled(sheet, t.image, x, y, cell);
    drawText(sheet, t.label, x + cell / 2, y + cell + gap, scale);
  });
  return sheet;
}
