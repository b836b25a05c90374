"""Run a study (a grid of seeded training runs) and write its report: see asl/study.py.

    python tools/study.py configs/study_demo.yaml --jobs 2          # the full study
    python tools/study.py configs/study_demo.yaml --quick --jobs 2  # the quick profile (< 30 min, 2 cores)
    python tools/study.py configs/study_demo.yaml --report-only     # report from the finished runs
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asl import cli  # noqa: E402
from asl.study import main  # noqa: E402

if __name__ == "__main__":
    cli.setup_logging()
    sys.exit(cli.run(main))
