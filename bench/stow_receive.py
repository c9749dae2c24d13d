"""STOW-RS receive of ``pacs-ai serve``: throughput beside C-STORE, and the memory of a 1 GB upload.

Throughput: the same synthetic CT series (default 200 slices of 512×512, 0.5 MB each) goes to a
fresh gateway once by DCMTK storescu over one association (C-STORE) and once by curl as one
STOW-RS request (``multipart/related``, the body prepared in a file beforehand). The figure is
the wall time of the sender, best of ``--repeat`` runs; the ratio is C-STORE time / STOW-RS time
(above 1: STOW-RS is faster).

Memory: one STOW-RS request of ``--upload-mb`` (default 1024) of 4096×4096 CT instances
(32 MiB each) to a fresh gateway; the figure is the peak RSS (VmHWM) of the gateway's supervisor
process, which runs the admin server, read from /proc after the upload, beside its RSS before.

    .venv/bin/python bench/stow_receive.py --instances 200 --repeat 3 --upload-mb 1024
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from factory import ct_series, write_series  # noqa: E402
from peers import nodelay_env, run_gateway  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from webpeers import CONTENT_TYPE, multipart_body  # noqa: E402

NO_RULES = "rules: []\n"


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _curl(url: str, body: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        [
            *("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"),
            *("-H", f"Content-Type: {CONTENT_TYPE}", "-T", str(body), url),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed = time.perf_counter() - start
    if result.stdout != "200":
        raise RuntimeError(f"STOW-RS answered {result.stdout}")
    return elapsed


def _storescu(port: int, folder: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["storescu", "-aec", "PACSAI", "+sd", "127.0.0.1", str(port), str(folder)],
        env=nodelay_env(),
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def throughput(work: Path, instances: int, repeat: int) -> None:
    """Best wall time of the series by C-STORE and by STOW-RS, each to a fresh gateway."""
    files = write_series(ct_series(instances, rows=512, cols=512), work / "ct")
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    body = multipart_body(work / "body.bin", [("application/dicom", p) for p in files])
    rules = work / "rules.yaml"
    rules.write_text(NO_RULES)
    env = {"PACSAI_RULES_FILE": str(rules)}
    times: dict[str, list[float]] = {"C-STORE": [], "STOW-RS": []}
    for run in range(repeat):
        for kind in times:
            with run_gateway(work / f"{kind}-{run}" / "var", env=env) as gateway:
                if kind == "C-STORE":
                    times[kind].append(_storescu(gateway.port, work / "ct"))
                else:
                    times[kind].append(_curl(f"{gateway.admin_url}/dicomweb/studies", body))
            shutil.rmtree(work / f"{kind}-{run}")
    best = {kind: min(values) for kind, values in times.items()}
    for kind, seconds in best.items():
        runs = ", ".join(f"{t:.2f}" for t in times[kind])
        rate = size_mb / seconds
        print(f"{kind}: {instances} instances, {size_mb:.0f} MB in {seconds:.2f} s", end="")
        print(f" = {rate:.0f} MB/s (runs: {runs})")
    print(f"ratio C-STORE time / STOW-RS time: {best['C-STORE'] / best['STOW-RS']:.2f}")


def upload_memory(work: Path, upload_mb: int) -> None:
    """Peak RSS of the gateway's supervisor (admin server) over one large STOW-RS request."""
    per_instance_mb = 4096 * 4096 * 2 / 2**20
    count = max(1, round(upload_mb / per_instance_mb))
    study, series = generate_uid(), generate_uid()
    files: list[Path] = []
    for start in range(0, count, 4):
        batch = ct_series(
            min(4, count - start), rows=4096, cols=4096, study_uid=study, series_uid=series
        )
        files += write_series(batch, work / "big" / f"{start:04d}")
    body = multipart_body(work / "big.bin", [("application/dicom", p) for p in files])
    shutil.rmtree(work / "big")
    rules = work / "rules.yaml"
    rules.write_text(NO_RULES)
    with run_gateway(work / "mem" / "var", env={"PACSAI_RULES_FILE": str(rules)}) as gateway:
        pid = gateway.proc.pid
        before = _status_kb(pid, "VmRSS")
        seconds = _curl(f"{gateway.admin_url}/dicomweb/studies", body)
        peak = _status_kb(pid, "VmHWM")
    print(
        f"1 STOW-RS request of {body.stat().st_size / 2**20:.0f} MiB ({count} instances) in"
        f" {seconds:.1f} s; supervisor RSS before {before / 1024:.0f} MiB,"
        f" peak {peak / 1024:.0f} MiB"
    )


def main() -> None:
    """Run the throughput and the memory measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--upload-mb", type=int, default=1024, help="0 skips the memory run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stow-bench-") as folder:
        work = Path(folder)
        if args.instances:
            throughput(work, args.instances, args.repeat)
        if args.upload_mb:
            upload_memory(work, args.upload_mb)


if __name__ == "__main__":
    main()
