import { describe, expect, it } from 'vitest';
import { toBlocks } from './logs';

const lines = (seqs: number[]) => seqs.map((seq) => ({ seq, line: `l${seq}` }));

describe('log blocks', () => {
  it('cuts on sequence hundreds, so a full block stays the same frame after frame', () => {
    const a = toBlocks(lines([150, 199, 200, 201, 299, 300]));
    expect(a.map((b) => b.map((l) => l.seq))).toEqual([[150, 199], [200, 201, 299], [300]]);
    // The window moves on by two lines: the middle block is unchanged.
    const b = toBlocks(lines([199, 200, 201, 299, 300, 301]));
    expect(b.map((x) => x.map((l) => l.seq))).toEqual([[199], [200, 201, 299], [300, 301]]);
    expect(toBlocks([])).toEqual([]);
  });

  it('keeps every line in order, however sparse the sequences', () => {
    const seqs = Array.from({ length: 1000 }, (_, i) => i * 7 + 3);
    const blocks = toBlocks(lines(seqs));
    expect(blocks.flat().map((l) => l.seq)).toEqual(seqs);
    expect(Math.max(...blocks.map((b) => b.length))).toBeLessThanOrEqual(100);
  });
});
