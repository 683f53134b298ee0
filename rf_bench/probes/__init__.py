"""Probes: measurements over trained runs. See ``base.py`` for the protocol and discovery."""
from .base import Probe, ProbeContext, ProbeOutput, ReportSection, available_probes, resolve_suite, run_suite

__all__ = ["Probe", "ProbeContext", "ProbeOutput", "ReportSection", "available_probes", "resolve_suite", "run_suite"]
