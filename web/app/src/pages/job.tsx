import { memo } from 'preact/compat';
import { useEffect, useLayoutEffect, useMemo, useRef, useState } from 'preact/hooks';
import { explain, fetchText, request } from '../api/client';
import type { CommandAccepted, JobAnswer, ProgressLog, ProgressMetric, ProgressPercent, StoredEvent } from '../api/types';
import { RETRYABLE, TERMINAL, isFullView } from '../api/types';
import { ErrorBox, ProgressBar, StateBadge } from '../components/bits';
import { LineChart, type Series } from '../components/chart';
import { duration, metric, runTime, when } from '../lib/format';
import { useSession } from '../lib/session';
import { toBlocks } from '../lib/logs';

/** Lines kept in memory; the view shows the newest of them (the box shows
 *  about 25 at a time: rendering more only costs layout per frame while a
 *  fast log is followed; Download has the whole log). */
const MAX_LINES = 50_000;
const SHOWN_LINES = 400;

type Line = ProgressLog & { seq: number };

export function JobPage({ id }: { id: string }) {
  const { can, stream } = useSession();
  const [job, setJob] = useState<JobAnswer | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [events, setEvents] = useState<(StoredEvent & { seq: number })[]>([]);
  const [percent, setPercent] = useState<number | null>(null);
  const [metrics, setMetrics] = useState<Record<string, Series>>({});
  const lines = useRef<Line[]>([]);
  // New lines re-render the log view only, not the whole page (at thousands
  // of lines a second the page's charts and timeline would re-render per frame).
  const linesChanged = useRef(new Set<() => void>());
  const [reload, setReload] = useState(0);

  const fetchJob = () =>
    request<JobAnswer>(`/v1/jobs/${id}`)
      .then((j) => {
        setJob(j);
        setError(null);
      })
      .catch((e) => setError(explain(e)));

  useEffect(() => {
    setJob(null);
    setEvents([]);
    setMetrics({});
    setPercent(null);
    lines.current = [];
    void fetchJob();
    const offEvents = stream.subscribe({ stream: 'events', target: { job: id }, from: 'beginning' }, (batch) => {
      setEvents((ev) => [...ev, ...batch.map((m) => ({ ...(m.data as unknown as StoredEvent), seq: m.seq }))]);
      // The folded view (state, exit code, metrics) changes with each event.
      void fetchJob();
    });
    const kinds = can.logs ? ['log', 'metric', 'percent'] : ['metric', 'percent'];
    const offProgress = stream.subscribe({ stream: 'progress', target: { job: id }, kinds, from: 'beginning' }, (batch) => {
      let newLines = false;
      let newMetrics: Record<string, Series> | null = null;
      for (const m of batch) {
        if (m.subject_kind === 'log') {
          lines.current.push({ ...(m.data as unknown as ProgressLog), seq: m.seq });
          newLines = true;
        } else if (m.subject_kind === 'percent') {
          setPercent((m.data as unknown as ProgressPercent).percent);
        } else if (m.subject_kind === 'metric') {
          const d = m.data as unknown as ProgressMetric;
          newMetrics ??= {};
          const prev = newMetrics[d.name];
          const s = prev ?? { label: d.name, xs: [], ys: [] };
          newMetrics[d.name] = s;
          s.xs.push(d.step ?? s.xs.length);
          s.ys.push(d.value);
        }
      }
      if (newLines) {
        if (lines.current.length > MAX_LINES) lines.current.splice(0, lines.current.length - MAX_LINES);
        linesChanged.current.forEach((f) => f());
      }
      if (newMetrics) {
        const add = newMetrics;
        setMetrics((old) => {
          const out = { ...old };
          for (const [name, s] of Object.entries(add)) {
            const o = out[name];
            out[name] = o ? { label: name, xs: [...o.xs, ...s.xs], ys: [...o.ys, ...s.ys] } : s;
          }
          return out;
        });
      }
    });
    return () => {
      offEvents();
      offProgress();
    };
  }, [id, reload]);

  if (error && !job) {
    return (
      <section>
        <h1>Job</h1>
        <ErrorBox error={error} retry={() => setReload((n) => n + 1)} />
        <p>
          Back to the <a href="/jobs">job list</a>.
        </p>
      </section>
    );
  }
  if (!job) return <p class="muted">Loading job…</p>;

  const full = isFullView(job);
  const shownPercent = job.state === 'succeeded' ? 100 : percent;
  return (
    <section class="job">
      <h1>
        Job <span class="mono small">{job.id}</span> <StateBadge state={job.state} />
      </h1>
      <ErrorBox error={error} />
      <Commands id={job.id} state={job.state} />
      <div class="grid2">
        <dl class="facts">
          <dt>Progress</dt>
          <dd data-testid="progress">
            <ProgressBar value={shownPercent} state={job.state} />
          </dd>
          <dt>Attempt</dt>
          <dd>{job.attempt}</dd>
          {full && (
            <>
              <dt>Owner</dt>
              <dd>{job.owner}</dd>
            </>
          )}
          <dt>Pool</dt>
          <dd>{full ? job.spec.pool : job.pool}</dd>
          <dt>Experiment</dt>
          <dd>{(full ? job.spec.experiment : job.experiment) ?? '—'}</dd>
          <dt>Created</dt>
          <dd>{when(job.created_at)}</dd>
          <dt>Started</dt>
          <dd>{when(job.started_at)}</dd>
          <dt>Finished</dt>
          <dd>{when(job.finished_at)}</dd>
          <dt>Run time</dt>
          <dd>{runTime(job.started_at, job.finished_at)}</dd>
          <dt>Exit code</dt>
          <dd>{job.exit_code ?? '—'}</dd>
          {job.failure_class && (
            <>
              <dt>Failure class</dt>
              <dd>{job.failure_class}</dd>
            </>
          )}
          {full && job.reason && (
            <>
              <dt>Reason</dt>
              <dd>{job.reason}</dd>
            </>
          )}
        </dl>
        {full && <Spec job={job} />}
      </div>
      <h2>Metrics</h2>
      {Object.keys(metrics).length === 0 ? (
        <p class="muted">
          No metrics yet. A job reports one by printing <code>##fetchml {'{"metric": "loss", "value": 0.3, "step": 1}'}</code>.
        </p>
      ) : (
        <div class="charts">
          {Object.values(metrics).map((s) => (
            <LineChart key={s.label} title={s.label} series={[s]} />
          ))}
        </div>
      )}
      {Object.keys(job.metrics).length > 0 && (
        <p class="small muted">
          Last recorded:{' '}
          {Object.entries(job.metrics)
            .map(([k, m]) => `${k} = ${metric(m.value)}${m.step !== null && m.step !== undefined ? ` (step ${m.step})` : ''}`)
            .join(', ')}
        </p>
      )}
      <h2>Timeline</h2>
      <Timeline events={events} full={full} />
      {can.logs && full && <Logs lines={lines} changed={linesChanged.current} jobId={job.id} />}
    </section>
  );
}

function Commands({ id, state }: { id: string; state: JobAnswer['state'] }) {
  const { can } = useSession();
  const [confirm, setConfirm] = useState<'cancel' | 'retry' | null>(null);
  const [result, setResult] = useState<string | null>(null);
  const canCancel = can.cancel && !TERMINAL.has(state);
  const canRetry = can.retry && RETRYABLE.has(state);
  if (!canCancel && !canRetry && !result) return null;
  const run = async (a: 'cancel' | 'retry') => {
    try {
      const r = await request<CommandAccepted>(`/v1/jobs/${id}/${a}`, { method: 'POST', body: {} });
      setResult(`${a === 'cancel' ? 'Cancel' : 'Retry'} stored (seq ${r.seq}).`);
    } catch (e) {
      setResult(explain(e));
    }
    setConfirm(null);
  };
  return (
    <div class="commands">
      {canCancel && (
        <button type="button" onClick={() => setConfirm('cancel')} data-testid="cancel">
          Cancel job…
        </button>
      )}
      {canRetry && (
        <button type="button" onClick={() => setConfirm('retry')} data-testid="retry">
          Retry job…
        </button>
      )}
      {confirm && (
        <span class="confirm" role="dialog" aria-label="confirm">
          {confirm === 'cancel' ? 'Cancel this job?' : 'Queue this job again?'}{' '}
          <button type="button" class="danger" onClick={() => run(confirm)} autoFocus data-testid="confirm-yes">
            Yes
          </button>{' '}
          <button type="button" onClick={() => setConfirm(null)}>
            No
          </button>
        </span>
      )}
      {result && (
        <span class="muted" role="status">
          {result}
        </span>
      )}
    </div>
  );
}

function Spec({ job }: { job: Extract<JobAnswer, { spec: unknown }> }) {
  const s = job.spec;
  return (
    <dl class="facts spec" data-testid="spec">
      <dt>Command</dt>
      <dd>
        <code data-testid="command">{s.shell ? s.command.join(' ') : s.command.map(quote).join(' ')}</code>
      </dd>
      {Object.keys(s.env ?? {}).length > 0 && (
        <>
          <dt>Environment</dt>
          <dd>
            {Object.entries(s.env ?? {}).map(([k, v]) => (
              <div key={k}>
                <code>
                  {k}={v}
                </code>
              </div>
            ))}
          </dd>
        </>
      )}
      {s.working_dir && (
        <>
          <dt>Working dir</dt>
          <dd>
            <code>{s.working_dir}</code>
          </dd>
        </>
      )}
      <dt>Executor</dt>
      <dd>{s.executor ?? 'process'}</dd>
      <dt>Priority</dt>
      <dd>{s.priority}</dd>
      {s.labels && s.labels.length > 0 && (
        <>
          <dt>Labels</dt>
          <dd>{s.labels.join(', ')}</dd>
        </>
      )}
      {s.timeout_secs && (
        <>
          <dt>Timeout</dt>
          <dd>{duration(s.timeout_secs * 1000)}</dd>
        </>
      )}
      {Object.keys(s.tags ?? {}).length > 0 && (
        <>
          <dt>Tags</dt>
          <dd>
            {Object.entries(s.tags ?? {})
              .map(([k, v]) => `${k}=${v}`)
              .join(', ')}
          </dd>
        </>
      )}
    </dl>
  );
}

function quote(a: string): string {
  return /^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`;
}

/** `{"kind": "user", "name": …}`, `{"kind": "worker", "id": …}`, `{"kind": "system", "component": …}`. */
export function actorName(a: unknown): string | null {
  if (!a || typeof a !== 'object') return null;
  const o = a as Record<string, unknown>;
  if (typeof o.name === 'string') return o.name;
  if (typeof o.id === 'string') return `worker ${o.id}`;
  if (typeof o.component === 'string') return `fetchml ${o.component}`;
  return typeof o.kind === 'string' ? o.kind : null;
}

export function Timeline({ events, full }: { events: (StoredEvent & { seq: number })[]; full: boolean }) {
  if (!events.length) return <p class="muted">No events yet.</p>;
  return (
    <ol class="timeline" data-testid="timeline">
      {events.map((e) => {
        const p = e.payload as Record<string, unknown>;
        const actor = actorName(e.actor);
        return (
          <li key={e.seq} data-type={e.type}>
            <span class="mono small muted">#{e.seq}</span> <strong>{e.type.replace(/^job_/, '').replace(/_/g, ' ')}</strong>{' '}
            <span class="muted">{when(e.occurred_at)}</span>
            {full && actor && <span> by {actor}</span>}
            {typeof p.attempt === 'number' && <span> · attempt {p.attempt}</span>}
            {typeof p.worker === 'string' && <span> · worker {p.worker}</span>}
            {typeof p.class === 'string' && <span> · {p.class}</span>}
            {typeof p.exit_code === 'number' && <span> · exit {p.exit_code}</span>}
            {full && typeof p.reason === 'string' && <span class="muted"> · {p.reason}</span>}
          </li>
        );
      })}
    </ol>
  );
}

function Logs(props: { lines: { current: Line[] }; changed: Set<() => void>; jobId: string }) {
  const { changed, jobId } = props;
  const lines = props.lines.current;
  const [version, setVersion] = useState(0);
  useEffect(() => {
    const f = () => setVersion((v) => v + 1);
    changed.add(f);
    return () => void changed.delete(f);
  }, [changed]);
  const [follow, setFollow] = useState(true);
  const [paused, setPaused] = useState<Line[] | null>(null);
  const [search, setSearch] = useState('');
  const box = useRef<HTMLPreElement>(null);
  const source = paused ?? lines;
  const shown = useMemo(() => {
    const q = search.toLowerCase();
    const picked = q ? source.filter((l) => l.line.toLowerCase().includes(q)) : source;
    return picked.slice(-SHOWN_LINES);
  }, [version, paused, search]);
  // Before the browser paints: the frame that shows new lines already shows
  // them scrolled into view.
  useLayoutEffect(() => {
    if (follow && !paused && box.current) box.current.scrollTop = box.current.scrollHeight;
  }, [shown, follow, paused]);
  const blocks = useMemo(() => toBlocks(shown), [shown]);
  // The whole log from the api (GET /v1/jobs/{id}/logs), not the lines this
  // page keeps: those are capped, a download is not.
  const [downloading, setDownloading] = useState<string | null>(null);
  const download = async () => {
    setDownloading('Preparing the log…');
    try {
      const r = await fetchText(`/v1/jobs/${jobId}/logs`);
      const text = r
        .split('\n')
        .filter(Boolean)
        .map((l) => {
          const d = JSON.parse(l) as { at: string; stream: string; line: string };
          return `${d.at} ${d.stream} ${d.line}`;
        })
        .join('\n');
      const url = URL.createObjectURL(new Blob([text], { type: 'text/plain' }));
      const a = document.createElement('a');
      a.href = url;
      a.download = `${jobId}.log`;
      a.click();
      URL.revokeObjectURL(url);
      setDownloading(null);
    } catch (e) {
      setDownloading(explain(e));
    }
  };
  return (
    <section class="logs" data-testid="logs">
      <h2>Logs</h2>
      <div class="logbar">
        <label>
          <input type="checkbox" checked={follow} onChange={() => setFollow(!follow)} /> follow
        </label>
        <button type="button" onClick={() => setPaused(paused ? null : [...lines])} data-testid="pause">
          {paused ? 'Resume' : 'Pause'}
        </button>
        <input
          type="search"
          placeholder="search the log"
          aria-label="search the log"
          value={search}
          onInput={(e) => setSearch((e.target as HTMLInputElement).value)}
        />
        <button type="button" onClick={() => void download()} disabled={!lines.length} data-testid="log-download">
          Download
        </button>
        {downloading && <span class="muted small">{downloading}</span>}
        <span class="muted small">
          {lines.length} lines{shown.length < (search ? shown.length : source.length) ? `, newest ${shown.length} shown` : ''}
        </span>
      </div>
      <pre ref={box} class="log" tabIndex={0} aria-label="log lines" data-testid="log-lines">
        {shown.length === 0 ? (
          <span class="muted">{search ? 'No line matches.' : 'No log lines yet.'}</span>
        ) : (
          blocks.map((b) => <LogBlock key={b[0].seq} lines={b} />)
        )}
      </pre>
    </section>
  );
}

const LogBlock = memo(
  function LogBlock({ lines }: { lines: Line[] }) {
    return (
      <>
        {lines.map((l) => (
          <div key={l.seq} class={l.stream === 'stderr' ? 'err' : ''}>
            {l.line}
          </div>
        ))}
      </>
    );
  },
  // Same first and last line: the same content (lines never change).
  (a, b) => a.lines.length === b.lines.length && a.lines[a.lines.length - 1] === b.lines[b.lines.length - 1],
);
