// The history scrubber's point in time, held in the URL so a link shows the
// same moment: `?seq=N` (a sequence of the event log) or `?at=TIME` (RFC 3339),
// plus the chosen job `&job=ID`. No point means live.

export type Point = { kind: 'live' } | { kind: 'seq'; seq: number } | { kind: 'time'; at: string };

export type HistoryState = { point: Point; job: string | null };

export function parseHistory(search: string): HistoryState {
  const q = new URLSearchParams(search);
  const job = q.get('job') || null;
  const seqText = q.get('seq');
  if (seqText !== null && /^\d+$/.test(seqText) && Number(seqText) >= 1) {
    return { point: { kind: 'seq', seq: Number(seqText) }, job };
  }
  const at = q.get('at');
  if (at && !Number.isNaN(Date.parse(at))) return { point: { kind: 'time', at: new Date(at).toISOString() }, job };
  return { point: { kind: 'live' }, job };
}

export function formatHistory(s: HistoryState): string {
  const q = new URLSearchParams();
  if (s.point.kind === 'seq') q.set('seq', String(s.point.seq));
  if (s.point.kind === 'time') q.set('at', s.point.at);
  if (s.job) q.set('job', s.job);
  const t = q.toString();
  return t ? `?${t}` : '';
}

/** The list query for a point: `as_of_seq` / `as_of`, or nothing for live. */
export function asOfParams(p: Point): Record<string, string | number> {
  if (p.kind === 'seq') return { as_of_seq: p.seq };
  if (p.kind === 'time') return { as_of: p.at };
  return {};
}

/** One step of the scrubber, kept inside [1, last]. */
export function step(p: Point, by: number, last: number, current: number): Point {
  const from = p.kind === 'seq' ? p.seq : current;
  const seq = Math.max(1, Math.min(last, from + by));
  return { kind: 'seq', seq };
}

/** Whether an event of the log is part of the past at `seq` (for a job's timeline). */
export function visibleAt(eventSeq: number, p: Point, asOfSeq: number | null): boolean {
  if (p.kind === 'live') return true;
  const upto = p.kind === 'seq' ? p.seq : asOfSeq;
  return upto === null ? true : eventSeq <= upto;
}
