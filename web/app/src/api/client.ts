// The one HTTP client of the dashboard: the session token, errors as values
// with the api's stable codes, and nothing else. The token lives in
// sessionStorage (per tab, gone when the tab closes), never in a cookie, so no
// other site can make the browser send it.
import type { ErrorBody } from './types';

const TOKEN_KEY = 'fetchml.session';

export type Session = { token: string; user: string; role: string; expires_at: string };

export function loadSession(): Session | null {
  try {
    const raw = sessionStorage.getItem(TOKEN_KEY);
    return raw ? (JSON.parse(raw) as Session) : null;
  } catch {
    return null;
  }
}

export function saveSession(s: Session | null) {
  if (s) sessionStorage.setItem(TOKEN_KEY, JSON.stringify(s));
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** An answer that is not 2xx: the api's code and message, or the network's. */
export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
  ) {
    super(message);
  }
}

// Every request in flight with the session's token, so that signing out can
// stop them before the token is revoked (they would come back 401 otherwise).
let inflight = new AbortController();
export function abortInflight() {
  inflight.abort();
  inflight = new AbortController();
}

let onUnauthenticated: () => void = () => {};
/** Called when a request answers 401 (the session expired or was revoked). */
export function setOnUnauthenticated(f: () => void) {
  onUnauthenticated = f;
}

export async function request<T>(
  path: string,
  init: { method?: string; body?: unknown; token?: string | null; signal?: AbortSignal; text?: boolean } = {},
): Promise<T> {
  const headers: Record<string, string> = {};
  const token = init.token === undefined ? loadSession()?.token : init.token;
  if (token) headers.Authorization = `Bearer ${token}`;
  if (init.body !== undefined) headers['Content-Type'] = 'application/json';
  let r: Response;
  try {
    r = await fetch(path, {
      method: init.method ?? 'GET',
      headers,
      body: init.body === undefined ? undefined : JSON.stringify(init.body),
      signal: init.signal ? AbortSignal.any([init.signal, inflight.signal]) : inflight.signal,
      credentials: 'omit',
    });
  } catch (e) {
    if ((e as Error).name === 'AbortError') throw e;
    throw new ApiError(0, 'network', 'The api did not answer. Is it running? Check the connection and retry.');
  }
  if (r.status === 204) return undefined as T;
  const text = await r.text();
  if (r.ok && init.text) return text as T;
  let body: unknown = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!r.ok) {
    const err = (body as ErrorBody | null)?.error;
    if (r.status === 401 && token && init.token === undefined) onUnauthenticated();
    throw new ApiError(r.status, err?.code ?? `http_${r.status}`, err?.message ?? `The api answered ${r.status}.`);
  }
  return body as T;
}

/** A body that is not one JSON value (NDJSON logs), as text; errors as [`request`]. */
export function fetchText(path: string): Promise<string> {
  return request<string>(path, { text: true });
}

/** Query string from the set values only. */
export function qs(params: Record<string, string | number | boolean | null | undefined>): string {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') u.set(k, String(v));
  const s = u.toString();
  return s ? `?${s}` : '';
}

/** What to tell a person about an error: the api's message and what to do. */
export function explain(e: unknown): string {
  if (!(e instanceof ApiError)) return String((e as Error)?.message ?? e);
  switch (e.code) {
    case 'unauthenticated':
      return 'That key or session is not valid. Check the key (it starts with fml_) and sign in again.';
    case 'too_many_attempts':
      return 'Too many failed attempts from this address. Wait a minute, then try again.';
    case 'forbidden':
      return `Your role may not do this (${e.message}). Ask an admin if you need it.`;
    case 'read_model_unavailable':
      return 'The job list is unavailable (its database is down). Commands still work; this page retries by itself.';
    case 'as_of_too_far':
      return 'That point is too far back to rebuild here. Pick a later point.';
    default:
      return e.message;
  }
}
