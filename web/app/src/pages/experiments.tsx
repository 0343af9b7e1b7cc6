import { useEffect, useMemo, useState } from 'preact/hooks';
import { explain, qs, request } from '../api/client';
import type { Experiment, ExperimentList, JobPage, JobRow, ProgressMetric } from '../api/types';
import { Empty, ErrorBox, StateBadge } from '../components/bits';
import { LineChart, type Series } from '../components/chart';
import { count, metric, shortId, when } from '../lib/format';
import { useSession } from '../lib/session';

export function ExperimentsPage({ name }: { name?: string }) {
  const [list, setList] = useState<Experiment[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    request<ExperimentList>('/v1/experiments')
      .then((l) => setList(l.items))
      .catch((e) => setError(explain(e)));
  }, []);
  if (name) return <Runs name={decodeURIComponent(name)} />;
  return (
    <section>
      <h1>Experiments</h1>
      <ErrorBox error={error} />
      {list && list.length === 0 && (
        <Empty>No experiments yet. Give a job one with "experiment": "name" in its spec (ml submit --experiment).</Empty>
      )}
      {list && list.length > 0 && (
        <div class="tablewrap">
          <table data-testid="experiments">
            <thead>
              <tr>
                <th scope="col">Experiment</th>
                <th class="num">Jobs</th>
                <th class="num">Waiting</th>
                <th class="num">Running</th>
                <th class="num">Succeeded</th>
                <th class="num">Failed</th>
                <th class="num">Cancelled</th>
                <th>Metrics (last)</th>
                <th>Updated</th>
              </tr>
            </thead>
            <tbody>
              {list.map((x) => (
                <tr key={x.name}>
                  <td>
                    <a href={`/experiments/${encodeURIComponent(x.name)}`}>{x.name}</a>
                  </td>
                  <td class="num">{count(x.jobs)}</td>
                  <td class="num">{count(x.waiting)}</td>
                  <td class="num">{count(x.running)}</td>
                  <td class="num">{count(x.succeeded)}</td>
                  <td class="num">{count(x.failed)}</td>
                  <td class="num">{count(x.cancelled)}</td>
                  <td class="small">
                    {Object.entries(x.metrics)
                      .map(([k, m]) => `${k} ${metric(m.last)}`)
                      .join(', ') || '—'}
                  </td>
                  <td>{when(x.updated_at)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

type RunSeries = Record<string, Record<string, Series>>; // job -> metric -> series

/** The runs of one experiment side by side, and chosen metrics overlaid. */
function Runs({ name }: { name: string }) {
  const { can, stream } = useSession();
  const [runs, setRuns] = useState<JobRow[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [series, setSeries] = useState<RunSeries>({});
  const [chosen, setChosen] = useState<Set<string>>(new Set());
  const [overlay, setOverlay] = useState<string | null>(null);

  useEffect(() => {
    request<JobPage>(`/v1/jobs${qs({ experiment: name, limit: 200 })}`)
      .then((p) => {
        setRuns(p.items);
        setChosen(new Set(p.items.slice(0, 5).map((r) => r.id)));
      })
      .catch((e) => setError(explain(e)));
    // Every metric point of the experiment's runs, replayed then live: the
    // overlay and each run's best value come from them.
    return stream.subscribe(
      { stream: 'progress', target: { experiment: name }, kinds: ['metric'], from: 'beginning' },
      (batch) =>
        setSeries((old) => {
          const out: RunSeries = { ...old };
          for (const m of batch) {
            const d = m.data as unknown as ProgressMetric;
            const job = { ...(out[d.job_id] ?? {}) };
            const s = job[d.name] ?? { label: d.name, xs: [], ys: [] };
            job[d.name] = { label: d.name, xs: [...s.xs, d.step ?? s.xs.length], ys: [...s.ys, d.value] };
            out[d.job_id] = job;
          }
          return out;
        }),
    );
  }, [name]);

  const metricNames = useMemo(() => {
    const n = new Set<string>();
    for (const r of runs ?? []) Object.keys(r.metrics).forEach((k) => n.add(k));
    for (const j of Object.values(series)) Object.keys(j).forEach((k) => n.add(k));
    return [...n].sort();
  }, [runs, series]);
  const shownMetric = overlay ?? metricNames[0] ?? null;
  const overlaid: Series[] = shownMetric
    ? [...chosen]
        .map((id) => {
          const s = series[id]?.[shownMetric];
          return s ? { label: shortId(id), xs: s.xs, ys: s.ys } : null;
        })
        .filter((s): s is Series => s !== null)
    : [];

  return (
    <section>
      <h1>
        Experiment <em>{name}</em>
      </h1>
      <p>
        <a href="/experiments">All experiments</a> · <a href={`/jobs?experiment=${encodeURIComponent(name)}`}>its jobs</a>
      </p>
      <ErrorBox error={error} />
      {runs && runs.length === 0 && <Empty>No runs in this experiment that you may see.</Empty>}
      {runs && runs.length > 0 && (
        <>
          <div class="tablewrap">
            <table data-testid="runs">
              <thead>
                <tr>
                  <th scope="col">Overlay</th>
                  <th scope="col">Run</th>
                  <th scope="col">State</th>
                  {metricNames.map((m) => (
                    <th scope="col" key={m} class="num">
                      {m} last / best
                    </th>
                  ))}
                  {can.full && <th scope="col">Tags</th>}
                  <th scope="col">Created</th>
                </tr>
              </thead>
              <tbody>
                {runs.map((r) => (
                  <tr key={r.id}>
                    <td>
                      <input
                        type="checkbox"
                        aria-label={`overlay ${r.id}`}
                        checked={chosen.has(r.id)}
                        onChange={() =>
                          setChosen((c) => {
                            const n = new Set(c);
                            if (n.has(r.id)) n.delete(r.id);
                            else n.add(r.id);
                            return n;
                          })
                        }
                      />
                    </td>
                    <td>
                      <a class="mono" href={`/jobs/${r.id}`}>
                        {shortId(r.id)}
                      </a>
                    </td>
                    <td>
                      <StateBadge state={r.state} />
                    </td>
                    {metricNames.map((m) => {
                      const ys = series[r.id]?.[m]?.ys ?? [];
                      const last = r.metrics[m]?.value ?? ys[ys.length - 1];
                      // "Best" is the lowest for names that read like a loss or an error, else the highest.
                      const low = /loss|err|perplex|mse|mae|rmse/i.test(m);
                      const best = ys.length ? (low ? Math.min(...ys) : Math.max(...ys)) : undefined;
                      return (
                        <td key={m} class="num">
                          {metric(last)} / {metric(best)}
                        </td>
                      );
                    })}
                    {can.full && (
                      <td class="small">
                        {Object.entries(r.tags ?? {})
                          .map(([k, v]) => `${k}=${v}`)
                          .join(', ') || '—'}
                      </td>
                    )}
                    <td>{when(r.created_at)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <h2>Overlay</h2>
          {metricNames.length === 0 ? (
            <p class="muted">No run has reported a metric yet.</p>
          ) : (
            <>
              <label>
                Metric{' '}
                <select value={shownMetric ?? ''} onChange={(e) => setOverlay((e.target as HTMLSelectElement).value)}>
                  {metricNames.map((m) => (
                    <option key={m}>{m}</option>
                  ))}
                </select>
              </label>
              {overlaid.length ? (
                <LineChart title={shownMetric ?? ''} series={overlaid} />
              ) : (
                <p class="muted">Tick runs in the table to overlay their {shownMetric} curves.</p>
              )}
            </>
          )}
        </>
      )}
    </section>
  );
}
