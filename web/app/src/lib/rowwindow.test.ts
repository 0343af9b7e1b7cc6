import { describe, expect, it } from 'vitest';
import { rowWindow, sameWindow } from './rowwindow';

describe('the rows on screen', () => {
  it('at the top: the rows that fit and a margin, rounded to the margin', () => {
    // Row 0 starts 200 px down a 768 px viewport, 33 px a row: rows 0-17 show.
    expect(rowWindow(250, 33, 200, 768, 10)).toEqual({ start: 0, end: 30 });
  });

  it('scrolled down: a margin on both sides', () => {
    // Row 0 is 3 300 px above the viewport: row 100 is at its top.
    const w = rowWindow(250, 33, -3300, 768, 10);
    expect(w.start).toBeLessThanOrEqual(90);
    expect(w.end).toBeGreaterThanOrEqual(100 + Math.ceil(768 / 33) + 10);
    expect(w).toEqual({ start: 90, end: 140 });
  });

  it('changes only once every margin of rows while scrolling', () => {
    const seen = new Set<string>();
    for (let y = 0; y < 33 * 10; y++) seen.add(JSON.stringify(rowWindow(250, 33, -3300 - y, 768, 10)));
    expect(seen.size).toBe(2);
  });

  it('never reaches past the list', () => {
    expect(rowWindow(5, 33, 200, 768, 10)).toEqual({ start: 0, end: 5 });
    expect(rowWindow(250, 33, -33 * 245, 768, 10)).toEqual({ start: 230, end: 250 });
    expect(rowWindow(250, 33, -33 * 1000, 768, 10)).toEqual({ start: 250, end: 250 });
    expect(rowWindow(0, 33, 0, 768, 10)).toEqual({ start: 0, end: 0 });
  });

  it('a table below the fold still renders its first rows', () => {
    expect(rowWindow(250, 33, 2000, 768, 10)).toEqual({ start: 0, end: 10 });
  });

  it('compares windows by their ends', () => {
    expect(sameWindow({ start: 0, end: 30 }, { start: 0, end: 30 })).toBe(true);
    expect(sameWindow({ start: 0, end: 30 }, { start: 10, end: 30 })).toBe(false);
  });
});
