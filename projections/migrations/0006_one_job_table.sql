-- One job table, read through a view per role. The three role tables held the
-- same job three times: every job event was written to three tables and
-- their eight indexes, about a quarter of Postgres's CPU per job (BENCHMARKS.md,
-- twelfth session). Each role still reads only its own relation: a view
-- exposes exactly the columns the role's table had, so what an analyst's
-- query can reach is still fixed by construction, not by a WHERE clause.
ALTER TABLE admin_jobs RENAME TO jobs;
ALTER INDEX admin_jobs_pkey RENAME TO jobs_pkey;
ALTER INDEX admin_jobs_created RENAME TO jobs_created;
ALTER INDEX admin_jobs_state RENAME TO jobs_state;
-- What researcher_jobs' own index served: a researcher's jobs, newest first.
CREATE INDEX jobs_owner_created ON jobs (owner, created_at DESC, id DESC);
DROP TABLE researcher_jobs;
DROP TABLE analyst_jobs;

-- admin: every job in full.
CREATE VIEW admin_jobs AS SELECT * FROM jobs;
-- researcher: the same columns; queries add the owners the caller may read.
CREATE VIEW researcher_jobs AS SELECT * FROM jobs;
-- analyst: state, timing, pool and metrics. No command line, environment,
-- working directory, owner, tags, free-text reason or log, by construction.
CREATE VIEW analyst_jobs AS
    SELECT id, state, attempt, exit_code, failure_class, pool, priority, labels, experiment, metrics,
        created_at, started_at, finished_at, updated_at, last_seq
    FROM jobs;
