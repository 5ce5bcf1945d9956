"""The benchmarks' own machinery (bench/common.py): whose CPU the tables' "server" column counts."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import Project

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from common import server_processes, tree_cpu


def _names(pids: list[int]) -> set[str]:
    return {Path(f"/proc/{pid}/comm").read_text().strip() for pid in pids}


def test_the_servers_processes_are_found_by_its_port_and_their_cpu_counted(project: Project) -> None:
    """The local server and a real Medplum on this machine both run on Node: its process is found by the port
    of the base URL (a real one's Postgres and Redis beside it), and the CPU it spends answering is counted."""
    target = project.target
    pids = server_processes(target.base_url)
    assert "node" in _names(pids)
    before = tree_cpu(pids)
    with target.client() as client:
        for _ in range(100):
            assert client.search("Communication", {"identifier": f"urn:x|{project.prefix}", "_count": "1"}) == []
    assert tree_cpu(pids) > before


def test_a_server_elsewhere_has_no_processes_here() -> None:
    assert server_processes("http://192.0.2.1:8103/") == []
    assert server_processes("https://medplum.example/") == []


def test_the_migrate_benchmark_times_the_command_and_the_library_on_the_same_bytes(tmp_path: Path) -> None:
    """bench/migrate.py runs `thread-bundler migrate` as a user does and the library call beside it: both read the
    same export and write the same bundles and rejects, and each says its rows, rejects and memory."""
    from legacy_export import MAPPING, write_export
    from migrate import run_cli, run_library

    export, mapping = tmp_path / "export.csv", tmp_path / "mapping.yaml"
    write_export(export, 300, 30, bad_share=0.05, seed=3)
    mapping.write_text(MAPPING, encoding="utf-8")
    cli = run_cli("command", export, mapping, tmp_path / "out.ndjson", 2, None)
    library = run_library(export, mapping, tmp_path / "out.ndjson", 2)
    assert cli.digest == library.digest
    assert cli.rows == library.rows == 300 and cli.rejected == library.rejected > 0
    assert cli.messages == library.messages == 300 - cli.rejected
    assert cli.largest_mb > 0 and library.processes == 2 and library.all_mb > library.largest_mb
    assert not (tmp_path / "out.ndjson").exists()  # each run's output read and removed
