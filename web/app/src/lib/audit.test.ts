import { describe, expect, it } from 'vitest';
import { actorName, auditFilters, auditQuery, auditSummary } from './audit';
import { abilities } from './session';
import { toLocal, toRfc3339 } from './format';

describe('audit filters', () => {
  it('reads the URL, keeping only values the api accepts', () => {
    const f = auditFilters({
      actor: ' alice ',
      family: 'user',
      outcome: 'refused',
      since: '2026-11-30T10:00:00+01:00',
      until: 'not a time',
    });
    expect(f).toEqual({ actor: 'alice', family: 'user', outcome: 'refused', since: '2026-11-30T09:00:00.000Z', until: '' });
    expect(auditFilters({ family: 'jobs', outcome: 'maybe', actor: 'a.b' })).toEqual({
      actor: '',
      family: '',
      outcome: '',
      since: '',
      until: '',
    });
  });

  it('asks the api for the set filters and the cursor only', () => {
    const f = auditFilters({ actor: 'root', outcome: 'accepted' });
    expect(auditQuery(f, null)).toEqual({ limit: 100, actor: 'root', outcome: 'accepted' });
    expect(auditQuery(f, 42, 50)).toEqual({ limit: 50, actor: 'root', outcome: 'accepted', cursor: 42 });
    expect(auditQuery(auditFilters({}), 0)).toEqual({ limit: 100, cursor: 0 });
  });

  it('converts the time range between the viewer zone and RFC 3339 both ways', () => {
    const iso = toRfc3339('2026-11-30T12:34');
    expect(iso).toMatch(/^2026-11-(29|30)T\d\d:\d\d:00\.000Z$/);
    expect(toLocal(iso)).toBe('2026-11-30T12:34');
    expect(toRfc3339('')).toBe('');
    expect(toRfc3339('garbage')).toBe('');
  });
});

describe('audit entries', () => {
  it('names every kind of actor', () => {
    expect(actorName({ kind: 'user', name: 'alice' })).toEqual({ kind: 'user', name: 'alice' });
    expect(actorName({ kind: 'worker', id: 'w-1' })).toEqual({ kind: 'worker', name: 'w-1' });
    expect(actorName({ kind: 'system', component: 'reconciler' })).toEqual({ kind: 'system', name: 'reconciler' });
    expect(actorName(null)).toEqual({ kind: 'unknown', name: '—' });
  });

  it('says what a refusal, a login and a job event were', () => {
    expect(
      auditSummary({ type: 'access_denied', payload: { permission: 'jobs:create', resource: 'jobs', source: '127.0.0.1' } }),
    ).toBe('refused jobs:create on jobs');
    expect(auditSummary({ type: 'access_denied', payload: { permission: 'jobs:cancel', resource: 'job', count: 3 } })).toBe(
      'refused jobs:cancel on job (3 times)',
    );
    expect(auditSummary({ type: 'user_authenticated', payload: { method: 'login', source: '::1' } })).toBe(
      'signed in (session login)',
    );
    expect(auditSummary({ type: 'authentication_failed', payload: { method: 'api_key', reason: 'unknown key' } })).toBe(
      'failed api_key: unknown key',
    );
    expect(auditSummary({ type: 'job_failed', payload: { attempt: 2, class: 'user_error', exit_code: 1, reason: 'exit 1' } })).toBe(
      'attempt 2, class user_error, exit code 1, reason exit 1',
    );
    expect(auditSummary({ type: 'job_queued', payload: { owner: 'alice', spec: {} } })).toBe('owner alice');
    expect(auditSummary({ type: 'x', payload: null })).toBe('');
  });

  it('offers the page to audit:read only', () => {
    expect(abilities(['audit:read', 'jobs:read:all']).audit).toBe(true);
    expect(abilities(['jobs:read', 'jobs:create']).audit).toBe(false);
  });
});
