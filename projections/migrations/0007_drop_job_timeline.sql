-- A job's timeline is read from the log (GET /v1/jobs/{id}/events, and the
-- dashboard's history reads with as_of_seq): no query ever read this table.
-- Writing it cost a row and an index entry per event, about a fifth of
-- Postgres's CPU per job (BENCHMARKS.md, thirteenth session).
DROP TABLE job_timeline;
