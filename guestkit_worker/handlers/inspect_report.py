"""The sections of an inspection report and the summary of it that becomes the job result's
``data`` (the full report is a file; see :mod:`.inspect`)."""

from collections.abc import Mapping
from typing import Any, Optional

SECTIONS = ("packages", "services", "users", "network", "security", "storage", "databases")
OPTION_FLAGS = {f"include_{s}": s for s in SECTIONS}
SAMPLE_LIMIT = 25


def effective_sections(options: Optional[Mapping[str, Any]]) -> set[str]:
    """The set of report sections for the payload's options: every section (each costs a few
    file reads in an appliance that is running anyway) but those whose ``include_*`` flag is
    false (see the docstring of :mod:`.inspect`)."""
    options = options or {}
    return {section for flag, section in OPTION_FLAGS.items() if options.get(flag) is not False}


def _sample(items, limit=SAMPLE_LIMIT):
    items = list(items or [])
    return items[:limit], len(items) > limit


def summarize(report: Mapping[str, Any]) -> dict[str, Any]:
    """The job result's data: OS block, counts, and at most SAMPLE_LIMIT entries per list."""
    out = {key: report[key] for key in ("image", "engine", "sections", "operating_system",
                                        "mountpoints", "report_path") if key in report}
    if "packages" in report:
        pk = report["packages"]
        sample, more = _sample(pk.get("packages"))
        out["packages"] = {"count": pk.get("count", 0), "manager": pk.get("manager"),
                           "sample": [{k: p.get(k) for k in ("name", "version", "release", "arch")}
                                      for p in sample], "truncated": more}
    if "users" in report:
        us = report["users"]
        fields = ("name", "uid", "home", "shell", "login", "system")
        accounts = us.get("accounts", [])
        sample, more = _sample(accounts)
        out["users"] = {"count": us.get("count", 0), "login_count": us.get("login_count", 0),
                        "login_users": [a["name"] for a in accounts if a.get("login")][:SAMPLE_LIMIT],
                        "accounts": [{k: a.get(k) for k in fields} for a in sample],
                        "truncated": more}
    if "services" in report:
        sv = report["services"]
        sample, more = _sample(u["name"] for u in sv.get("enabled", []))
        out["services"] = {"count": sv.get("count", 0), "manager": sv.get("manager"),
                           "enabled": sample, "truncated": more}
    if "network" in report:
        nw = report["network"]
        out["network"] = {"hostname": nw.get("hostname"),
                          "dns_servers": _sample(nw.get("dns_servers"))[0],
                          "interfaces": _sample(nw.get("interfaces"))[0]}
    if "security" in report:
        out["security"] = report["security"]
    if "filesystems" in report:
        sample, more = _sample(report["filesystems"])
        out["filesystems"] = {"count": len(report["filesystems"]), "sample": sample, "truncated": more}
    if "databases" in report:
        out["databases"] = report["databases"]
    warnings = report.get("warnings") or []
    out["warnings"] = {"count": len(warnings), "sample": warnings[:5]}
    return out
