import { useState } from 'preact/hooks';
import { explain, request } from '../api/client';
import type { CommandAccepted } from '../api/types';
import { shortId } from '../lib/format';

export type Action = 'cancel' | 'retry';
type Result = { id: string; ok: boolean; text: string };

/** Cancel or retry many jobs: a confirmation first, then one result per job. */
export function BulkBar({ selected, actions, onDone }: { selected: string[]; actions: Action[]; onDone: () => void }) {
  const [confirming, setConfirming] = useState<Action | null>(null);
  const [results, setResults] = useState<Result[] | null>(null);
  const [busy, setBusy] = useState(false);
  if (!actions.length) return null;
  const run = async (action: Action) => {
    setBusy(true);
    const out = await Promise.all(
      selected.map(async (id): Promise<Result> => {
        try {
          const a = await request<CommandAccepted>(`/v1/jobs/${id}/${action}`, { method: 'POST', body: {} });
          return { id, ok: true, text: `${action === 'cancel' ? 'cancel' : 'retry'} stored (seq ${a.seq})` };
        } catch (e) {
          return { id, ok: false, text: explain(e) };
        }
      }),
    );
    setBusy(false);
    setConfirming(null);
    setResults(out);
    onDone();
  };
  return (
    <div class="bulk" aria-live="polite">
      <span>{selected.length} selected</span>
      {actions.map((a) => (
        <button type="button" key={a} disabled={!selected.length || busy} onClick={() => setConfirming(a)} data-testid={`bulk-${a}`}>
          {a === 'cancel' ? 'Cancel…' : 'Retry…'}
        </button>
      ))}
      {confirming && (
        <div class="confirm" role="dialog" aria-modal="false" aria-label="confirm">
          <p>
            {confirming === 'cancel' ? 'Cancel' : 'Retry'} {selected.length} job{selected.length === 1 ? '' : 's'}?
          </p>
          <button type="button" class="danger" disabled={busy} onClick={() => run(confirming)} autoFocus data-testid="confirm-yes">
            Yes, {confirming}
          </button>
          <button type="button" onClick={() => setConfirming(null)}>
            No
          </button>
        </div>
      )}
      {results && (
        <ul class="results" data-testid="bulk-results">
          {results.map((r) => (
            <li key={r.id} class={r.ok ? 'ok' : 'bad'}>
              <a href={`/jobs/${r.id}`}>{shortId(r.id)}</a>: {r.text}
            </li>
          ))}
          <li>
            <button type="button" class="link" onClick={() => setResults(null)}>
              Dismiss
            </button>
          </li>
        </ul>
      )}
    </div>
  );
}
