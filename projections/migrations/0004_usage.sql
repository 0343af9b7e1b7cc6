-- Usage accounting (see projections/src/usage.rs): what each attempt held
-- and for how long, from `job_started` to the event that ended it, split at
-- UTC midnight. Times in microseconds, memory in MB-seconds, all integers so
-- the live projector and a rebuild sum to the same values.

-- Attempts running now, with what their placement holds.
CREATE TABLE usage_open_attempts (
    job_id      uuid PRIMARY KEY,
    attempt     integer NOT NULL,
    owner       text NOT NULL,
    pool        text NOT NULL,
    started_at  timestamptz NOT NULL,
    gpus        bigint NOT NULL,
    cpus        bigint NOT NULL,
    memory_mb   bigint NOT NULL,
    last_seq    bigint NOT NULL
);

-- Ended attempts per owner, pool and day (groups are aggregated at query
-- time: membership is a setting, not a fact of the log).
CREATE TABLE usage_daily (
    owner       text NOT NULL,
    pool        text NOT NULL,
    day         date NOT NULL,
    attempts    bigint NOT NULL,
    slot_us     bigint NOT NULL,
    gpu_us      bigint NOT NULL,
    cpu_us      bigint NOT NULL,
    memory_mb_s bigint NOT NULL,
    last_seq    bigint NOT NULL,
    PRIMARY KEY (owner, pool, day)
);
CREATE INDEX usage_daily_day ON usage_daily (day);

-- analyst: the same per pool and day. No owner column, by construction.
CREATE TABLE analyst_usage_daily (
    pool        text NOT NULL,
    day         date NOT NULL,
    attempts    bigint NOT NULL,
    slot_us     bigint NOT NULL,
    gpu_us      bigint NOT NULL,
    cpu_us      bigint NOT NULL,
    memory_mb_s bigint NOT NULL,
    last_seq    bigint NOT NULL,
    PRIMARY KEY (pool, day)
);
