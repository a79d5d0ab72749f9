"""flows: the command line, the jobs and the Prefect flows (importing it does nothing else)."""
