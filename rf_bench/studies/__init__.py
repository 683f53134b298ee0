"""Studies shipped with rf-bench: sweep files (``<name>.toml``) that ``rf-bench study <name>`` runs."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import List, Optional

__all__ = ["available_studies", "study_text", "record_study_time", "describe_machine", "cpu_seconds"]


def available_studies() -> List[str]:
    """The names of the shipped studies."""
    return sorted(p.name[:-5] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def study_text(name: str) -> str:
    """The sweep file of a shipped study; a one-line error names the studies there are."""
    if name not in available_studies():
        raise ValueError(f"unknown study {name!r}; choose one of {', '.join(available_studies())}")
    return resources.files(__name__).joinpath(f"{name}.toml").read_text()


def describe_machine() -> str:
    """One line naming the machine a study ran on: processor, CPUs, GPUs, Python and torch."""
    import os
    import platform

    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    accel = f", {gpus} x {torch.cuda.get_device_name(0)}" if gpus else ", no GPU"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs{accel}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def cpu_seconds() -> Optional[float]:
    """CPU time (user + system) used so far by this process and its finished child processes (a sweep's workers),
    or None where the platform does not count it."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def record_study_time(path: "Path", *, name: str, runs: int, done_before: int, jobs: int, started: float,
                      finished: float, cpu_s: Optional[float] = None) -> dict:
    """Add one invocation to ``path`` (``study.json``): its wall time, the runs it found done, the machine, and the
    CPU time its processes used (``cpu_s``, where measured).

    A study resumed over several invocations keeps one entry per invocation; ``wall_s`` is their sum, so it is
    the study's cost from its first run to its report, and ``cpu_s`` the sum where every invocation measured it.
    CPU time over wall time says how many cores the study kept busy: below its worker count, it shared the machine.
    The file is replaced atomically.
    """
    import json
    import time

    from ..results import write_json_atomic

    path = Path(path)
    facts = json.loads(path.read_text()) if path.exists() else {"name": name, "invocations": []}
    machine = describe_machine()
    facts["invocations"].append(dict(
        started=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        wall_s=round(finished - started, 1), runs_done_before=done_before, jobs=jobs, machine=machine,
        **({} if cpu_s is None else {"cpu_s": round(cpu_s, 1)})))
    facts.update(runs=runs, jobs=jobs, machine=machine,
                 wall_s=round(sum(i["wall_s"] for i in facts["invocations"]), 1),
                 finished=time.strftime("%Y-%m-%d %H:%M", time.localtime(finished)))
    if all("cpu_s" in i for i in facts["invocations"]):
        facts["cpu_s"] = round(sum(i["cpu_s"] for i in facts["invocations"]), 1)
    else:  # an invocation did not measure it: a partial sum would understate the study's cost
        facts.pop("cpu_s", None)
    write_json_atomic(path, facts)
    return facts
