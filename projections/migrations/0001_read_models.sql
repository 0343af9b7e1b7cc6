-- fetchml read models. Everything here is derived from the JetStream event log
-- and can be rebuilt from it (`fetchml projections rebuild jobs`).
-- Every row carries the stream sequence of the last event folded into it, and
-- each update is guarded by it, so replaying an event changes nothing.

CREATE TABLE projection_checkpoints (
    name        text PRIMARY KEY,
    last_seq    bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- admin: every job in full.
CREATE TABLE admin_jobs (
    id              uuid PRIMARY KEY,
    owner           text NOT NULL,
    state           text NOT NULL,
    attempt         integer NOT NULL,
    attempts_in_run integer NOT NULL,
    exit_code       integer,
    signal          integer,
    failure_class   text,
    reason          text,
    pool            text NOT NULL,
    priority        smallint NOT NULL,
    labels          text[] NOT NULL,
    experiment      text,
    tags            jsonb NOT NULL,
    command         jsonb NOT NULL,
    env             jsonb NOT NULL,
    working_dir     text,
    spec            jsonb NOT NULL,
    metrics         jsonb NOT NULL,
    worker          text,
    not_before      timestamptz,
    created_at      timestamptz NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL,
    last_seq        bigint NOT NULL
);
CREATE INDEX admin_jobs_created ON admin_jobs (created_at DESC, id DESC);
CREATE INDEX admin_jobs_state ON admin_jobs (state);

-- researcher: jobs by owner, with everything the owner may see of their own.
CREATE TABLE researcher_jobs (LIKE admin_jobs INCLUDING DEFAULTS);
ALTER TABLE researcher_jobs ADD PRIMARY KEY (owner, id);
CREATE UNIQUE INDEX researcher_jobs_id ON researcher_jobs (id);
CREATE INDEX researcher_jobs_created ON researcher_jobs (owner, created_at DESC, id DESC);

-- analyst: state, timing, pool and metrics. No command line, environment,
-- working directory, owner, tags, free-text reason or log, by construction.
CREATE TABLE analyst_jobs (
    id              uuid PRIMARY KEY,
    state           text NOT NULL,
    attempt         integer NOT NULL,
    exit_code       integer,
    failure_class   text,
    pool            text NOT NULL,
    priority        smallint NOT NULL,
    labels          text[] NOT NULL,
    experiment      text,
    metrics         jsonb NOT NULL,
    created_at      timestamptz NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL,
    last_seq        bigint NOT NULL
);
CREATE INDEX analyst_jobs_created ON analyst_jobs (created_at DESC, id DESC);

-- experiments: the last, lowest and highest value of each metric, per owner.
CREATE TABLE experiment_metrics (
    experiment  text NOT NULL,
    owner       text NOT NULL,
    metric      text NOT NULL,
    last_value  double precision NOT NULL,
    last_step   bigint,
    last_job    uuid NOT NULL,
    min_value   double precision NOT NULL,
    max_value   double precision NOT NULL,
    updated_at  timestamptz NOT NULL,
    last_seq    bigint NOT NULL,
    PRIMARY KEY (experiment, owner, metric)
);

-- workers: live and history.
CREATE TABLE workers (
    id          text PRIMARY KEY,
    pool        text NOT NULL,
    labels      text[] NOT NULL,
    concurrency integer NOT NULL,
    host        text NOT NULL,
    pid         integer NOT NULL,
    state       text NOT NULL,
    started_at  timestamptz NOT NULL,
    stopped_at  timestamptz,
    last_seq    bigint NOT NULL
);

-- per-job timelines (owner and admin only).
CREATE TABLE job_timeline (
    job_id      uuid NOT NULL,
    seq         bigint NOT NULL,
    type        text NOT NULL,
    attempt     integer,
    actor       jsonb NOT NULL,
    occurred_at timestamptz NOT NULL,
    PRIMARY KEY (job_id, seq)
);
