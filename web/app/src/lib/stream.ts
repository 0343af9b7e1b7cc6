// One WebSocket to GET /v1/stream for the whole page (docs/streams.md).
// Pages subscribe with a handler; messages are handed over in batches, once
// per animation frame, so a burst of a thousand events costs one render, not
// a thousand. Subscriptions ask the server for batched frames (`batch: true`):
// a frame then carries every message the server had ready for it, so a fast
// log costs one WebSocket event and one JSON parse per frame, not per line.
// A dropped connection is reopened and each subscription resumes from the
// sequence after the last one it received: no gap, no duplicate.
import type { StreamClientMessage, StreamFrom, StreamMessage, StreamServerMessage, StreamTarget } from '../api/types';

export type SubscribeSpec = {
  stream: 'events' | 'progress';
  target: StreamTarget;
  from?: StreamFrom;
  kinds?: string[];
};

type Sub = {
  id: string;
  spec: SubscribeSpec;
  handler: (batch: StreamMessage[]) => void;
  onError?: (code: string, message: string) => void;
  lastSeq: number | null;
};

export type StreamStatus = 'connecting' | 'open' | 'closed' | 'revoked';

type Scheduler = (f: () => void) => void;

const defaultScheduler: Scheduler =
  typeof requestAnimationFrame === 'function' ? (f) => requestAnimationFrame(() => f()) : (f) => setTimeout(f, 16);

export class StreamClient {
  private ws: WebSocket | null = null;
  private subs = new Map<string, Sub>();
  private pending = new Map<string, StreamMessage[]>();
  private flushScheduled = false;
  private next = 1;
  private retryMs = 500;
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private stopped = false;
  status: StreamStatus = 'connecting';
  onStatus: (s: StreamStatus) => void = () => {};
  /** Frames received, for the page's own measurements. */
  received = 0;

  constructor(
    private url: string,
    private token: string,
    private schedule: Scheduler = defaultScheduler,
  ) {}

  start() {
    this.stopped = false;
    this.open();
  }

  stop() {
    this.stopped = true;
    if (this.pingTimer) clearInterval(this.pingTimer);
    this.ws?.close(1000);
    this.ws = null;
  }

  subscribe(spec: SubscribeSpec, handler: Sub['handler'], onError?: Sub['onError']): () => void {
    const id = `s${this.next++}`;
    const sub: Sub = { id, spec, handler, onError, lastSeq: null };
    this.subs.set(id, sub);
    this.send(subscribeMessage(sub));
    return () => {
      this.subs.delete(id);
      this.pending.delete(id);
      this.send({ op: 'unsubscribe', id });
    };
  }

  private setStatus(s: StreamStatus) {
    this.status = s;
    this.onStatus(s);
  }

  private open() {
    this.setStatus('connecting');
    // Browsers cannot set Authorization on a WebSocket: the session token
    // goes as a subprotocol, next to the one the server selects.
    const ws = new WebSocket(this.url, ['fetchml.v1', `fetchml.bearer.${this.token}`]);
    this.ws = ws;
    ws.onopen = () => {
      this.retryMs = 500;
      this.setStatus('open');
      for (const sub of this.subs.values()) ws.send(JSON.stringify(subscribeMessage(sub)));
      if (this.pingTimer) clearInterval(this.pingTimer);
      this.pingTimer = setInterval(() => this.send({ op: 'ping' }), 25_000);
    };
    ws.onmessage = (ev) => this.receive(String(ev.data));
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.pingTimer) clearInterval(this.pingTimer);
      if (ev.code === 4001) {
        // The session was revoked or expired: no point in reconnecting.
        this.setStatus('revoked');
        return;
      }
      this.setStatus('closed');
      if (this.stopped) return;
      setTimeout(() => !this.stopped && this.open(), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, 10_000);
    };
  }

  private send(m: StreamClientMessage) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(m));
  }

  /** Exposed for tests: one frame as the server sent it. */
  receive(text: string) {
    let m: StreamServerMessage;
    try {
      m = JSON.parse(text) as StreamServerMessage;
    } catch {
      return;
    }
    this.received++;
    if (m.type === 'message') {
      this.take(m.sub, [m]);
    } else if (m.type === 'messages') {
      const { sub, stream } = m;
      this.take(
        sub,
        m.items.map((i) => ({ type: 'message', sub, stream, seq: i.seq, subject_kind: i.subject_kind, data: i.data })),
      );
    } else if (m.type === 'error' && m.id) {
      this.subs.get(m.id)?.onError?.(m.code, m.message);
    } else if (m.type === 'lagged') {
      // The server closes with 4008 next; the reconnect resumes from lastSeq + 1,
      // or from resume_from when nothing arrived yet.
      const sub = this.subs.get(m.sub);
      if (sub && sub.lastSeq === null) sub.lastSeq = m.resume_from - 1;
    }
  }

  /** Queues messages of one subscription for the next flush, in order. */
  private take(id: string, ms: StreamMessage[]) {
    const sub = this.subs.get(id);
    if (!sub) return;
    let q = this.pending.get(id);
    for (const m of ms) {
      // A resumed subscription may overlap by nothing, but guard anyway.
      if (sub.lastSeq !== null && m.seq <= sub.lastSeq) continue;
      sub.lastSeq = m.seq;
      if (!q) this.pending.set(id, (q = []));
      q.push(m);
    }
    if (q && !this.flushScheduled) {
      this.flushScheduled = true;
      this.schedule(() => this.flush());
    }
  }

  flush() {
    this.flushScheduled = false;
    const batches = this.pending;
    this.pending = new Map();
    for (const [id, batch] of batches) this.subs.get(id)?.handler(batch);
  }
}

function subscribeMessage(sub: Sub): StreamClientMessage {
  const from: StreamFrom = sub.lastSeq !== null ? { seq: sub.lastSeq + 1 } : (sub.spec.from ?? 'live');
  const m: StreamClientMessage = {
    op: 'subscribe',
    id: sub.id,
    stream: sub.spec.stream,
    target: sub.spec.target,
    from,
    batch: true,
  };
  if (sub.spec.kinds) (m as { kinds?: string[] }).kinds = sub.spec.kinds;
  return m;
}

export function streamUrl(): string {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.host}/v1/stream`;
}
