"""The test peers themselves work: Orthanc and storescp accept a synthetic CT over C-STORE."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from factory import ct_series, write_series
from peers import Orthanc, StoreSCP, nodelay_env


@pytest.mark.integration
def test_orthanc_and_storescp_accept_storescu(
    tmp_path: Path, orthanc: Orthanc, storescp: StoreSCP
) -> None:
    """Storescu stores 3 synthetic slices in Orthanc and in storescp."""
    files = write_series(ct_series(3), tmp_path / "ct")
    for aet, port in ((orthanc.aet, orthanc.dicom_port), (storescp.aet, storescp.port)):
        subprocess.run(
            ["storescu", "-aec", aet, "127.0.0.1", str(port), *map(str, files)],
            check=True,
            env=nodelay_env(),
        )
    assert orthanc.instance_count() == 3
    received = sorted(p for p in storescp.folder.rglob("*") if p.is_file())
    assert len(received) == 3
