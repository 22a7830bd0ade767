"""Writing files: what sbir-bench writes is readable by whoever the user's umask lets read it."""

from __future__ import annotations

import os
import stat

import pytest

from sbir_bench.fileio import atomic_write_bytes, atomic_write_json, atomic_write_npz, current_umask
from sbir_bench.launchers import claim


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask_like_any_other_program(umask, mode, tmp_path):
    """A group sharing a results folder (docs/cluster.md) must read records, npz files, artifacts,
    tables and cell states; mkstemp alone would make every one of them 0600."""
    import numpy as np
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        written = [atomic_write_bytes(tmp_path / "table.md", b"x"), atomic_write_json(tmp_path / "r.json", {"a": 1}),
                   atomic_write_npz(tmp_path / "e.npz", query=np.zeros(2))]
        claim(tmp_path, "cell", {"launcher": "local"})
        written.append(tmp_path / ".cells" / "cell.claim")
    finally:
        os.umask(old)
    for path in written:
        assert stat.S_IMODE(os.stat(path).st_mode) == mode, path
