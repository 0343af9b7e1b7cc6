import { memo } from 'preact/compat';
import { useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState } from 'preact/hooks';
import { useLocation } from 'preact-iso';
import { explain, qs, request } from '../api/client';
import type { JobCounts, JobPage as Page, JobStatus, Ready, StreamMessage } from '../api/types';
import { JOB_STATES, RETRYABLE, TERMINAL } from '../api/types';
import { BulkBar, type Action } from '../components/bulk';
import { Empty, ErrorBox, ProgressBar, StateBadge, TextFilter } from '../components/bits';
import { count, runTime, shortId, toLocal, toRfc3339, when, STATE_LABEL } from '../lib/format';
import { countByState, fromItems, appendItems, type Filters, type Row } from '../lib/jobs';
import { Throttle, live, receive, reveal, waiting, type LiveJobs } from '../lib/live';
import { rowWindow, sameWindow, type RowWindow } from '../lib/rowwindow';
import { useSession } from '../lib/session';

const PAGE = 50;
/** Rows kept while following live: new jobs go on top and push the oldest
 *  rows out (render cost stays flat at a thousand events a second). */
const LIVE_ROWS = 250;
/** New jobs join the table at most this often (a few times a second): each
 *  insertion moves every row below it, which the browser lays out and paints
 *  again. A lone new job after a quiet spell shows at once. */
const REVEAL_MS = 250;
/** Within this many pixels of the top, the page follows new jobs. */
const TOP_PX = 8;
/** Rows rendered past each edge of the screen (the rest are spacers). */
const OVERSCAN = 10;
/** A row's height until one is measured (styles.css gives rows one height). */
const ROW_PX = 33;

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
  // The list lives in a ref, read by renders and by the stream's handlers
  // (which run outside renders); setJobs renders, a bare ref update does not.
  const [, setRendered] = useState<LiveJobs | null>(null);
  const jobsRef = useRef<LiveJobs>(live({ order: [], byId: {} }));
  const jobs = jobsRef.current;
  const setJobs = useCallback((next: LiveJobs) => {
    jobsRef.current = next;
    setRendered(next);
  }, []);
  // New jobs wait in a buffer while the reader is not at the top of the
  // page, has paused, or is working in the table (focus on a row).
  const [paused, setPaused] = useState(false);
  const [atTop, setAtTop] = useState(true);
  const [rowFocus, setRowFocus] = useState(false);
  const holding = paused || !atTop || rowFocus;
  const holdingRef = useRef(holding);
  holdingRef.current = holding;
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
    // At the log's position when asked, as the list is: a job that ended
    // just before the page opened is counted even if the projector had not
    // caught up yet (no later event would ask again).
    const load = async () => {
      const ready = await request<Ready>('/readyz', { token: null }).catch(() => null);
      const last = ready?.last_seq ?? 0;
      await request<JobCounts>(`/v1/jobs/counts${qs({ ...rest, after_seq: last > 0 ? last : undefined })}`)
        .then(setCounts)
        .catch(() => setCounts(null));
    };
    countsDirty.current = false;
    void load();
    const t = setInterval(() => {
      if (!countsDirty.current) return;
      countsDirty.current = false;
      void load();
    }, 2000);
    return () => clearInterval(t);
  }, [key, reload]);

  // Moves the waiting new jobs into the table (newest on top, the oldest
  // rows making room).
  const showNew = useCallback(() => {
    const s = jobsRef.current;
    const out = reveal(s, Math.max(LIVE_ROWS, s.order.length));
    if (out.state === s) return;
    setJobs(out.state);
    if (out.trimmed) setTrimmed(true);
  }, []);
  const reveals = useMemo(
    () =>
      new Throttle(() => {
        if (!holdingRef.current) showNew();
      }, REVEAL_MS),
    [],
  );
  useEffect(() => () => reveals.cancel(), []);
  // Following again (back at the top, resumed, focus left the rows): what
  // waits joins the table.
  useEffect(() => {
    if (!holding && waiting(jobsRef.current) > 0) reveals.request();
  }, [holding]);
  useEffect(() => {
    const onScroll = () => setAtTop(window.scrollY <= TOP_PX);
    window.addEventListener('scroll', onScroll, { passive: true });
    return () => window.removeEventListener('scroll', onScroll);
  }, []);

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
      const s = jobsRef.current;
      // The buffer holds as many jobs as the table shows: older ones would
      // be pushed out by the newer ones on the way in anyway.
      const out = receive(s, batch, filters, Math.max(LIVE_ROWS, s.order.length));
      // Only new jobs arrived, and they join the table within REVEAL_MS:
      // nothing on screen changes, so no render (the bar counts them only
      // while they are held).
      if (out.order === s.order && out.byId === s.byId && !holdingRef.current) jobsRef.current = out;
      else if (out !== s) setJobs(out);
      if (waiting(out) > 0) reveals.request();
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
        setJobs(live(fromItems(page.items)));
        setNext(page.next);
        loaded = true;
        if (buffered.length) apply(buffered.splice(0));
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
      const s = jobsRef.current;
      setJobs({ ...s, ...appendItems(s, page.items) });
      setNext(page.next);
    } catch (e) {
      setError(explain(e));
    }
  };

  const rows = useMemo(() => jobs.order.map((id) => jobs.byId[id]).filter(Boolean), [jobs.order, jobs.byId]);
  const newJobs = waiting(jobs);
  // The first rows on screen: "first useful paint", read by the browser
  // test's measurement (performance.getEntriesByName).
  const marked = useRef(false);
  useEffect(() => {
    if (rows.length && !marked.current) {
      marked.current = true;
      requestAnimationFrame(() => performance.mark('fetchml:jobs-rows'));
    }
  }, [rows]);
  const shownCounts = useMemo(() => countByState(rows), [rows]);
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
      {!loading && !error && (
        <NewJobsBar
          waiting={newJobs}
          paused={paused}
          holding={holding}
          onShow={() => {
            showNew();
            window.scrollTo({ top: 0 });
          }}
          onPause={() => setPaused((p) => !p)}
        />
      )}
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
        <div class="tablewrap live">
          <table
            class="jobs"
            ref={tableRef}
            onKeyDown={onKey}
            onFocusIn={() => setRowFocus(true)}
            onFocusOut={(e) => setRowFocus(tableRef.current?.contains(e.relatedTarget as Node | null) ?? false)}
            data-testid="jobs-table"
            data-rows={rows.length}
            aria-rowcount={rows.length + 1}
            aria-busy={loading}
          >
            <thead>
              <tr aria-rowindex={1}>
                {selectable && (
                  <th scope="col" class="c-sel">
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
                <th scope="col" class="c-id">Job</th>
                <th scope="col" class="c-state">State</th>
                <th scope="col" class="num c-att">
                  Attempt
                </th>
                <th scope="col" class="c-prog">Progress</th>
                <th scope="col">Pool</th>
                <th scope="col">Experiment</th>
                {can.full && <th scope="col">Owner</th>}
                <th scope="col" class="c-created">Created</th>
                <th scope="col" class="num c-run">
                  Run time
                </th>
              </tr>
            </thead>
            <JobRows
              rows={rows}
              full={can.full}
              selectable={selectable}
              selected={selected}
              toggle={toggle}
              columns={8 + (selectable ? 1 : 0) + (can.full ? 1 : 0)}
            />
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

/** The new jobs waiting to join the table, and the switch that holds them. */
function NewJobsBar(props: { waiting: number; paused: boolean; holding: boolean; onShow: () => void; onPause: () => void }) {
  return (
    <div class="newbar" data-testid="new-jobs">
      {props.holding && props.waiting > 0 ? (
        <button type="button" onClick={props.onShow} data-testid="show-new">
          Show {count(props.waiting)} new {props.waiting === 1 ? 'job' : 'jobs'}
        </button>
      ) : (
        <span class="muted small">
          {props.paused
            ? 'Paused: new jobs wait here.'
            : props.holding
              ? 'New jobs wait here while you are down the list or in the table.'
              : 'New jobs appear on top as they are queued.'}
        </span>
      )}
      <button type="button" class="link" aria-pressed={props.paused} onClick={props.onPause} data-testid="pause-new">
        {props.paused ? 'Follow new jobs' : 'Pause new jobs'}
      </button>
    </div>
  );
}

/**
 * The table's body: only the rows on screen and a margin are in the DOM, two
 * spacer rows stand in for the others (every row has the same height). While
 * new jobs arrive at a thousand a second, each insertion then lays out and
 * paints a few dozen rows instead of all of them. Memoized: a frame that only
 * adds waiting jobs does not render the table at all.
 */
const JobRows = memo(function JobRows(props: {
  rows: Row[];
  full: boolean;
  selectable: boolean;
  selected: Set<string>;
  toggle: (id: string) => void;
  columns: number;
}) {
  const { rows } = props;
  const body = useRef<HTMLTableSectionElement>(null);
  const pitch = useRef(ROW_PX);
  const count = useRef(rows.length);
  count.current = rows.length;
  const [win, setWin] = useState<RowWindow>(() =>
    rowWindow(rows.length, ROW_PX, 0, typeof innerHeight === 'number' ? innerHeight : 800, OVERSCAN),
  );
  const measure = useCallback(() => {
    const tb = body.current;
    if (!tb) return;
    const real = tb.querySelectorAll<HTMLElement>('tr[data-job]');
    if (real.length > 0) {
      const a = real[0].getBoundingClientRect();
      const b = real[real.length - 1].getBoundingClientRect();
      if (b.bottom > a.top) pitch.current = (b.bottom - a.top) / real.length;
    }
    // The body's top is row 0's: the top spacer is part of it.
    const next = rowWindow(count.current, pitch.current, tb.getBoundingClientRect().top, innerHeight, OVERSCAN);
    setWin((w) => (sameWindow(w, next) ? w : next));
  }, []);
  // Scrolling and resizing move the window, measured once per frame.
  useEffect(() => {
    let queued = false;
    const onMove = () => {
      if (queued) return;
      queued = true;
      requestAnimationFrame(() => {
        queued = false;
        measure();
      });
    };
    addEventListener('scroll', onMove, { passive: true });
    addEventListener('resize', onMove);
    return () => {
      removeEventListener('scroll', onMove);
      removeEventListener('resize', onMove);
    };
  }, []);
  // A longer or shorter list (the first page, a reveal, Load more) may
  // change the window; the first rows also give the real row height.
  useLayoutEffect(measure, [rows.length]);
  const start = Math.min(win.start, rows.length);
  const end = Math.min(Math.max(win.end, start), rows.length);
  const px = pitch.current;
  return (
    <tbody ref={body}>
      {start > 0 && <Spacer key="above" height={start * px} columns={props.columns} />}
      {rows.slice(start, end).map((r, i) => (
        // Keyed by place, not by job: when new jobs come in on top, the rows
        // on screen keep their elements and change only the cells that differ
        // (no rows created and removed each time). Nothing in a row's DOM
        // belongs to the job alone: the checkbox is controlled, and new jobs
        // are held back while focus is in the table.
        <JobLine
          key={start + i}
          r={r}
          index={start + i}
          full={props.full}
          selectable={props.selectable}
          selected={props.selected.has(r.id)}
          toggle={props.toggle}
        />
      ))}
      {end < rows.length && <Spacer key="below" height={(rows.length - end) * px} columns={props.columns} />}
    </tbody>
  );
});

function Spacer({ height, columns }: { height: number; columns: number }) {
  return (
    <tr class="spacer" aria-hidden="true" style={{ height: `${height}px` }}>
      <td colSpan={columns} />
    </tr>
  );
}

// Memoized: a batch of events re-renders only the rows it changed.
const JobLine = memo(function JobLine(props: {
  r: Row;
  /** The row's place in the whole list (aria-rowindex counts the header as 1). */
  index: number;
  full: boolean;
  selectable: boolean;
  selected: boolean;
  toggle: (id: string) => void;
}) {
  const { r } = props;
  const owner = (r as { owner?: string | null }).owner;
  return (
    <tr data-job={r.id} data-state={r.state} class={props.selected ? 'sel' : ''} aria-rowindex={props.index + 2}>
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
