"""Run a command and write its wall time, exit code and peak RSS as JSON: ``launch.py OUT.json CMD...``.

Linux carries ``ru_maxrss`` over fork and exec, so a child started straight
from the suite (which contains TensorFlow and converted models) would report the
suite's peak. This small launcher has a small peak of its own, so the
``ru_maxrss`` of its child is the child's. Standard library only.
"""

import json
import os
import subprocess
import sys
import time


def main() -> int:
    output, command = sys.argv[1], sys.argv[2:]
    started = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    peak = usage.ru_maxrss if sys.platform == "darwin" else usage.ru_maxrss * 1024
    with open(output, "w", encoding="utf-8") as handle:
        json.dump({"seconds": seconds, "peak_rss_bytes": peak, "returncode": os.waitstatus_to_exitcode(status)}, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
