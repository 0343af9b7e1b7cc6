import { afterEach, describe, expect, it, vi } from 'vitest';
import type { StreamMessage } from '../api/types';
import { StreamClient } from './stream';

describe('the stream client', () => {
  afterEach(() => vi.unstubAllGlobals());

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

  it('asks for batched frames and applies a batch as one update, in order, without duplicates', () => {
    const sockets = fakeSockets();
    const frames: (() => void)[] = [];
    const c = new StreamClient('ws://x', 't', (f) => frames.push(f));
    c.start();
    sockets[0].open();
    const got: StreamMessage[][] = [];
    c.subscribe({ stream: 'progress', target: { job: 'j' }, kinds: ['log'] }, (b) => got.push(b));
    expect(JSON.parse(sockets[0].sent[0])).toMatchObject({ op: 'subscribe', id: 's1', batch: true });
    c.receive(batch('s1', 'progress', [1, 2, 3]));
    // A single frame between batches, then a batch overlapping what came.
    c.receive(JSON.stringify({ type: 'message', sub: 's1', stream: 'progress', ...item(4) }));
    c.receive(batch('s1', 'progress', [3, 4, 5, 6]));
    c.receive(batch('s1', 'progress', Array.from({ length: 994 }, (_, i) => i + 7)));
    expect(c.received).toBe(4);
    expect(frames.length).toBe(1);
    frames[0]();
    expect(got.length).toBe(1);
    expect(got[0].map((m) => m.seq)).toEqual(Array.from({ length: 1000 }, (_, i) => i + 1));
    expect(got[0][4]).toEqual({ type: 'message', sub: 's1', stream: 'progress', ...item(5) });
    // A batch of nothing new schedules no update.
    c.receive(batch('s1', 'progress', [999, 1000]));
    expect(frames.length).toBe(1);
    c.stop();
  });

  it('resumes a batched subscription after the last message of the last batch', () => {
    vi.useFakeTimers();
    try {
      const sockets = fakeSockets();
      const c = new StreamClient('ws://x', 't', (f) => f());
      c.start();
      sockets[0].open();
      c.subscribe({ stream: 'events', target: 'all', from: 'beginning' }, () => {});
      c.receive(batch('s1', 'events', [7, 9]));
      // Cut off as too slow: the client reconnects and asks for what follows.
      sockets[0].onclose?.({ code: 4008 });
      vi.advanceTimersByTime(1000);
      expect(sockets.length).toBe(2);
      sockets[1].open();
      expect(JSON.parse(sockets[1].sent[0])).toMatchObject({ op: 'subscribe', id: 's1', from: { seq: 10 }, batch: true });
      c.stop();
    } finally {
      vi.useRealTimers();
    }
  });

  it('ignores garbage and messages of unknown subscriptions', () => {
    const frames: (() => void)[] = [];
    const c = new StreamClient('ws://x', 't', (f) => frames.push(f));
    c.receive('not json');
    c.receive(JSON.stringify({ type: 'message', sub: 'nope', stream: 'events', seq: 1, subject_kind: 'x', data: {} }));
    c.receive(JSON.stringify({ type: 'messages', sub: 'nope', stream: 'events', items: [{ seq: 1, subject_kind: 'x', data: {} }] }));
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

const item = (seq: number) => ({ seq, subject_kind: 'log', data: { line: `L${seq}` } });

/** A `messages` frame of subscription `sub`. */
function batch(sub: string, stream: string, seqs: number[]): string {
  return JSON.stringify({ type: 'messages', sub, stream, items: seqs.map(item) });
}

type FakeSocket = {
  sent: string[];
  readyState: number;
  onopen?: () => void;
  onclose?: (ev: { code: number }) => void;
  onmessage?: (ev: { data: string }) => void;
  open: () => void;
};

/** Replaces the global WebSocket with one that records what is sent;
 *  returns the sockets made, in order. */
function fakeSockets(): FakeSocket[] {
  const made: FakeSocket[] = [];
  class Fake {
    static OPEN = 1;
    sent: string[] = [];
    readyState = 0;
    onopen?: () => void;
    constructor() {
      made.push(this as unknown as FakeSocket);
    }
    send(t: string) {
      this.sent.push(t);
    }
    close() {
      this.readyState = 3;
    }
    open() {
      this.readyState = 1;
      this.onopen?.();
    }
  }
  vi.stubGlobal('WebSocket', Fake);
  return made;
}
