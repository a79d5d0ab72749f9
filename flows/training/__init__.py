"""Training: base codecs (base_codec) and the stage-1 task adapters (task_adapter), resumable."""
