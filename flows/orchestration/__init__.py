"""Prefect: the flows over the jobs, the deployments that serve them, and the demo."""
