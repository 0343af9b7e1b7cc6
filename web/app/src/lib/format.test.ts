import { describe, expect, it } from 'vitest';
import { duration, metric, percent, runTime, shortId } from './format';
import { samples } from './prom';
import { abilities } from './session';

describe('formats', () => {
  it('gives durations with units', () => {
    expect(duration(850)).toBe('850 ms');
    expect(duration(4200)).toBe('4.2 s');
    expect(duration(42_000)).toBe('42 s');
    expect(duration(3 * 60_000 + 5000)).toBe('3 min 5 s');
    expect(duration(3 * 3600_000 + 12 * 60_000)).toBe('3 h 12 min');
    expect(duration(-1)).toBe('—');
    expect(runTime(null, null)).toBe('—');
    expect(runTime('2026-11-30T12:00:00Z', '2026-11-30T12:00:02Z')).toBe('2.0 s');
  });

  it('gives metric values readably', () => {
    expect(metric(0.123456)).toBe('0.1235');
    expect(metric(1e-5)).toBe('1.000e-5');
    expect(metric(null)).toBe('—');
    expect(percent(41.6)).toBe('42 %');
    expect(shortId('01a22d0a-04a1-7287-8ac2-c06a1fe0fd85')).toBe('01a22d0a…fd85');
  });
});

describe('queue depth from /metrics', () => {
  it('reads labelled samples and skips the rest', () => {
    const text = [
      '# HELP fetchml_queue_depth jobs waiting',
      '# TYPE fetchml_queue_depth gauge',
      'fetchml_queue_depth{pool="gpu",priority="9"} 3',
      'fetchml_queue_depth{pool="default",priority="5"} 12',
      'fetchml_queue_depth_other 1',
      'fetchml_queue_oldest_wait_seconds{pool="gpu",priority="9"} 4.5',
    ].join('\n');
    expect(samples(text, 'fetchml_queue_depth')).toEqual([
      { labels: { pool: 'gpu', priority: '9' }, value: 3 },
      { labels: { pool: 'default', priority: '5' }, value: 12 },
    ]);
    expect(samples(text, 'fetchml_queue_oldest_wait_seconds')[0].value).toBe(4.5);
  });
});

describe('what a role is offered', () => {
  it('offers an analyst no command, log, cancel or owner', () => {
    const a = abilities(['jobs:read:summary', 'experiments:read', 'workers:read']);
    expect(a).toMatchObject({ full: false, cancel: false, retry: false, logs: false, create: false });
    const r = abilities(['jobs:create', 'jobs:read', 'jobs:cancel', 'jobs:retry', 'jobs:logs']);
    expect(r).toMatchObject({ full: true, cancel: true, retry: true, logs: true });
  });
});
