-- Room on each page for a row's next versions. A job row is written when it
-- is queued and updated when it starts and ends; an update that changes no
-- indexed column and finds room on its page is a heap-only tuple (HOT): no
-- new entry in any of the table's indexes. The researcher and analyst rows
-- qualify (their indexes hold only the id, owner and creation time); the
-- admin rows do not (their `state` index changes with every event), so
-- their pages stay full.
ALTER TABLE researcher_jobs SET (fillfactor = 70);
ALTER TABLE analyst_jobs SET (fillfactor = 70);
