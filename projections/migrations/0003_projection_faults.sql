-- Events (or parts of events) the read models could not store: the projector
-- records them here, in the same transaction as its checkpoint, and goes on,
-- so that no event the log can hold stops it. `/readyz` counts them. A
-- rebuild reproduces the same rows (and skips the same events).
CREATE TABLE projection_faults (
    seq         bigint NOT NULL,
    -- `jobs` (the whole event is missing) or the one model that misses part
    -- of it (`experiment_metrics`).
    model       text NOT NULL,
    code        text NOT NULL,
    message     text NOT NULL,
    PRIMARY KEY (seq, model)
);
