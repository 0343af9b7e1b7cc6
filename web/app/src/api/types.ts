// The api's JSON, named once. Every type comes from src/api/schema.d.ts, which
// `npm run types` generates from docs/openapi.json (the api's own description):
// pages import from here and never declare the api's shapes themselves.
import type { components } from './schema';

type S = components['schemas'];

export type JobStatus = S['JobStatus'];
export type FailureClass = S['FailureClass'];
export type JobRow = S['JobRow'];
export type JobPage = S['JobPage'];
export type JobCounts = S['JobCounts'];
export type AsOfJob = S['AsOfJob'];
export type AsOfPage = S['AsOfPage'];
export type JobsAnswer = S['JobsAnswer'];
export type JobView = S['JobView'];
export type JobSummary = S['JobSummary'];
export type JobAnswer = S['JobAnswer'];
export type JobSpec = S['JobSpec'];
export type Metric = S['Metric'];
export type StoredEvent = S['StoredEvent'];
export type EventList = S['EventList'];
export type LogLine = S['LogLine'];
export type Experiment = S['Experiment'];
export type ExperimentList = S['ExperimentList'];
export type MetricSummary = S['MetricSummary'];
export type Worker = S['Worker'];
export type WorkerList = S['WorkerList'];
export type LoginAnswer = S['LoginAnswer'];
export type Whoami = S['Whoami'];
export type CommandAccepted = S['CommandAccepted'];
export type ErrorBody = S['ErrorBody'];
export type Ready = S['Ready'];
export type StreamClientMessage = S['StreamClientMessage'];
export type StreamServerMessage = S['StreamServerMessage'];
export type StreamTarget = S['StreamTarget'];
export type StreamFrom = S['StreamFrom'];
export type AuditEntry = S['AuditEntry'];
export type AuditPage = S['AuditPage'];
export type AuditOutcome = S['AuditOutcome'];

/** A row of the job list, live or as of a point in time (both carry these). */
export type ListedJob = JobRow | AsOfJob;

export const JOB_STATES: JobStatus[] = [
  'queued',
  'running',
  'retry_scheduled',
  'succeeded',
  'failed',
  'cancelled',
  'timed_out',
  'dead_lettered',
];

export const TERMINAL: ReadonlySet<JobStatus> = new Set(['succeeded', 'failed', 'cancelled', 'timed_out', 'dead_lettered']);
export const RETRYABLE: ReadonlySet<JobStatus> = new Set(['failed', 'timed_out', 'dead_lettered', 'cancelled']);

/** A full view carries the spec; a summary (analysts) does not. */
export function isFullView(j: JobAnswer): j is JobView {
  return 'spec' in j;
}

/** A stream message of a subscription (the `message` variant). */
export type StreamMessage = Extract<StreamServerMessage, { type: 'message' }>;

// The progress stream's messages (`message.data` on a `progress` subscription,
// docs/streams.md). The OpenAPI description types `data` as a free object, so
// these three are kept here, once.
export type ProgressLog = { job_id: string; attempt: number; stream: string; line: string; at: string };
export type ProgressMetric = { job_id: string; attempt: number; name: string; value: number; step: number | null; at: string };
export type ProgressPercent = { job_id: string; attempt: number; percent: number; at: string };
