// Test fixtures shared by the job list's unit tests (jobs.test.ts,
// live.test.ts): a job event as the stream delivers it, and a listed row.
// Nothing in the app imports this file, so it is not in the bundle.
import type { StreamMessage } from '../api/types';
import type { EventData, Row } from './jobs';

export const JOB_ID = '01a22d0a-04a1-7287-8ac2-c06a1fe0fd85';

export function jobEvent(seq: number, type: string, id: string, payload: Record<string, unknown> = {}): StreamMessage {
  const data: EventData = { aggregate_kind: 'job', aggregate_id: id, type, occurred_at: '2026-11-30T12:00:00Z', payload };
  return { type: 'message', sub: 's1', stream: 'events', seq, subject_kind: type, data: data as never };
}

export const jobRow = (over: Partial<Row> = {}): Row =>
  ({
    id: JOB_ID,
    state: 'queued',
    attempt: 0,
    created_at: '2026-11-30T11:00:00Z',
    exit_code: null,
    experiment: null,
    failure_class: null,
    metrics: {},
    pool: 'default',
    priority: 5,
    labels: [],
    seq: 1,
    finished_at: null,
    started_at: null,
    updated_at: null,
    ...over,
  }) as Row;
