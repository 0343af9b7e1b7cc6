import { describe, expect, it } from 'vitest';
import type { StreamMessage } from '../api/types';
import { StreamClient } from './stream';

describe('the stream client', () => {
  it('hands messages over once per frame, in order, without duplicates', () => {
    const frames: (() => void)[] = [];
    const c = new StreamClient('ws://x', 't', (f) => frames.push(f));
    const got: StreamMessage[][] = [];
    c.subscribe({ stream: 'events', target: 'all' }, (b) => got.push(b));
    const msg = (seq: number) => JSON.stringify({ type: 'message', sub: 's1', stream: 'events', seq, subject_kind: 'job_started', data: {} });
    for (let i = 1; i <= 1000; i++) c.receive(msg(i));
    c.receive(msg(500)); // a replayed duplicate
    expect(frames.length).toBe(1);
    frames[0]();
    expect(got.length).toBe(1);
    expect(got[0].map((m) => m.seq)).toEqual(Array.from({ length: 1000 }, (_, i) => i + 1));
  });

  it('ignores garbage and messages of unknown subscriptions', () => {
    const frames: (() => void)[] = [];
    const c = new StreamClient('ws://x', 't', (f) => frames.push(f));
    c.receive('not json');
    c.receive(JSON.stringify({ type: 'message', sub: 'nope', stream: 'events', seq: 1, subject_kind: 'x', data: {} }));
    expect(frames.length).toBe(0);
  });

  it('reports a refused subscription', () => {
    const c = new StreamClient('ws://x', 't', () => {});
    let code = '';
    c.subscribe({ stream: 'progress', target: { job: 'j' }, kinds: ['log'] }, () => {}, (c2) => (code = c2));
    c.receive(JSON.stringify({ type: 'error', id: 's1', code: 'forbidden', message: 'no logs' }));
    expect(code).toBe('forbidden');
  });
});
