"""One big thread: read back past the server's offset limit, and compared a page at a time with the same findings."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from loadkit import as_stored, client_for, load, specs_for

from bundler import DEFAULT_IDENTIFIER_SYSTEM, parse_spec
from bundler.build import build_bundle, bundle_entries, entry_values
from bundler.errors import BundlerError
from bundler.load.compare import ThreadComparer, compare_thread
from bundler.load.verify import read_thread, thread_pages, verify
from bundler.spec import ThreadSpec
from bundler.testing.strategies import sample_specs

SYSTEM = DEFAULT_IDENTIFIER_SYSTEM


@pytest.mark.wire
@pytest.mark.local_only
def test_a_thread_longer_than_the_offset_limit_is_read_whole(project: Any, local_server: Any, tmp_path: Path) -> None:
    local_server.configure(max_search_offset=40)  # as Medplum's 10,000, for a thread of 130 messages
    [spec] = specs_for(project, 1, 130)
    with client_for(project) as client:
        [loaded] = load([spec], client, journal=tmp_path / "j.sqlite").threads
        header = loaded.header_id
        assert header is not None
        with pytest.raises(BundlerError, match="offset"):  # paged by offset (sorted by sent), it stops at 40
            client.search("Communication", {"part-of": f"Communication/{header}", "_sort": "sent", "_count": "20"})
        pages = list(thread_pages(client, header, page_size=20))
        assert len(pages) == 7
        read = [r for page in pages for r in page]
        assert sorted(_value(r) for r in read) == sorted(entry_values(spec)[1:])
        messages = read_thread(client, header, page_size=20)
        assert [r["id"] for r in messages] == [r["id"] for r in sorted(read, key=lambda r: r["sent"])]
        comparer = ThreadComparer(spec, window=5)
        comparer.add([client.read(f"Communication/{header}")])
        for page in pages:
            comparer.add(page)
        assert comparer.finish() == []
        [result] = verify([spec], client)
        assert result.ok and result.messages == 130


def _value(resource: dict[str, Any]) -> str:
    return next(str(i["value"]) for i in resource["identifier"] if i["system"] == SYSTEM)


def _spec_with_replies() -> ThreadSpec:
    data = sample_specs(1, 40, seed=3, prefix="big")[0]
    for k, m in enumerate(data["messages"]):
        m.pop("reply_to", None)
        if k % 3 == 1:
            m["reply_to"] = data["messages"][k - 1]["id"]
    data["read_model"] = "header-extension"
    read = data["messages"][5]
    read["read_by"] = {next(a for a in data["participants"] if a != read["sender"]): "2024-01-02T00:00:00Z"}
    return parse_spec(data)


@pytest.mark.parametrize("order", ["stored", "reversed", "shuffled"])
def test_compared_page_by_page_it_finds_what_the_whole_comparison_finds(order: str) -> None:
    spec = _spec_with_replies()
    resources = as_stored(spec)
    resources[7]["status"] = "entered-in-error"  # changed on the server
    resources[11]["inResponseTo"] = [{"reference": "Communication/somewhere-else"}]
    del resources[20]  # gone
    resources.append({**resources[3], "id": "copy"})  # twice
    resources.append({**resources[4], "id": "extra", "identifier": [{"system": SYSTEM, "value": "big-x/zz"}]})
    resources.append({**resources[5], "id": "anonymous", "identifier": []})
    if order == "reversed":
        resources.reverse()
    elif order == "shuffled":
        random.Random(1).shuffle(resources)
    whole = compare_thread(spec, resources).lines(SYSTEM, entry_values(spec))
    assert len(whole) >= 6
    for page_size, window in ((1, 1), (4, 3), (1000, 2000)):
        comparer = ThreadComparer(spec, window=window)
        for start in range(0, len(resources), page_size):
            comparer.add(resources[start:start + page_size])
        assert comparer.finish() == whole, (page_size, window)


def test_the_entries_one_at_a_time_are_the_bundle() -> None:
    spec = _spec_with_replies()
    assert list(bundle_entries(spec)) == build_bundle(spec)["entry"]


def test_a_thread_mostly_missing_from_the_server_is_said_without_holding_its_built_entries() -> None:
    """verify of a thread whose messages are mostly not on the server (a load cut short): each missing one is said,
    and the comparer keeps its name, not its built entry (465 MB for 90,000 missing, before)."""
    spec = parse_spec(sample_specs(1, 3000, seed=5, prefix="gone")[0])
    stored = as_stored(spec)
    comparer = ThreadComparer(spec, window=50)
    comparer.add(stored[:101])  # the header and the first 100 messages
    said = comparer.finish()
    assert len(said) == 2900 and all("not on the server" in line for line in said)
    built = [entry for _, entry in comparer.pending.values() if entry]
    assert len(built) <= 50, f"{len(built)} built entries held for messages that were not read"
    whole = compare_thread(spec, stored[:101]).lines(SYSTEM, entry_values(spec))
    assert said == whole
