import { useEffect, useState } from 'preact/hooks';
import { useLocation } from 'preact-iso';
import { explain, qs, request } from '../api/client';
import type { AuditEntry, AuditPage as Page } from '../api/types';
import { Empty, ErrorBox, TextFilter } from '../components/bits';
import { AUDIT_FAMILIES, actorName, auditFilters, auditQuery, auditSummary, type AuditFilters } from '../lib/audit';
import { count, shortId, toLocal, toRfc3339, when } from '../lib/format';

/** The trail (`GET /v1/audit`, the log itself): who did what, refusals and
 *  logins included. Only routed for callers with `audit:read`. */
export function AuditPage() {
  const loc = useLocation();
  const filters = auditFilters(loc.query);
  const key = JSON.stringify(filters);
  const [items, setItems] = useState<AuditEntry[]>([]);
  const [next, setNext] = useState<number | null>(null);
  const [head, setHead] = useState<number | null>(null);
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<string | null>(null);
  const [reload, setReload] = useState(0);

  useEffect(() => {
    const ctl = new AbortController();
    setLoading(true);
    setError(null);
    request<Page>(`/v1/audit${qs(auditQuery(filters, null))}`, { signal: ctl.signal })
      .then((p) => {
        setItems(p.items);
        setNext(p.next ?? null);
        setHead(p.head);
      })
      .catch((e) => {
        if ((e as Error).name !== 'AbortError') setError(explain(e));
      })
      .finally(() => setLoading(false));
    return () => ctl.abort();
  }, [key, reload]);

  const more = async () => {
    if (next === null) return;
    setLoading(true);
    try {
      const p = await request<Page>(`/v1/audit${qs(auditQuery(filters, next))}`);
      setItems((old) => [...old, ...p.items]);
      setNext(p.next ?? null);
    } catch (e) {
      setError(explain(e));
    } finally {
      setLoading(false);
    }
  };

  const setFilter = (k: keyof AuditFilters, v: string) => {
    const q = { ...loc.query, [k]: v };
    if (!v) delete q[k];
    loc.route(`/audit${qs(q)}`, true);
  };
  const filtered = Object.values(filters).some(Boolean);

  return (
    <section>
      <h1>Audit</h1>
      <p class="muted">
        Every event of the log, newest first: commands, logins and refused requests, with who caused them. Times are in your
        zone ({Intl.DateTimeFormat().resolvedOptions().timeZone}).
      </p>
      <form class="filters" onSubmit={(e) => e.preventDefault()} aria-label="filters">
        <TextFilter label="Actor" value={filters.actor} onSet={(v) => setFilter('actor', v)} placeholder="user or worker" />
        <label>
          Family
          <select value={filters.family} onChange={(e) => setFilter('family', (e.target as HTMLSelectElement).value)}>
            <option value="">any</option>
            {AUDIT_FAMILIES.map((f) => (
              <option value={f} key={f}>
                {f}
              </option>
            ))}
          </select>
        </label>
        <label>
          Outcome
          <select value={filters.outcome} onChange={(e) => setFilter('outcome', (e.target as HTMLSelectElement).value)}>
            <option value="">any</option>
            <option value="accepted">accepted</option>
            <option value="refused">refused</option>
          </select>
        </label>
        <label>
          Since
          <input
            type="datetime-local"
            value={toLocal(filters.since)}
            onChange={(e) => setFilter('since', toRfc3339((e.target as HTMLInputElement).value))}
          />
        </label>
        <label>
          until
          <input
            type="datetime-local"
            value={toLocal(filters.until)}
            onChange={(e) => setFilter('until', toRfc3339((e.target as HTMLInputElement).value))}
          />
        </label>
        {filtered && (
          <button type="button" onClick={() => loc.route('/audit', true)}>
            Clear filters
          </button>
        )}
      </form>
      <p class="muted small" data-testid="audit-count">
        {count(items.length)} shown{head !== null ? `, log at sequence ${count(head)}` : ''}
        {next !== null ? ' (more below)' : ''}
      </p>
      <ErrorBox error={error} retry={() => setReload((n) => n + 1)} />
      {!loading && !error && items.length === 0 ? (
        <Empty>
          {filtered
            ? 'No entries match these filters in the stretch of the log read. Widen the time range or clear a filter; '
            : 'The log holds no entries yet. '}
          {next !== null && (
            <button type="button" onClick={more}>
              Read further back
            </button>
          )}
        </Empty>
      ) : (
        <div class="tablewrap">
          <table data-testid="audit" aria-busy={loading}>
            <thead>
              <tr>
                <th scope="col">Time</th>
                <th scope="col">Actor</th>
                <th scope="col">Event</th>
                <th scope="col">Outcome</th>
                <th scope="col">Subject</th>
                <th scope="col">What</th>
                <th scope="col">From</th>
                <th scope="col" class="num">
                  Seq
                </th>
              </tr>
            </thead>
            <tbody>
              {items.map((e) => (
                <AuditLine e={e} key={e.seq} />
              ))}
            </tbody>
          </table>
        </div>
      )}
      {next !== null && items.length > 0 && (
        <button type="button" onClick={more} disabled={loading} data-testid="audit-more">
          Older entries
        </button>
      )}
    </section>
  );
}

function AuditLine({ e }: { e: AuditEntry }) {
  const a = actorName(e.actor);
  const subject = e.family === 'job' ? shortId(e.aggregate_id) : e.aggregate_id;
  return (
    <tr data-type={e.type} data-outcome={e.outcome} data-actor={a.name}>
      <td title={e.occurred_at}>{when(e.occurred_at)}</td>
      <td>
        {a.name} {a.kind !== 'user' && <span class="muted small">({a.kind})</span>}
      </td>
      <td class="mono">{e.type}</td>
      <td>
        <span class={`badge ${e.outcome === 'refused' ? 'st-failed' : 'st-succeeded'}`}>{e.outcome}</span>
      </td>
      <td>
        <span class="muted small">{e.family}</span>{' '}
        {e.family === 'job' ? (
          <a class="mono" href={`/jobs/${e.aggregate_id}`} title={e.aggregate_id}>
            {subject}
          </a>
        ) : (
          <span class="mono">{subject}</span>
        )}
      </td>
      <td class="small">{auditSummary(e)}</td>
      <td class="mono small">{e.source ?? '—'}</td>
      <td class="num">{e.seq}</td>
    </tr>
  );
}
