import { useEffect, useState } from 'preact/hooks';
import { explain, request } from '../api/client';
import type { Worker, WorkerList } from '../api/types';
import { Empty, ErrorBox } from '../components/bits';
import { count, duration, when } from '../lib/format';
import { samples, type Sample } from '../lib/prom';

const EVERY_MS = 3000;

export function WorkersPage() {
  const [workers, setWorkers] = useState<Worker[] | null>(null);
  const [queues, setQueues] = useState<Sample[] | null>(null);
  const [oldest, setOldest] = useState<Sample[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [queueNote, setQueueNote] = useState<string | null>(null);
  useEffect(() => {
    let stop = false;
    const tick = async () => {
      try {
        const w = await request<WorkerList>('/v1/workers');
        if (!stop) {
          setWorkers(w.items);
          setError(null);
        }
      } catch (e) {
        if (!stop) setError(explain(e));
      }
      try {
        // Queue depth per pool and priority is published with the api's
        // Prometheus metrics (no credentials; off with api.metrics: false).
        const r = await fetch('/metrics', { credentials: 'omit' });
        if (!r.ok) throw new Error(String(r.status));
        const text = await r.text();
        if (!stop) {
          setQueues(samples(text, 'fetchml_queue_depth'));
          setOldest(samples(text, 'fetchml_queue_oldest_wait_seconds'));
          setQueueNote(null);
        }
      } catch {
        if (!stop) setQueueNote('Queue depth is unavailable: the api serves no /metrics (api.metrics is off).');
      }
    };
    void tick();
    const t = setInterval(tick, EVERY_MS);
    return () => {
      stop = true;
      clearInterval(t);
    };
  }, []);
  const waitOf = (q: Sample) =>
    oldest.find((o) => o.labels.pool === q.labels.pool && o.labels.priority === q.labels.priority)?.value;
  return (
    <section>
      <h1>Workers and pools</h1>
      <ErrorBox error={error} />
      <h2>Live workers</h2>
      {workers && workers.length === 0 && (
        <Empty>No worker is running. Start one with <code>fetchml worker --pool default</code>; it shows up within seconds.</Empty>
      )}
      {workers && workers.length > 0 && (
        <div class="tablewrap">
          <table data-testid="workers">
            <thead>
              <tr>
                <th scope="col">Worker</th>
                <th scope="col">Pool</th>
                <th scope="col">Labels</th>
                <th scope="col" class="num">
                  Running / concurrency
                </th>
                <th scope="col">Host</th>
                <th scope="col">Up since</th>
                <th scope="col">Last seen</th>
              </tr>
            </thead>
            <tbody>
              {workers.map((w) => (
                <tr key={w.id}>
                  <td class="mono small">
                    {w.id}
                    {w.draining && <span class="badge st-retry_scheduled">draining</span>}
                  </td>
                  <td>{w.pool}</td>
                  <td>{w.labels.join(', ') || '—'}</td>
                  <td class="num">
                    {w.running ?? 0} / {w.concurrency}
                  </td>
                  <td>
                    {w.host} <span class="muted small">pid {w.pid}</span>
                  </td>
                  <td>{when(w.started_at)}</td>
                  <td>{w.seen_at ? `${duration(Date.now() - Date.parse(w.seen_at))} ago` : '—'}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <h2>Queues</h2>
      {queueNote && <p class="muted">{queueNote}</p>}
      {queues && queues.length === 0 && <p class="muted">Nothing is waiting for a worker.</p>}
      {queues && queues.length > 0 && (
        <table data-testid="queues">
          <thead>
            <tr>
              <th scope="col">Pool</th>
              <th scope="col" class="num">
                Priority
              </th>
              <th scope="col" class="num">
                Waiting jobs
              </th>
              <th scope="col" class="num">
                Longest wait
              </th>
            </tr>
          </thead>
          <tbody>
            {[...queues]
              .sort((a, b) => a.labels.pool.localeCompare(b.labels.pool) || Number(b.labels.priority) - Number(a.labels.priority))
              .map((q) => (
                <tr key={`${q.labels.pool}/${q.labels.priority}`}>
                  <td>{q.labels.pool}</td>
                  <td class="num">{q.labels.priority}</td>
                  <td class="num">{count(q.value)}</td>
                  <td class="num">{duration((waitOf(q) ?? 0) * 1000)}</td>
                </tr>
              ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
