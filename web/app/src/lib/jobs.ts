// The job list as the stream changes it: a pure reducer over the events of
// the `events` stream (docs/streams.md), so the list page can apply a burst
// of events in one step per animation frame and the logic is unit-tested.
import type { FailureClass, JobStatus, ListedJob, StreamMessage } from '../api/types';
import { JOB_STATES } from '../api/types';

export type Filters = {
  state?: JobStatus | '';
  owner?: string;
  pool?: string;
  experiment?: string;
  tag?: string;
  created_after?: string;
  created_before?: string;
};

/** A stored event as the stream hands it over (`message.data` of `events`). */
export type EventData = {
  aggregate_kind: string;
  aggregate_id: string;
  type: string;
  occurred_at: string;
  payload: Record<string, unknown>;
  actor?: unknown;
};

/** A live row: a listed job plus what only the stream tells (percent done). */
export type Row = ListedJob & { percent?: number | null; changed_at?: number };

export type JobsState = { order: string[]; byId: Record<string, Row> };

export function fromItems(items: ListedJob[]): JobsState {
  const byId: Record<string, Row> = {};
  for (const j of items) byId[j.id] = { ...j };
  return { order: items.map((j) => j.id), byId };
}

export function appendItems(s: JobsState, items: ListedJob[]): JobsState {
  const byId = { ...s.byId };
  const order = [...s.order];
  for (const j of items) {
    if (!byId[j.id]) order.push(j.id);
    byId[j.id] = { ...j };
  }
  return { order, byId };
}

function str(v: unknown): string | null {
  return typeof v === 'string' ? v : null;
}
function num(v: unknown): number | null {
  return typeof v === 'number' ? v : null;
}

const TERMINAL_EVENT: Record<string, JobStatus> = {
  job_succeeded: 'succeeded',
  job_failed: 'failed',
  job_timed_out: 'timed_out',
  job_dead_lettered: 'dead_lettered',
  job_cancelled: 'cancelled',
};

/** One event applied to one row (the row's own copy; the input is untouched). */
export function applyEvent(row: Row, ev: EventData, seq: number): Row {
  const p = ev.payload ?? {};
  const r: Row = { ...row, seq, changed_at: Date.now() };
  switch (ev.type) {
    case 'job_started':
      r.state = 'running';
      r.attempt = num(p.attempt) ?? r.attempt;
      if ('worker' in r || str(p.worker)) (r as { worker?: string | null }).worker = str(p.worker);
      (r as { started_at?: string | null }).started_at = ev.occurred_at;
      r.percent = null;
      break;
    case 'job_retry_scheduled':
      r.state = 'retry_scheduled';
      r.failure_class = (str(p.class) as FailureClass | null) ?? r.failure_class;
      if ('not_before' in r) (r as { not_before?: string | null }).not_before = str(p.not_before);
      break;
    case 'job_requeued':
      r.state = 'queued';
      break;
    default: {
      const terminal = TERMINAL_EVENT[ev.type];
      if (!terminal) return row;
      r.state = terminal;
      (r as { finished_at?: string | null }).finished_at = ev.occurred_at;
      if (ev.type === 'job_succeeded') r.percent = 100;
      if ('exit_code' in p) r.exit_code = num(p.exit_code);
      if (str(p.class)) r.failure_class = str(p.class) as FailureClass;
      if (p.metrics && typeof p.metrics === 'object') r.metrics = { ...r.metrics, ...(p.metrics as Row['metrics']) };
    }
  }
  return r;
}

/** A row for a job first seen on the stream (its `job_queued`). */
export function rowFromQueued(ev: EventData, seq: number): Row {
  const p = ev.payload ?? {};
  const spec = (p.spec ?? {}) as Record<string, unknown>;
  const row: Row = {
    id: ev.aggregate_id,
    state: 'queued',
    attempt: 0,
    created_at: ev.occurred_at,
    exit_code: null,
    experiment: str(spec.experiment),
    failure_class: null,
    metrics: {},
    pool: str(spec.pool) ?? 'default',
    priority: num(spec.priority) ?? 5,
    labels: Array.isArray(spec.labels) ? (spec.labels as string[]) : [],
    seq,
    finished_at: null,
    started_at: null,
    updated_at: ev.occurred_at,
    changed_at: Date.now(),
  } as Row;
  // What the caller may not see is not in the event either (the api redacts
  // analysts' events): only copy what is there.
  if (str(p.owner)) (row as { owner?: string | null }).owner = str(p.owner);
  if (spec.tags && typeof spec.tags === 'object') (row as { tags?: Record<string, string> | null }).tags = spec.tags as Record<string, string>;
  return row;
}

/** Whether a new job belongs in the list the filters select. */
export function matches(row: Row, f: Filters): boolean {
  if (f.state && row.state !== f.state) return false;
  if (f.pool && row.pool !== f.pool) return false;
  if (f.experiment && row.experiment !== f.experiment) return false;
  if (f.owner && (row as { owner?: string | null }).owner !== f.owner) return false;
  if (f.tag) {
    const [k, v] = f.tag.split('=');
    const tags = (row as { tags?: Record<string, string> | null }).tags ?? {};
    if (tags[k] !== v) return false;
  }
  if (f.created_after && Date.parse(row.created_at) < Date.parse(f.created_after)) return false;
  if (f.created_before && Date.parse(row.created_at) >= Date.parse(f.created_before)) return false;
  return true;
}

/**
 * A batch of stream messages applied to the list. Events of jobs in the list
 * change their rows; a `job_queued` that the filters select adds a row at the
 * top (newest first) when `addNew`; progress `percent` messages set percent.
 */
export function reduce(s: JobsState, batch: StreamMessage[], f: Filters, addNew: boolean): JobsState {
  let byId: Record<string, Row> | null = null;
  let added: string[] = [];
  const get = (id: string) => (byId ?? s.byId)[id];
  const set = (id: string, r: Row) => {
    if (!byId) byId = { ...s.byId };
    byId[id] = r;
  };
  for (const m of batch) {
    if (m.stream === 'progress') {
      const d = m.data as unknown as { job_id?: string; percent?: number };
      const row = d.job_id ? get(d.job_id) : undefined;
      if (row && typeof d.percent === 'number') set(row.id, { ...row, percent: d.percent });
      continue;
    }
    const ev = m.data as unknown as EventData;
    if (ev.aggregate_kind !== 'job') continue;
    const row = get(ev.aggregate_id);
    if (row) {
      // The list may already include this event (the read model and the
      // stream overlap at the seam): a row's seq is its last event's.
      if (m.seq <= row.seq) continue;
      set(row.id, applyEvent(row, ev, m.seq));
    } else if (ev.type === 'job_queued' && addNew) {
      const r = rowFromQueued(ev, m.seq);
      if (matches(r, f)) {
        set(r.id, r);
        added.push(r.id);
      }
    }
  }
  if (!byId) return s;
  // Newest first: the last queued of the batch goes on top.
  const order = added.length ? [...added.reverse(), ...s.order] : s.order;
  return { order, byId };
}

export function countByState(rows: Iterable<{ state: JobStatus }>): Record<JobStatus, number> {
  const c = Object.fromEntries(JOB_STATES.map((st) => [st, 0])) as Record<JobStatus, number>;
  for (const r of rows) c[r.state] = (c[r.state] ?? 0) + 1;
  return c;
}
