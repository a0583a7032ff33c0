"""``guestkit-worker vulndb info [--vuln-db DIR] [--vuln-db-max-age DURATION] [--json]``: index the
offline OSV database as a worker would and print what it holds: records per ecosystem, the
newest ``modified``, the age, and the records and files it had to skip.

Exit status (:data:`.exitcodes.VULNDB_STATUSES`): 0 readable and within --vuln-db-max-age,
1 unavailable (not set, not a directory, nothing readable), 2 usage, 3 older than
--vuln-db-max-age (the information is still printed).
"""

from __future__ import annotations

import json
import sys

from .exitcodes import EXIT_OK, EXIT_VULNDB_STALE, EXIT_VULNDB_UNAVAILABLE
from .options import RUN_OPTIONS, add_options, setting, usage_error


def add_vulndb_command(sub) -> None:
    vulndb = sub.add_parser("vulndb", help="show what the offline vulnerability database holds",
                            description="Commands about the offline OSV database of vulnerability scans.")
    actions = vulndb.add_subparsers(dest="vulndb_command", metavar="ACTION")
    info = actions.add_parser("info", help="records per ecosystem, newest modified, age, skipped records",
                              description="Index the database as a worker would (the same checks and "
                                          "limits) and print records per ecosystem, the newest modified "
                                          "time, the age and the records and files that were skipped.")
    add_options(info, RUN_OPTIONS, {"vuln_db", "vuln_db_max_age"})
    info.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _text(info: dict, max_age: float, stale: bool) -> str:
    from ..vulns.osvdb import printable
    from ..vulns.scanning import human_duration
    age = info["age_seconds"]
    lines = [f"database: {info['path']}",
             f"records: {info['records']} (withdrawn {info['withdrawn']}; skipped {info['skipped']} "
             f"records and {info['skipped_files']} files)",
             f"newest modified: {info['newest_modified'] or '-'}"
             + (f" (age {human_duration(age)})" if age is not None else ""),
             f"max age: {human_duration(max_age) if max_age else 'no limit'}"
             + (" - STALE: scans fail with VULN_DB_STALE" if stale else ""),
             f"indexed in: {info['index_seconds']:.2f} s",
             f"{'ecosystem':<32} records"]
    lines += [f"{printable(eco):<32} {count}" for eco, count in info["by_ecosystem"].items()]
    lines += [f"skipped: {w}" for w in info["warnings"]]
    return "\n".join(lines)


def cmd_vulndb(args) -> int:
    if args.vulndb_command != "info":
        return usage_error("vulndb needs an action: guestkit-worker vulndb info [--vuln-db DIR] [--json]")
    from ..vulns.osvdb import ScanError, load_database
    path = setting(args, "vuln_db")
    max_age = setting(args, "vuln_db_max_age")
    try:
        database = load_database(path)
    except ScanError as exc:
        print(f"guestkit-worker: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_VULNDB_UNAVAILABLE
    info = database.info()
    stale = bool(max_age) and info["age_seconds"] is not None and info["age_seconds"] > max_age
    if args.json:
        print(json.dumps(dict(info, max_age_seconds=max_age, stale=stale), indent=2))
    else:
        print(_text(info, max_age, stale))
    return EXIT_VULNDB_STALE if stale else EXIT_OK
