"""Formats the /api/v1/fcr answer (read on standard input) as one line for `make run`."""

import json
import sys

f = json.load(sys.stdin)
fcr = "n/a" if f["fcr"] is None else "%.1f%%" % (100 * f["fcr"])
print("  |  FCR %s (provisional) over %d handled: %d unresolved, %d resolved, %d pending"
      % (fcr, f["total"], f["unresolved"], f["resolved"], f["pending"]))
