"""The `launch` command: start and supervise one data-parallel training job."""
