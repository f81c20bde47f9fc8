"""How long importing a DAG file takes in a fresh process (median of 5 runs).

Every Airflow task process re-imports its DAG file, so this is paid once per task
instance. "cold": nothing imported first; "warm": ``airflow.sdk`` imported first, as in
Airflow's DAG processor and task runner. Usage, from the repository's root::

    AIRFLOW_HOME="$(mktemp -d)" .venv-airflow/bin/python examples/airflow/parse_cost.py \
        examples/airflow/dags/multi_channel_campaign.py
"""

import statistics
import subprocess
import sys

SNIPPET = """
import runpy, time
if {warm}:
    import airflow.sdk
start = time.perf_counter()
runpy.run_path({path!r})
print(time.perf_counter() - start)
"""


def seconds(path: str, *, warm: bool) -> float:
    """One import of ``path`` in a fresh interpreter, in seconds."""
    code = SNIPPET.format(warm=warm, path=path)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def main(path: str) -> None:
    for warm in (False, True):
        times = [seconds(path, warm=warm) for _ in range(5)]
        label = "warm (airflow.sdk imported first)" if warm else "cold"
        print(f"{label}: median {statistics.median(times):.2f} s of {[round(t, 2) for t in times]}")


if __name__ == "__main__":
    main(sys.argv[1])
