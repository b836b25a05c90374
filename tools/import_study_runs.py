"""Record the runs of an older study layout in the study's one record file.

Studies used to keep each run in ``reports/<name>/runs/<hash>/`` (its config, metrics.jsonl and
per_class_ap.json); they now keep ``reports/<name>/runs.jsonl``. This reads the folders (and
changes nothing in them) and appends their finished runs:

    python tools/import_study_runs.py reports/demo/runs reports/demo/runs.jsonl
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asl import cli  # noqa: E402
from asl.errors import ConfigError  # noqa: E402
from asl.study import RunStore, import_run_folders  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="import_study_runs.py", description=__doc__.splitlines()[0])
    ap.add_argument("runs", help="the old runs folder (reports/<name>/runs)")
    ap.add_argument("record_file", help="the study's record file (reports/<name>/runs.jsonl)")
    args = ap.parse_args(argv)
    if not Path(args.runs).is_dir():
        raise ConfigError(f"not a folder: {args.runs}")
    store = RunStore(Path(args.record_file))
    added, skipped = import_run_folders(Path(args.runs), store)
    print(f"{added} runs recorded in {args.record_file} ({len(store)} in all); {skipped} unfinished left out")
    return 0


if __name__ == "__main__":
    cli.setup_logging()
    sys.exit(cli.run(main))
