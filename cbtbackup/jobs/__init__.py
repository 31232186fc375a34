"""Jobs: a job file names a repository and its sources; running it backs each source up, applies retention,
checks a sample, runs the admin's hooks, notifies and writes metrics. A layer above the pipelines, beside the
CLI: ``cbtbackup run`` only loads the file and calls :func:`cbtbackup.jobs.runner.run_job`."""
