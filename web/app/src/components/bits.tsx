import type { ComponentChildren } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { STATE_LABEL } from '../lib/format';

export function StateBadge({ state }: { state: string }) {
  return (
    <span class={`badge st-${state}`} data-state={state}>
      {STATE_LABEL[state] ?? state}
    </span>
  );
}

export function ProgressBar({ value, state }: { value: number | null | undefined; state?: string }) {
  if (value === null || value === undefined) {
    return <span class="muted">{state === 'running' ? 'running' : '—'}</span>;
  }
  const v = Math.max(0, Math.min(100, value));
  return (
    <span class="progress" role="progressbar" aria-valuemin={0} aria-valuemax={100} aria-valuenow={Math.round(v)}>
      <span class="bar" style={{ width: `${v}%` }} />
      <span class="num">{Math.round(v)} %</span>
    </span>
  );
}

export function ErrorBox({ error, retry }: { error: string | null; retry?: () => void }) {
  if (!error) return null;
  return (
    <div class="error" role="alert">
      {error}{' '}
      {retry && (
        <button type="button" onClick={retry}>
          Retry
        </button>
      )}
    </div>
  );
}

export function Empty({ children }: { children: ComponentChildren }) {
  return <div class="empty">{children}</div>;
}

/** A text filter applied on Enter or when the field loses focus, not per keystroke. */
export function TextFilter(props: { label: string; value: string | undefined; onSet: (v: string) => void; placeholder?: string }) {
  const [v, setV] = useState(props.value ?? '');
  useEffect(() => setV(props.value ?? ''), [props.value]);
  return (
    <label>
      {props.label}
      <input
        type="search"
        value={v}
        placeholder={props.placeholder}
        onInput={(e) => setV((e.target as HTMLInputElement).value)}
        onChange={() => props.onSet(v.trim())}
        onKeyDown={(e) => e.key === 'Enter' && props.onSet(v.trim())}
      />
    </label>
  );
}
