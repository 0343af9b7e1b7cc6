import { describe, expect, it } from 'vitest';
import { asOfParams, formatHistory, parseHistory, step, visibleAt } from './history';

describe('the scrubber URL', () => {
  it('round-trips a sequence and a job', () => {
    const s = parseHistory('?seq=42&job=abc');
    expect(s).toEqual({ point: { kind: 'seq', seq: 42 }, job: 'abc' });
    expect(formatHistory(s)).toBe('?seq=42&job=abc');
  });

  it('reads a time as RFC 3339 in UTC', () => {
    const s = parseHistory('?at=2026-11-30T12:00:00%2B01:00');
    expect(s.point).toEqual({ kind: 'time', at: '2026-11-30T11:00:00.000Z' });
    expect(asOfParams(s.point)).toEqual({ as_of: '2026-11-30T11:00:00.000Z' });
  });

  it('is live without a valid point', () => {
    for (const q of ['', '?seq=0', '?seq=-3', '?seq=abc', '?at=yesterday']) expect(parseHistory(q).point).toEqual({ kind: 'live' });
    expect(formatHistory({ point: { kind: 'live' }, job: null })).toBe('');
    expect(asOfParams({ kind: 'live' })).toEqual({});
  });

  it('steps inside the log', () => {
    expect(step({ kind: 'seq', seq: 5 }, 1, 10, 0)).toEqual({ kind: 'seq', seq: 6 });
    expect(step({ kind: 'seq', seq: 10 }, 1, 10, 0)).toEqual({ kind: 'seq', seq: 10 });
    expect(step({ kind: 'seq', seq: 1 }, -1, 10, 0)).toEqual({ kind: 'seq', seq: 1 });
    // From live, a step back starts at the current end.
    expect(step({ kind: 'live' }, -1, 10, 10)).toEqual({ kind: 'seq', seq: 9 });
  });

  it('cuts a timeline at the point', () => {
    expect(visibleAt(5, { kind: 'seq', seq: 4 }, null)).toBe(false);
    expect(visibleAt(4, { kind: 'seq', seq: 4 }, null)).toBe(true);
    expect(visibleAt(9, { kind: 'time', at: 'x' }, 8)).toBe(false);
    expect(visibleAt(9, { kind: 'live' }, null)).toBe(true);
  });
});
