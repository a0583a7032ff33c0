"""contrib/README.md's alert tables list every rule of the shipped rules files, with its
``for:`` and ``severity`` (a rule added to a file and not to its table fails here)."""

import os
import re

from conftest import ROOT

CONTRIB = os.path.join(ROOT, "contrib")
#: rules file -> the heading of the section whose table lists it
TABLES = {"prometheus/alerts.yml": "## Alerts", "prometheus/redis-fleet/alerts.yml": "## A fleet on Redis"}


def _rules(path):
    """{alert: (for or '–', severity)} of a Prometheus rules file (read as text: the rules are
    one '- alert:' block each, with 'for:' and 'severity:' lines)."""
    with open(os.path.join(CONTRIB, path), encoding="utf-8") as fh:
        blocks = re.split(r"^\s*- alert: ", fh.read(), flags=re.M)[1:]
    out = {}
    for block in blocks:
        name = block.split()[0]
        rule = re.split(r"^\s*- (?:alert|record): ", block, flags=re.M)[0]
        duration = re.search(r"^\s*for: (\S+)", rule, re.M)
        severity = re.search(r"^\s*severity: (\S+)", rule, re.M).group(1)
        out[name] = (duration.group(1) if duration else "–", severity)
    return out


def _table(heading):
    with open(os.path.join(CONTRIB, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    section = text.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    header = r"^\| alert \| fires when \| for \| severity \|\n\| --- .*?\n"
    rows = re.search(header + r"((?:\|.*\n)+)", section, re.M)
    out = {}
    for row in rows.group(1).splitlines():
        name, _when, duration, severity = (c.strip() for c in row.strip("|").split("|"))
        out[name] = (duration, severity)
    return out


def test_every_alert_is_in_its_table_with_its_for_and_severity():
    for path, heading in TABLES.items():
        assert _table(heading) == _rules(path), path
