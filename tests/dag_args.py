"""Snakemake arguments shared by the tests that run the DAG."""

#: every model job at one thread, so that ``--cores 2`` runs two jobs at once: a tiny model's job is mostly Python
#: start-up and imports (one thread), which two jobs then overlap. Running jobs side by side also exercises what a
#: cluster or a many-core machine does with the DAG (runs sharing the backbone cache and the knowledge space).
#: ``--set-threads`` reads every argument after it: put targets before these.
PARALLEL_JOBS = ("--set-threads", "train=1", "evaluate=1", "knowledge_space=1", "retention_base=1",
                 "retention_run=1")
