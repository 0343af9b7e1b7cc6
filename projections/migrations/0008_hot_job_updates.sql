-- Job rows updated in place. A job's row is written when it is queued and
-- updated when it starts and ends. `jobs_state` was the one index on a column
-- that changes with those updates, so every update added an entry to every
-- index of the table (none was HOT). Without it, and with room on each page
-- for a row's next versions, most updates are heap-only tuples: no index
-- entry at all (BENCHMARKS.md, thirteenth session: Postgres CPU per job
-- about a fifth lower).
--
-- What the index served, the count of jobs per state (the `fetchml_jobs`
-- gauge and the unfiltered counts of every job), is kept by the projector in
-- `job_counts`, in the same transaction as the rows it counts.
CREATE TABLE job_counts (
    state text PRIMARY KEY,
    n     bigint NOT NULL
);
INSERT INTO job_counts (state, n) SELECT state, count(*) FROM jobs GROUP BY state;
DROP INDEX jobs_state;
ALTER TABLE jobs SET (fillfactor = 70);
