// Which rows of a long table to put in the DOM: the ones on screen plus a
// margin, the rest stood in for by two spacer rows of the same height. The
// jobs page keeps up to 250 rows while following new jobs; laying out and
// painting all of them on each insertion cost ~90 ms a time on the test
// machine (BENCHMARKS.md), a window of the visible ones a fraction of that.

export type RowWindow = { start: number; end: number };

/**
 * The rows [start, end) to render. `top` is where row 0 starts relative to
 * the viewport's top (negative once scrolled past), `pitch` the height of a
 * row, `viewport` the viewport's height. The window reaches `overscan` rows
 * past each edge and its ends are rounded outwards to multiples of
 * `overscan`, so scrolling changes it once every `overscan` rows, not on
 * every pixel.
 */
export function rowWindow(count: number, pitch: number, top: number, viewport: number, overscan: number): RowWindow {
  if (count <= 0) return { start: 0, end: 0 };
  const step = Math.max(1, overscan);
  const p = pitch > 0 ? pitch : 1;
  const first = Math.floor(-top / p);
  // A table below the fold still renders its first rows (first paint, find).
  const last = Math.max(0, Math.ceil((viewport - top) / p));
  const start = Math.floor((first - overscan) / step) * step;
  const end = Math.ceil((last + overscan) / step) * step;
  const s = Math.min(Math.max(0, start), count);
  return { start: s, end: Math.min(Math.max(s, end), count) };
}

export function sameWindow(a: RowWindow, b: RowWindow): boolean {
  return a.start === b.start && a.end === b.end;
}
