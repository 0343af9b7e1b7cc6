import { describe, expect, it } from 'vitest';
import type { StreamMessage } from '../api/types';
import { JOB_ID, jobEvent, jobRow } from './fixtures';
import { countByState, fromItems, matches, reduce, type Row } from './jobs';

const ID = JOB_ID;
const ev = (seq: number, type: string, payload: Record<string, unknown> = {}, id = ID): StreamMessage =>
  jobEvent(seq, type, id, payload);

function queued(seq: number, id: string, spec: Record<string, unknown> = {}, owner?: string): StreamMessage {
  return ev(seq, 'job_queued', { spec: { pool: 'default', priority: 5, ...spec }, ...(owner ? { owner } : {}) }, id);
}

const row = jobRow;

describe('reduce', () => {
  it('moves a listed job through its lifecycle', () => {
    let s = fromItems([row()]);
    s = reduce(s, [ev(2, 'job_started', { attempt: 1, worker: 'w1' })], {}, true);
    expect(s.byId[ID].state).toBe('running');
    expect(s.byId[ID].attempt).toBe(1);
    s = reduce(s, [ev(3, 'job_succeeded', { attempt: 1, exit_code: 0, metrics: { loss: { value: 0.1, step: 9 } } })], {}, true);
    expect(s.byId[ID].state).toBe('succeeded');
    expect(s.byId[ID].exit_code).toBe(0);
    expect(s.byId[ID].metrics.loss.value).toBe(0.1);
    expect(s.byId[ID].percent).toBe(100);
  });

  it('skips events the list already includes (the seam between list and stream)', () => {
    const s = fromItems([row({ state: 'running', seq: 5 })]);
    const out = reduce(s, [ev(4, 'job_started', { attempt: 1 })], {}, true);
    expect(out).toBe(s);
  });

  it('adds a queued job on top when the filters select it, newest first', () => {
    const s = fromItems([row()]);
    const out = reduce(s, [queued(7, 'a', { pool: 'gpu' }), queued(8, 'b', { pool: 'gpu' }), queued(9, 'c', { pool: 'cpu' })], { pool: 'gpu' }, true);
    expect(out.order).toEqual(['b', 'a', ID]);
    expect(out.byId.a.pool).toBe('gpu');
  });

  it('does not add jobs when the page is not live', () => {
    const s = fromItems([]);
    expect(reduce(s, [queued(7, 'a')], {}, false).order).toEqual([]);
  });

  it('copies no owner into a row when the event has none (an analyst\'s stream)', () => {
    const out = reduce(fromItems([]), [queued(7, 'a')], {}, true);
    expect('owner' in out.byId.a).toBe(false);
    const full = reduce(fromItems([]), [queued(7, 'a', {}, 'alice')], {}, true);
    expect((full.byId.a as { owner?: string }).owner).toBe('alice');
  });

  it('sets percent from progress messages', () => {
    const s = fromItems([row({ state: 'running' })]);
    const m = { type: 'message', sub: 's2', stream: 'progress', seq: 40, subject_kind: 'percent', data: { job_id: ID, percent: 42 } } as unknown as StreamMessage;
    expect(reduce(s, [m], {}, true).byId[ID].percent).toBe(42);
  });

  it('ignores other aggregates and unknown event types', () => {
    const s = fromItems([row()]);
    const worker = { ...ev(3, 'worker_started'), data: { aggregate_kind: 'worker', aggregate_id: ID, type: 'worker_started', payload: {} } } as unknown as StreamMessage;
    expect(reduce(s, [worker], {}, true).byId[ID].state).toBe('queued');
    expect(reduce(s, [ev(3, 'job_something_new')], {}, true).byId[ID].state).toBe('queued');
  });

  it('applies a thousand events in one batch', () => {
    const items = Array.from({ length: 500 }, (_, i) => row({ id: `j${i}`, seq: i + 1 }));
    let s = fromItems(items);
    const batch = items.map((r, i) => ev(1000 + i, 'job_started', { attempt: 1 }, r.id));
    s = reduce(s, batch, {}, true);
    expect(countByState(Object.values(s.byId)).running).toBe(500);
  });
});

describe('matches', () => {
  it('selects by state, pool, experiment, owner, tag and time', () => {
    const r = row({ experiment: 'e1', owner: 'alice', tags: { team: 'vision' } } as Partial<Row>);
    expect(matches(r, {})).toBe(true);
    expect(matches(r, { state: 'running' })).toBe(false);
    expect(matches(r, { experiment: 'e1', owner: 'alice', tag: 'team=vision' })).toBe(true);
    expect(matches(r, { tag: 'team=nlp' })).toBe(false);
    expect(matches(r, { created_after: '2026-11-30T11:30:00Z' })).toBe(false);
    expect(matches(r, { created_before: '2026-11-30T11:30:00Z' })).toBe(true);
  });
});
