import { describe, expect, it } from 'vitest';
import type { StreamMessage } from '../api/types';
import { jobEvent, jobRow } from './fixtures';
import { fromItems, type Row } from './jobs';
import { Throttle, live, receive, reveal, waiting, type LiveJobs } from './live';

const ev = jobEvent;
const queued = (seq: number, id: string, pool = 'default') => ev(seq, 'job_queued', id, { spec: { pool, priority: 5 } });
const percent = (seq: number, id: string, p: number) =>
  ({ type: 'message', sub: 's2', stream: 'progress', seq, subject_kind: 'percent', data: { job_id: id, percent: p } }) as unknown as StreamMessage;

const row = (id: string, seq: number): Row => jobRow({ id, seq });

const listed = (...ids: string[]): LiveJobs => live(fromItems(ids.map((id, i) => row(id, i + 1))));

describe('new jobs while following', () => {
  it('wait in the buffer; the shown rows keep their identity', () => {
    const s = listed('old');
    const out = receive(s, [queued(10, 'a'), queued(11, 'b')], {}, 250);
    expect(out.order).toBe(s.order);
    expect(out.byId).toBe(s.byId);
    expect(out.pending).toEqual(['a', 'b']);
    expect(waiting(out)).toBe(2);
  });

  it('join the table newest first on reveal', () => {
    let s = receive(listed('old'), [queued(10, 'a'), queued(11, 'b')], {}, 250);
    s = receive(s, [queued(12, 'c')], {}, 250);
    const { state, trimmed } = reveal(s, 250);
    expect(state.order).toEqual(['c', 'b', 'a', 'old']);
    expect(state.byId.c.id).toBe('c');
    expect(waiting(state)).toBe(0);
    expect(trimmed).toBe(false);
  });

  it('change shown and waiting rows in place, and a change to a shown row renders', () => {
    let s = receive(listed('old'), [queued(10, 'a')], {}, 250);
    const before = s.byId;
    s = receive(s, [ev(11, 'job_started', 'a', { attempt: 1 }), percent(12, 'a', 40)], {}, 250);
    expect(s.byId).toBe(before);
    expect(s.pendingById.a.state).toBe('running');
    expect(s.pendingById.a.percent).toBe(40);
    s = receive(s, [ev(13, 'job_started', 'old', { attempt: 1 })], {}, 250);
    expect(s.byId).not.toBe(before);
    expect(s.byId.old.state).toBe('running');
    const shown = reveal(s, 250).state;
    expect(shown.byId.a.state).toBe('running');
    expect(shown.byId.a.percent).toBe(40);
  });

  it('skip events the list already includes and jobs the filters leave out', () => {
    const s = listed('old');
    expect(receive(s, [ev(1, 'job_started', 'old', { attempt: 1 })], {}, 250)).toBe(s);
    expect(receive(s, [queued(10, 'x', 'cpu')], { pool: 'gpu' }, 250)).toBe(s);
    expect(receive(s, [queued(10, 'x', 'gpu'), queued(10, 'x', 'gpu')], { pool: 'gpu' }, 250).pending).toEqual(['x']);
  });

  it('keep the newest `max` in the buffer and count the others', () => {
    const batch = Array.from({ length: 1000 }, (_, i) => queued(100 + i, `n${i}`));
    const s = receive(listed('old'), batch, {}, 250);
    expect(s.pending.length).toBe(250);
    expect(s.pending[0]).toBe('n750');
    expect(Object.keys(s.pendingById).length).toBe(250);
    expect(s.dropped).toBe(750);
    expect(waiting(s)).toBe(1000);
    const { state, trimmed } = reveal(s, 250);
    expect(state.order.length).toBe(250);
    expect(state.order[0]).toBe('n999');
    expect(state.order).not.toContain('old');
    expect(Object.keys(state.byId).length).toBe(250);
    expect(trimmed).toBe(true);
  });

  it('push the oldest shown rows out of a full table, and say so', () => {
    const s = receive(listed('o1', 'o2', 'o3'), [queued(10, 'a'), queued(11, 'b')], {}, 3);
    const { state, trimmed } = reveal(s, 3);
    expect(state.order).toEqual(['b', 'a', 'o1']);
    expect(state.byId.o3).toBeUndefined();
    expect(trimmed).toBe(true);
  });

  it('reveal with nothing waiting changes nothing', () => {
    const s = listed('old');
    expect(reveal(s, 250).state).toBe(s);
  });
});

describe('the reveal throttle', () => {
  function clock() {
    let now = 0;
    const timers: { at: number; f: () => void }[] = [];
    return {
      now: () => now,
      later: (f: () => void, ms: number) => {
        const t = { at: now + ms, f };
        timers.push(t);
        return t;
      },
      cancel: (t: unknown) => timers.splice(timers.indexOf(t as (typeof timers)[number]), 1),
      advance(ms: number) {
        now += ms;
        for (const t of timers.filter((x) => x.at <= now)) {
          timers.splice(timers.indexOf(t), 1);
          t.f();
        }
      },
      pending: () => timers.length,
    };
  }

  it('runs at once after a quiet spell, then at most once an interval', () => {
    const c = clock();
    let runs = 0;
    const t = new Throttle(() => runs++, 250, c.now, c.later, c.cancel);
    t.request();
    expect(runs).toBe(1);
    // A burst: sixty requests a second for one second.
    for (let i = 0; i < 60; i++) {
      c.advance(16);
      t.request();
    }
    expect(runs).toBeGreaterThanOrEqual(4);
    expect(runs).toBeLessThanOrEqual(5);
    // The last request is served at the end of its interval, not lost.
    c.advance(250);
    const after = runs;
    expect(c.pending()).toBe(0);
    c.advance(1000);
    expect(runs).toBe(after);
    // Quiet again: the next request runs at once.
    t.request();
    expect(runs).toBe(after + 1);
  });

  it('cancel drops a scheduled run', () => {
    const c = clock();
    let runs = 0;
    const t = new Throttle(() => runs++, 250, c.now, c.later, c.cancel);
    t.request();
    t.request();
    t.cancel();
    c.advance(1000);
    expect(runs).toBe(1);
  });
});
