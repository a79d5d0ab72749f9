"""flows: the command line, the jobs and the Prefect flows.

User task specs in the folders of TTFT_TASK_PATH (adapters.task_networks) are registered here, so
every job and flow can name those tasks as it names the built-in ones."""

import warnings

with warnings.catch_warnings():
    # compressai, imported on the way, decorates with torch.jit.script, which torch now deprecates
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    from adapters.task_networks import register_user_tasks

register_user_tasks()
