-- Runs and jobs the control plane names by id (issue 14: a Redis queue restarted without
-- persistence starts its ids again from 1). The highest of each is the floor the queue's
-- sequences are raised to, read as MAX() through these indexes; a step finds its release by
-- pipeline id (the partial index covered only building releases).
CREATE INDEX releases_by_pipeline ON releases (pipeline_id);
CREATE INDEX release_steps_by_job ON release_steps (job_id);
CREATE INDEX job_runs_by_queue_job ON job_runs (queue_job_id);
