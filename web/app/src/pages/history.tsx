import { useEffect, useRef, useState } from 'preact/hooks';
import { useLocation } from 'preact-iso';
import { explain, qs, request } from '../api/client';
import type { AsOfPage, JobPage, ListedJob, Ready, StoredEvent } from '../api/types';
import { JOB_STATES } from '../api/types';
import { Empty, ErrorBox, StateBadge } from '../components/bits';
import { count, shortId, when } from '../lib/format';
import { asOfParams, formatHistory, parseHistory, step, visibleAt, type HistoryState } from '../lib/history';
import { countByState, fromItems, reduce, type JobsState } from '../lib/jobs';
import { useSession } from '../lib/session';
import { Timeline } from './job';

const LIMIT = 500;
const PLAY_EVERY_MS = 400;

/** The log as it was at any point: the job list, its counts by state and a
 *  chosen job's timeline; "Live" snaps back to the tail. The URL holds the point. */
export function HistoryPage() {
  const { can, stream } = useSession();
  const loc = useLocation();
  const search = loc.url.includes('?') ? loc.url.slice(loc.url.indexOf('?')) : '';
  const hs = parseHistory(search);
  const [last, setLast] = useState(0);
  const [jobs, setJobs] = useState<JobsState>({ order: [], byId: {} });
  const [total, setTotal] = useState<number | null>(null);
  const [asOfSeq, setAsOfSeq] = useState<number | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [playing, setPlaying] = useState(false);
  const [events, setEvents] = useState<(StoredEvent & { seq: number })[]>([]);
  const [loading, setLoading] = useState(false);
  const pointKey = JSON.stringify(hs.point);

  const go = (s: HistoryState) => loc.route(`/history${formatHistory(s)}`, true);

  // The log's last sequence: the slider's right end.
  useEffect(() => {
    const poll = () =>
      request<Ready>('/readyz', { token: null })
        .then((r) => setLast(r.last_seq))
        .catch(() => {});
    void poll();
    const t = setInterval(poll, 2000);
    return () => clearInterval(t);
  }, []);

  // The list at the point (debounced while the slider moves).
  useEffect(() => {
    let cancelled = false;
    let off: (() => void) | null = null;
    const t = setTimeout(async () => {
      setLoading(true);
      try {
        if (hs.point.kind === 'live') {
          const ready = await request<Ready>('/readyz', { token: null });
          const page = await request<JobPage>(
            `/v1/jobs${qs({ limit: LIMIT, after_seq: ready.last_seq > 0 ? ready.last_seq : undefined })}`,
          );
          if (cancelled) return;
          setJobs(fromItems(page.items));
          setTotal(null);
          setAsOfSeq(null);
          off = stream.subscribe(
            { stream: 'events', target: 'all', from: { seq: ready.last_seq + 1 } },
            (batch) => setJobs((s) => reduce(s, batch, {}, true)),
          );
        } else {
          const page = await request<AsOfPage>(`/v1/jobs${qs({ ...asOfParams(hs.point), limit: LIMIT })}`);
          if (cancelled) return;
          setJobs(fromItems(page.items));
          setTotal(page.total);
          setAsOfSeq(page.as_of_seq);
        }
        setError(null);
      } catch (e) {
        if (!cancelled) setError(explain(e));
      } finally {
        if (!cancelled) setLoading(false);
      }
    }, 120);
    return () => {
      cancelled = true;
      clearTimeout(t);
      off?.();
    };
  }, [pointKey]);

  // The chosen job's history, cut at the point when drawn. Read from the
  // stream (replayed from the beginning): it serves every role, redacted for
  // analysts, where GET /v1/jobs/{id}/events is for full readers only.
  useEffect(() => {
    setEvents([]);
    if (!hs.job) return;
    return stream.subscribe(
      { stream: 'events', target: { job: hs.job }, from: 'beginning' },
      (batch) => setEvents((ev) => [...ev, ...batch.map((m) => ({ ...(m.data as unknown as StoredEvent), seq: m.seq }))]),
      (_code, message) => setError(message),
    );
  }, [hs.job]);

  const position = hs.point.kind === 'seq' ? hs.point.seq : (asOfSeq ?? last);
  const positionRef = useRef(position);
  positionRef.current = position;

  useEffect(() => {
    if (!playing) return;
    const t = setInterval(() => {
      if (loading) return;
      if (positionRef.current >= last) {
        setPlaying(false);
        return;
      }
      go({ ...hs, point: step(hs.point, 1, last, positionRef.current) });
    }, PLAY_EVERY_MS);
    return () => clearInterval(t);
  }, [playing, last, loading, search]);

  const rows = jobs.order.map((id) => jobs.byId[id]).filter(Boolean) as ListedJob[];
  const counts = countByState(rows);
  const live = hs.point.kind === 'live';
  return (
    <section>
      <h1>History</h1>
      <p class="muted">
        Move through the event log: the job list and a job's timeline as they were at that point. Share the page's address
        to show someone the same moment.
      </p>
      <div class="scrubber" role="group" aria-label="point in time">
        <button type="button" onClick={() => go({ ...hs, point: step(hs.point, -1, last, position) })} disabled={position <= 1} aria-label="step back" data-testid="step-back">
          ◀
        </button>
        <button type="button" onClick={() => setPlaying(!playing)} aria-label={playing ? 'pause' : 'play'} data-testid="play">
          {playing ? '❚❚' : '▶'}
        </button>
        <button type="button" onClick={() => go({ ...hs, point: step(hs.point, 1, last, position) })} disabled={position >= last} aria-label="step forward" data-testid="step-forward">
          ▶▶
        </button>
        <input
          type="range"
          min={1}
          max={Math.max(1, last)}
          value={position}
          aria-label="sequence of the event log"
          aria-valuetext={`sequence ${position} of ${last}`}
          data-testid="slider"
          onInput={(e) => {
            setPlaying(false);
            go({ ...hs, point: { kind: 'seq', seq: Number((e.target as HTMLInputElement).value) } });
          }}
        />
        <span class="mono" data-testid="position">
          {live ? `live (seq ${last})` : `seq ${position} / ${last}`}
        </span>
        <label>
          at time{' '}
          <input
            type="datetime-local"
            step={1}
            aria-label="point in time"
            onChange={(e) => {
              const v = (e.target as HTMLInputElement).value;
              if (v) go({ ...hs, point: { kind: 'time', at: new Date(v).toISOString() } });
            }}
          />
        </label>
        <button type="button" class={live ? 'on' : ''} onClick={() => (setPlaying(false), go({ ...hs, point: { kind: 'live' } }))} data-testid="live">
          Live
        </button>
      </div>
      <ErrorBox error={error} />
      <ul class="counts" data-testid="counts">
        {JOB_STATES.filter((s) => counts[s] > 0).map((s) => (
          <li key={s}>
            <StateBadge state={s} /> {count(counts[s])}
          </li>
        ))}
        <li class="muted">
          {total !== null ? `${count(total)} jobs then` : `${count(rows.length)} jobs now`}
          {total !== null && total > rows.length ? ` (newest ${rows.length} listed)` : ''}
        </li>
      </ul>
      <div class="grid2">
        <div class="tablewrap">
          {rows.length === 0 && !loading ? (
            <Empty>No jobs {live ? 'yet' : 'at this point'}. Move the slider right to see later ones.</Empty>
          ) : (
            <table data-testid="history-jobs" aria-busy={loading}>
              <thead>
                <tr>
                  <th scope="col">Job</th>
                  <th scope="col">State</th>
                  <th scope="col" class="num">
                    Attempt
                  </th>
                  <th scope="col">Pool</th>
                  {can.full && <th scope="col">Owner</th>}
                  <th scope="col">Created</th>
                </tr>
              </thead>
              <tbody>
                {rows.map((r) => (
                  <tr key={r.id} data-job={r.id} data-state={r.state} class={hs.job === r.id ? 'sel' : ''}>
                    <td>
                      <a
                        class="mono"
                        href={`/history${formatHistory({ ...hs, job: r.id })}`}
                        onClick={(e) => {
                          e.preventDefault();
                          go({ ...hs, job: r.id });
                        }}
                      >
                        {shortId(r.id)}
                      </a>
                    </td>
                    <td>
                      <StateBadge state={r.state} />
                    </td>
                    <td class="num">{r.attempt}</td>
                    <td>{r.pool}</td>
                    {can.full && <td>{(r as { owner?: string | null }).owner ?? '—'}</td>}
                    <td>{when(r.created_at)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </div>
        <div>
          <h2>Timeline {hs.job && <span class="mono small">{shortId(hs.job)}</span>}</h2>
          {hs.job ? (
            <>
              <Timeline events={events.filter((e) => visibleAt(e.seq, hs.point, asOfSeq))} full={can.full} />
              <p>
                <a href={`/jobs/${hs.job}`}>Open the job</a>
              </p>
            </>
          ) : (
            <p class="muted">Pick a job in the list to see its timeline at this point.</p>
          )}
        </div>
      </div>
    </section>
  );
}
