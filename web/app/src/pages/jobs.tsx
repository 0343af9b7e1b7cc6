import { memo } from 'preact/compat';
import { useCallback, useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { useLocation } from 'preact-iso';
import { explain, qs, request } from '../api/client';
import type { JobCounts, JobPage as Page, JobStatus, Ready, StreamMessage } from '../api/types';
import { JOB_STATES, RETRYABLE, TERMINAL } from '../api/types';
import { BulkBar, type Action } from '../components/bulk';
import { Empty, ErrorBox, ProgressBar, StateBadge, TextFilter } from '../components/bits';
import { count, runTime, shortId, toLocal, toRfc3339, when, STATE_LABEL } from '../lib/format';
import { countByState, fromItems, appendItems, reduce, type Filters, type JobsState, type Row } from '../lib/jobs';
import { useSession } from '../lib/session';

const PAGE = 50;
/** Rows kept while following live: new jobs go on top and push the oldest
 *  rows out (render cost stays flat at a thousand events a second). */
const LIVE_ROWS = 250;

function filtersFrom(q: Record<string, string>): Filters {
  return {
    state: (q.state as JobStatus) || '',
    owner: q.owner || '',
    pool: q.pool || '',
    experiment: q.experiment || '',
    tag: q.tag || '',
    created_after: q.created_after || '',
    created_before: q.created_before || '',
  };
}

export function JobsPage() {
  const { can, stream } = useSession();
  const loc = useLocation();
  const filters = filtersFrom(loc.query);
  const key = JSON.stringify(filters);
  const [jobs, setJobs] = useState<JobsState>({ order: [], byId: {} });
  const [next, setNext] = useState<string | null>(null);
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<string | null>(null);
  const [selected, setSelected] = useState<Set<string>>(new Set());
  const [reload, setReload] = useState(0);
  // Older rows were pushed out by new ones: paging on from the old cursor
  // would skip them, so the page offers a fresh load instead.
  const [trimmed, setTrimmed] = useState(false);
  const tableRef = useRef<HTMLTableElement>(null);
  const [counts, setCounts] = useState<JobCounts | null>(null);
  const countsDirty = useRef(false);

  // Counts by state of every job the filters select (not only the rows
  // loaded), from the read model; refreshed at most every 2 s while events arrive.
  useEffect(() => {
    const { state: _state, ...rest } = filters;
    const load = () =>
      request<JobCounts>(`/v1/jobs/counts${qs(rest)}`)
        .then(setCounts)
        .catch(() => setCounts(null));
    countsDirty.current = false;
    void load();
    const t = setInterval(() => {
      if (!countsDirty.current) return;
      countsDirty.current = false;
      void load();
    }, 2000);
    return () => clearInterval(t);
  }, [key, reload]);

  useEffect(() => {
    let cancelled = false;
    const buffered: StreamMessage[] = [];
    let loaded = false;
    const apply = (batch: StreamMessage[]) => {
      if (batch.some((m) => m.stream === 'events')) countsDirty.current = true;
      if (!loaded) {
        buffered.push(...batch);
        return;
      }
      setJobs((s) => {
        const out = reduce(s, batch, filters, true);
        if (out.order.length <= Math.max(LIVE_ROWS, s.order.length)) return out;
        setTrimmed(true);
        return cap(out, Math.max(LIVE_ROWS, s.order.length));
      });
    };
    let unsubs: (() => void)[] = [];
    setLoading(true);
    setError(null);
    setTrimmed(false);
    (async () => {
      try {
        // The log's position first, then the list that includes it, then the
        // stream from right after it: no event falls between the two.
        const ready = await request<Ready>('/readyz', { token: null }).catch(() => null);
        const last = ready?.last_seq ?? 0;
        const page = await request<Page>(
          `/v1/jobs${qs({ ...filters, limit: PAGE, after_seq: last > 0 ? last : undefined })}`,
        );
        if (cancelled) return;
        unsubs = [
          stream.subscribe({ stream: 'events', target: 'all', from: last > 0 ? { seq: last + 1 } : 'beginning' }, apply),
          stream.subscribe({ stream: 'progress', target: 'all', kinds: ['percent'], from: 'live' }, apply),
        ];
        const rows = page.items;
        setJobs(fromItems(rows));
        setNext(page.next);
        loaded = true;
        if (buffered.length) setJobs((s) => reduce(s, buffered.splice(0), filters, true));
      } catch (e) {
        if (!cancelled) setError(explain(e));
      } finally {
        if (!cancelled) setLoading(false);
      }
    })();
    return () => {
      cancelled = true;
      unsubs.forEach((u) => u());
    };
  }, [key, reload]);

  const more = async () => {
    if (!next) return;
    try {
      const page = await request<Page>(`/v1/jobs${qs({ ...filters, limit: PAGE, cursor: next })}`);
      setJobs((s) => appendItems(s, page.items));
      setNext(page.next);
    } catch (e) {
      setError(explain(e));
    }
  };

  const rows = jobs.order.map((id) => jobs.byId[id]).filter(Boolean);
  // The first rows on screen: "first useful paint", read by the browser
  // test's measurement (performance.getEntriesByName).
  const marked = useRef(false);
  useEffect(() => {
    if (rows.length && !marked.current) {
      marked.current = true;
      requestAnimationFrame(() => performance.mark('fetchml:jobs-rows'));
    }
  }, [jobs]);
  const shownCounts = useMemo(() => countByState(rows), [jobs]);
  const byState = (s: JobStatus) => (counts ? (counts.by_state[s] ?? 0) : shownCounts[s]);
  const actions: Action[] = [...(can.cancel ? (['cancel'] as const) : []), ...(can.retry ? (['retry'] as const) : [])];
  const selectable = actions.length > 0;

  const setFilter = (k: keyof Filters, v: string) => {
    const q = { ...loc.query, [k]: v };
    if (!v) delete q[k];
    loc.route(`/jobs${qs(q)}`, true);
  };

  const toggle = useCallback(
    (id: string) =>
      setSelected((s) => {
        const n = new Set(s);
        if (n.has(id)) n.delete(id);
        else n.add(id);
        return n;
      }),
    [],
  );

  // j/k or arrows move between rows, x toggles the selection, Enter opens.
  const onKey = (e: KeyboardEvent) => {
    const links = Array.from(tableRef.current?.querySelectorAll<HTMLAnchorElement>('a.rowlink') ?? []);
    const i = links.indexOf(document.activeElement as HTMLAnchorElement);
    if (e.key === 'j' || e.key === 'ArrowDown') {
      links[Math.min(links.length - 1, i + 1)]?.focus();
      e.preventDefault();
    } else if (e.key === 'k' || e.key === 'ArrowUp') {
      links[Math.max(0, i - 1)]?.focus();
      e.preventDefault();
    } else if (e.key === 'x' && i >= 0 && selectable) {
      toggle(links[i].dataset.id ?? '');
      e.preventDefault();
    }
  };

  return (
    <section>
      <h1>Jobs</h1>
      <form class="filters" onSubmit={(e) => e.preventDefault()} aria-label="filters">
        <label>
          State
          <select value={filters.state} onChange={(e) => setFilter('state', (e.target as HTMLSelectElement).value)}>
            <option value="">any</option>
            {JOB_STATES.map((s) => (
              <option value={s} key={s}>
                {STATE_LABEL[s]}
              </option>
            ))}
          </select>
        </label>
        {can.full && <TextFilter label="Owner" value={filters.owner} onSet={(v) => setFilter('owner', v)} />}
        <TextFilter label="Pool" value={filters.pool} onSet={(v) => setFilter('pool', v)} />
        <TextFilter label="Experiment" value={filters.experiment} onSet={(v) => setFilter('experiment', v)} />
        {can.full && <TextFilter label="Tag" value={filters.tag} onSet={(v) => setFilter('tag', v)} placeholder="key=value" />}
        <label>
          Created after
          <input
            type="datetime-local"
            value={toLocal(filters.created_after)}
            onChange={(e) => setFilter('created_after', toRfc3339((e.target as HTMLInputElement).value))}
          />
        </label>
        <label>
          before
          <input
            type="datetime-local"
            value={toLocal(filters.created_before)}
            onChange={(e) => setFilter('created_before', toRfc3339((e.target as HTMLInputElement).value))}
          />
        </label>
      </form>
      <ul class="counts" aria-label="jobs by state" data-testid="counts">
        {JOB_STATES.filter((s) => byState(s) > 0).map((s) => (
          <li key={s}>
            <button
              type="button"
              class="link"
              aria-pressed={filters.state === s}
              onClick={() => setFilter('state', filters.state === s ? '' : s)}
              data-count={s}
            >
              <StateBadge state={s} /> {count(byState(s))}
            </button>
          </li>
        ))}
        <li class="muted">
          {counts ? `${count(counts.total)} jobs, ` : ''}
          {count(rows.length)} shown{next ? ' (more below)' : ''}
        </li>
      </ul>
      <ErrorBox error={error} retry={() => setReload((n) => n + 1)} />
      {selectable && (
        <BulkBar
          selected={[...selected].filter((id) => jobs.byId[id])}
          actions={actions}
          onDone={() => setSelected(new Set())}
        />
      )}
      {!loading && !error && rows.length === 0 ? (
        <Empty>
          No jobs{Object.values(filters).some(Boolean) ? ' match these filters: clear a filter above' : ' yet'}.
          {can.create && !Object.values(filters).some(Boolean) && (
            <>
              {' '}
              Submit one with <code>ml submit -- python3 train.py</code> or <code>POST /v1/jobs</code>; it shows up here
              at once.
            </>
          )}
        </Empty>
      ) : (
        <div class="tablewrap">
          <table class="jobs" ref={tableRef} onKeyDown={onKey} data-testid="jobs-table" aria-busy={loading}>
            <thead>
              <tr>
                {selectable && (
                  <th scope="col">
                    <input
                      type="checkbox"
                      aria-label="select all"
                      checked={rows.length > 0 && rows.every((r) => selected.has(r.id))}
                      onChange={(e) =>
                        setSelected((e.target as HTMLInputElement).checked ? new Set(rows.map((r) => r.id)) : new Set())
                      }
                    />
                  </th>
                )}
                <th scope="col">Job</th>
                <th scope="col">State</th>
                <th scope="col" class="num">
                  Attempt
                </th>
                <th scope="col">Progress</th>
                <th scope="col">Pool</th>
                <th scope="col">Experiment</th>
                {can.full && <th scope="col">Owner</th>}
                <th scope="col">Created</th>
                <th scope="col" class="num">
                  Run time
                </th>
              </tr>
            </thead>
            <tbody>
              {rows.map((r) => (
                <JobLine key={r.id} r={r} full={can.full} selectable={selectable} selected={selected.has(r.id)} toggle={toggle} />
              ))}
            </tbody>
          </table>
        </div>
      )}
      {trimmed ? (
        <p class="muted">
          Older rows made room for new jobs.{' '}
          <button type="button" onClick={() => setReload((n) => n + 1)}>
            Reload the list
          </button>{' '}
          to page through all of them.
        </p>
      ) : (
        next && (
          <button type="button" onClick={more} data-testid="more">
            Load more
          </button>
        )
      )}
      <p class="muted small">Keys: j/k or arrows move, Enter opens, x selects.</p>
    </section>
  );
}

// Memoized: a batch of events re-renders only the rows it changed.
const JobLine = memo(function JobLine(props: {
  r: Row;
  full: boolean;
  selectable: boolean;
  selected: boolean;
  toggle: (id: string) => void;
}) {
  const { r } = props;
  const owner = (r as { owner?: string | null }).owner;
  return (
    <tr data-job={r.id} data-state={r.state} class={props.selected ? 'sel' : ''}>
      {props.selectable && (
        <td>
          <input
            type="checkbox"
            aria-label={`select ${r.id}`}
            checked={props.selected}
            onChange={() => props.toggle(r.id)}
            disabled={TERMINAL.has(r.state) && !RETRYABLE.has(r.state)}
          />
        </td>
      )}
      <td>
        <a class="rowlink mono" href={`/jobs/${r.id}`} data-id={r.id} title={r.id}>
          {shortId(r.id)}
        </a>
      </td>
      <td>
        <StateBadge state={r.state} />
      </td>
      <td class="num">{r.attempt}</td>
      <td>
        <ProgressBar value={r.state === 'succeeded' ? 100 : r.percent} state={r.state} />
      </td>
      <td>{r.pool}</td>
      <td>{r.experiment ?? <span class="muted">—</span>}</td>
      {props.full && <td>{owner ?? '—'}</td>}
      <td>{when(r.created_at)}</td>
      <td class="num">{runTime((r as { started_at?: string | null }).started_at, (r as { finished_at?: string | null }).finished_at)}</td>
    </tr>
  );
});

function cap(s: JobsState, max: number): JobsState {
  if (s.order.length <= max) return s;
  const order = s.order.slice(0, max);
  const byId: Record<string, Row> = {};
  for (const id of order) byId[id] = s.byId[id];
  return { order, byId };
}
