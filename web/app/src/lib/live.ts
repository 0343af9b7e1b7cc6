// The jobs page while it follows the log: new jobs wait in a buffer and join
// the table a few times a second instead of on every animation frame. Each
// insertion on top moves every row below it, so the browser lays the table out
// and repaints it again; at a thousand jobs a second that was most of the
// page's time (BENCHMARKS.md, "The web dashboard"). Rows already shown, and
// buffered ones, still change on every frame. Pure functions and a throttle
// with an injected clock, so the policy is unit-tested.
import type { StreamMessage } from '../api/types';
import { applyEvent, matches, rowFromQueued, type EventData, type Filters, type JobsState, type Row } from './jobs';

export type LiveJobs = JobsState & {
  /** New jobs not in the table yet, oldest first; their rows are in `pendingById`. */
  pending: string[];
  pendingById: Record<string, Row>;
  /** New jobs that fell out of a full buffer before they were shown. */
  dropped: number;
};

export function live(s: JobsState): LiveJobs {
  return { ...s, pending: [], pendingById: {}, dropped: 0 };
}

/** How many new jobs wait to be shown (the "N new jobs" bar). */
export function waiting(s: LiveJobs): number {
  return s.pending.length + s.dropped;
}

/**
 * A batch of stream messages applied. Shown and buffered rows change in place
 * (state, attempt, percent); a `job_queued` the filters select joins the
 * buffer, which keeps the newest `max` jobs: older ones are only counted
 * (`dropped`), as they would be pushed out of a table of `max` rows by the
 * newer ones when shown anyway. The shown part (`order`, `byId`) keeps its
 * identity when no shown row changed, so the table need not render.
 */
export function receive(s: LiveJobs, batch: StreamMessage[], f: Filters, max: number): LiveJobs {
  let byId: Record<string, Row> | null = null;
  let pendingById: Record<string, Row> | null = null;
  const added: string[] = [];
  const shown = (id: string) => (byId ?? s.byId)[id];
  const buffered = (id: string) => (pendingById ?? s.pendingById)[id];
  const set = (r: Row) => {
    if (shown(r.id)) {
      byId ??= { ...s.byId };
      byId[r.id] = r;
    } else {
      pendingById ??= { ...s.pendingById };
      pendingById[r.id] = r;
    }
  };
  for (const m of batch) {
    if (m.stream === 'progress') {
      const d = m.data as unknown as { job_id?: string; percent?: number };
      const row = d.job_id ? (shown(d.job_id) ?? buffered(d.job_id)) : undefined;
      if (row && typeof d.percent === 'number') set({ ...row, percent: d.percent });
      continue;
    }
    const ev = m.data as unknown as EventData;
    if (ev.aggregate_kind !== 'job') continue;
    const row = shown(ev.aggregate_id) ?? buffered(ev.aggregate_id);
    if (row) {
      // The list may already include this event (the read model and the
      // stream overlap at the seam): a row's seq is its last event's.
      if (m.seq > row.seq) set(applyEvent(row, ev, m.seq));
    } else if (ev.type === 'job_queued') {
      const r = rowFromQueued(ev, m.seq);
      if (matches(r, f)) {
        set(r);
        added.push(r.id);
      }
    }
  }
  if (!byId && !pendingById) return s;
  let pending = added.length ? s.pending.concat(added) : s.pending;
  let dropped = s.dropped;
  if (pending.length > max) {
    const gone = pending.slice(0, pending.length - max);
    pending = pending.slice(gone.length);
    pendingById ??= { ...s.pendingById };
    for (const id of gone) delete pendingById[id];
    dropped += gone.length;
  }
  return { order: s.order, byId: byId ?? s.byId, pending, pendingById: pendingById ?? s.pendingById, dropped };
}

/**
 * The buffer moved into the table, newest on top; the table keeps at most
 * `max` rows (the oldest make room). `trimmed` says jobs left the list this
 * way (shown rows pushed out, or buffered ones dropped): paging on from the
 * old cursor would skip them.
 */
export function reveal(s: LiveJobs, max: number): { state: LiveJobs; trimmed: boolean } {
  if (s.pending.length === 0 && s.dropped === 0) return { state: s, trimmed: false };
  const all = s.pending.slice().reverse().concat(s.order);
  const order = all.length > max ? all.slice(0, max) : all;
  const byId: Record<string, Row> = {};
  for (const id of order) byId[id] = s.byId[id] ?? s.pendingById[id];
  return {
    state: { order, byId, pending: [], pendingById: {}, dropped: 0 },
    trimmed: s.dropped > 0 || order.length < all.length,
  };
}

/**
 * Runs a task at most once every `intervalMs`: the first request after a
 * quiet spell at once (a lone new job shows without delay), the ones that
 * follow once, at the end of the interval, however many arrive meanwhile.
 */
export class Throttle {
  private last = -Infinity;
  private timer: unknown = null;

  constructor(
    private task: () => void,
    private intervalMs: number,
    private now: () => number = () => performance.now(),
    private later: (f: () => void, ms: number) => unknown = (f, ms) => setTimeout(f, ms),
    private cancelLater: (t: unknown) => void = (t) => clearTimeout(t as ReturnType<typeof setTimeout>),
  ) {}

  request() {
    if (this.timer !== null) return;
    const wait = this.last + this.intervalMs - this.now();
    if (wait <= 0) {
      this.run();
      return;
    }
    this.timer = this.later(() => {
      this.timer = null;
      this.run();
    }, wait);
  }

  cancel() {
    if (this.timer !== null) this.cancelLater(this.timer);
    this.timer = null;
  }

  private run() {
    this.last = this.now();
    this.task();
  }
}
