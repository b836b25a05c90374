"""Run a study (a grid of seeded training runs) and write its report: see asl/study/
(installed as ``asl-study``; also ``python -m asl.study``).

    python tools/study.py configs/study_demo.yaml --jobs 2          # the full study
    python tools/study.py configs/study_demo.yaml --quick --jobs 2  # the quick profile (< 30 min, 2 cores)
    python tools/study.py configs/study_demo.yaml --report-only     # report from the recorded runs
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asl.study import console  # noqa: E402

if __name__ == "__main__":
    console()
