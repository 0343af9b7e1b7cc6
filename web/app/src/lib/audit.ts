// The audit page's filters (held in the URL, so a link shows the same
// selection) and how one entry of the trail reads to a person.
import type { AuditEntry, AuditOutcome } from '../api/types';

export const AUDIT_FAMILIES = ['job', 'user', 'worker', 'audit'] as const;

export type AuditFilters = {
  actor: string;
  family: string;
  outcome: '' | AuditOutcome;
  /** RFC 3339, inclusive. */
  since: string;
  /** RFC 3339, exclusive. */
  until: string;
};

export function auditFilters(q: Record<string, string | undefined>): AuditFilters {
  const time = (v: string | undefined) => (v && !Number.isNaN(Date.parse(v)) ? new Date(v).toISOString() : '');
  const family = (AUDIT_FAMILIES as readonly string[]).includes(q.family ?? '') ? (q.family as string) : '';
  const outcome = q.outcome === 'accepted' || q.outcome === 'refused' ? q.outcome : '';
  // The api refuses these characters in an actor (subject tokens); a person
  // typing one gets nothing rather than an error.
  const actor = (q.actor ?? '').trim();
  return {
    actor: /[.*>\p{Cc}]/u.test(actor) ? '' : actor.slice(0, 200),
    family,
    outcome,
    since: time(q.since),
    until: time(q.until),
  };
}

/** The query of `GET /v1/audit` for these filters (the set ones only). */
export function auditQuery(f: AuditFilters, cursor: number | null, limit = 100): Record<string, string | number> {
  const q: Record<string, string | number> = { limit };
  for (const k of ['actor', 'family', 'outcome', 'since', 'until'] as const) if (f[k]) q[k] = f[k];
  if (cursor !== null) q.cursor = cursor;
  return q;
}

/** Who caused it: a user's name, a worker's id or a component's name. */
export function actorName(actor: unknown): { kind: string; name: string } {
  if (actor && typeof actor === 'object') {
    const a = actor as Record<string, unknown>;
    const kind = typeof a.kind === 'string' ? a.kind : 'unknown';
    for (const k of ['name', 'id', 'component']) if (typeof a[k] === 'string') return { kind, name: a[k] as string };
    return { kind, name: '—' };
  }
  return { kind: 'unknown', name: '—' };
}

/** One line on what the event says, from the fields an auditor looks for. */
export function auditSummary(e: Pick<AuditEntry, 'type' | 'payload'>): string {
  const p = (e.payload && typeof e.payload === 'object' ? e.payload : {}) as Record<string, unknown>;
  const s = (k: string) => (typeof p[k] === 'string' || typeof p[k] === 'number' ? String(p[k]) : '');
  switch (e.type) {
    case 'access_denied': {
      const n = typeof p.count === 'number' && p.count > 1 ? ` (${p.count} times)` : '';
      return `refused ${s('permission')} on ${s('resource')}${n}`;
    }
    case 'authentication_failed':
      return `failed ${s('method')}: ${s('reason')}`;
    case 'user_authenticated':
      return `signed in (${s('method') === 'login' ? 'session login' : s('method')})`;
    case 'user_logged_out':
      return 'signed out';
    default: {
      const parts = ['attempt', 'worker', 'class', 'exit_code', 'reason']
        .filter((k) => s(k) !== '')
        .map((k) => `${k.replace('_', ' ')} ${s(k)}`);
      if (typeof p.owner === 'string') parts.unshift(`owner ${p.owner}`);
      return parts.join(', ');
    }
  }
}
