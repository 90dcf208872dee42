"""--trace for `launch`: clear an earlier run's leftover parts before a job, and fold the parts
its processes wrote (server, launcher, and later the workers) into the one file after it."""

from __future__ import annotations

from collections.abc import Callable

from numpy_cnn.trace import OFF, Trace, merge_parts, remove_parts


def clear_parts(config) -> None:
    if config.trace:
        remove_parts(config.trace)


def collect_trace(config, trace: Trace = OFF, say: Callable[[str], None] = print) -> None:
    """Save this process's `trace`, merge every part into --trace and say where it is."""
    if not config.trace:
        return
    try:
        trace.save()
        found = merge_parts(config.trace)
    except OSError as e:
        say(f"could not write --trace {config.trace}: {e}")
        return
    if found:
        say(f"trace in {config.trace} (open it in ui.perfetto.dev or chrome://tracing)")
