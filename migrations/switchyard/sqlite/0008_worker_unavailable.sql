-- Issue 15: what a worker process cannot run, and why (a JSON object: job kind -> reason, e.g.
-- {"build": "no Docker engine at unix:///var/run/docker.sock"}), so a release whose next step no
-- live worker can run says so instead of staying `building`.
ALTER TABLE workers ADD COLUMN unavailable TEXT NOT NULL DEFAULT '{}';
