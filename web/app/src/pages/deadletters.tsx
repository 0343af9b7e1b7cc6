import { useEffect, useState } from 'preact/hooks';
import { explain, qs, request } from '../api/client';
import type { JobPage, JobRow } from '../api/types';
import { BulkBar } from '../components/bulk';
import { Empty, ErrorBox, StateBadge } from '../components/bits';
import { shortId, when } from '../lib/format';
import { useSession } from '../lib/session';

/** Jobs that ended dead-lettered or failed, grouped by failure class. */
export function DeadLettersPage() {
  const { can } = useSession();
  const [rows, setRows] = useState<JobRow[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [selected, setSelected] = useState<Set<string>>(new Set());
  const [reload, setReload] = useState(0);
  useEffect(() => {
    Promise.all(
      (['dead_lettered', 'failed'] as const).map((state) => request<JobPage>(`/v1/jobs${qs({ state, limit: 500 })}`)),
    )
      .then((pages) => {
        setRows(pages.flatMap((p) => p.items));
        setError(null);
      })
      .catch((e) => setError(explain(e)));
  }, [reload]);
  const groups = new Map<string, JobRow[]>();
  for (const r of rows ?? []) {
    const k = r.failure_class ?? 'unknown';
    groups.set(k, [...(groups.get(k) ?? []), r]);
  }
  const toggleAll = (ids: string[], on: boolean) =>
    setSelected((s) => {
      const n = new Set(s);
      ids.forEach((id) => (on ? n.add(id) : n.delete(id)));
      return n;
    });
  return (
    <section>
      <h1>Dead letters</h1>
      <p class="muted">Jobs that ended failed or dead-lettered (their retries used up), by failure class.</p>
      <ErrorBox error={error} retry={() => setReload((n) => n + 1)} />
      {can.retry && (
        <BulkBar selected={[...selected]} actions={['retry']} onDone={() => (setSelected(new Set()), setReload((n) => n + 1))} />
      )}
      {rows && rows.length === 0 && <Empty>No failed or dead-lettered jobs. Nothing to do here.</Empty>}
      {[...groups.entries()].map(([cls, list]) => (
        <section key={cls} data-testid={`class-${cls}`}>
          <h2>
            {cls} <span class="muted">({list.length})</span>
          </h2>
          <div class="tablewrap">
            <table>
              <thead>
                <tr>
                  {can.retry && (
                    <th>
                      <input
                        type="checkbox"
                        aria-label={`select all ${cls}`}
                        checked={list.every((r) => selected.has(r.id))}
                        onChange={(e) => toggleAll(list.map((r) => r.id), (e.target as HTMLInputElement).checked)}
                      />
                    </th>
                  )}
                  <th scope="col">Job</th>
                  <th scope="col">State</th>
                  <th scope="col" class="num">
                    Attempt
                  </th>
                  <th scope="col">Pool</th>
                  <th scope="col">Experiment</th>
                  {can.full && <th scope="col">Reason</th>}
                  <th scope="col">Finished</th>
                </tr>
              </thead>
              <tbody>
                {list.map((r) => (
                  <tr key={r.id}>
                    {can.retry && (
                      <td>
                        <input
                          type="checkbox"
                          aria-label={`select ${r.id}`}
                          checked={selected.has(r.id)}
                          onChange={(e) => toggleAll([r.id], (e.target as HTMLInputElement).checked)}
                        />
                      </td>
                    )}
                    <td>
                      <a class="mono" href={`/jobs/${r.id}`}>
                        {shortId(r.id)}
                      </a>
                    </td>
                    <td>
                      <StateBadge state={r.state} />
                    </td>
                    <td class="num">{r.attempt}</td>
                    <td>{r.pool}</td>
                    <td>{r.experiment ?? '—'}</td>
                    {can.full && <td class="small">{r.reason ?? '—'}</td>}
                    <td>{when(r.finished_at)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </section>
      ))}
    </section>
  );
}
