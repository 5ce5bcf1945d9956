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
