"""Property tests of a chat app's export code with thread-bundler's testing kit: a complete file.

Copy it and run it as it stands (`pip install 'thread-bundler[testing] @ git+<repository URL>'`, or
`pip install '.[testing]'` from a clone, then `pytest test_my_bundles.py`); then replace the two
functions under "the code under test" with an import of your own. The `medplum_client` fixture comes
from the pytest plugin installed with thread-bundler: it starts a local Medplum server (needs npm), or
uses the one in MEDPLUM_BASE_URL, MEDPLUM_CLIENT_ID, MEDPLUM_CLIENT_SECRET.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundler import build_bundle
from bundler.medplum.client import FhirClient
from bundler.testing import assert_same_thread, assert_valid_thread_bundle, fetch_thread
from bundler.testing.strategies import thread_specs

# --- the code under test: a chat app's export of one conversation → a FHIR transaction Bundle -------
#
# The export (a dict per conversation, as the app's JSON export has it):
#
#     {"id": "c-42", "title": "Lab results",
#      "members": {"u1": {"fhir": "Patient/123", "name": "Homer"}, "u2": {"fhir": "Practitioner/9"}},
#      "posts": [{"id": 1, "author": "u2", "time": "2024-04-10T10:00:00Z", "body": "Results are in."},
#                {"id": 2, "author": "u1", "time": "2024-04-10T10:05:00Z", "body": "Thanks!", "in_reply_to": 1}]}


def export_to_spec(chat: dict[str, Any]) -> dict[str, Any]:
    """The thread spec for one exported conversation."""
    participants = {}
    for user, member in chat["members"].items():
        participants[user] = {"reference": member["fhir"]}
        if member.get("name"):
            participants[user]["display"] = member["name"]
    messages = []
    for post in chat["posts"]:
        message: dict[str, Any] = {"id": f"p{post['id']}", "sender": post["author"], "sent": post["time"],
                                   "text": post["body"]}
        if post.get("in_reply_to") is not None:
            message["reply_to"] = f"p{post['in_reply_to']}"
        messages.append(message)
    return {"thread": f"chat-{chat['id']}", "topic": chat["title"], "participants": participants,
            "messages": messages}


def export_to_bundle(chat: dict[str, Any]) -> dict[str, Any]:
    """The transaction Bundle for one exported conversation."""
    return build_bundle(export_to_spec(chat))


# --- the tests ---------------------------------------------------------------------------------------


def spec_to_export(spec: dict[str, Any], chat_id: str) -> dict[str, Any]:
    """Our generated thread spec, written the way the chat app exports a conversation."""
    position = {m.get("id", str(i + 1)): i + 1 for i, m in enumerate(spec["messages"])}
    members = {alias: {"fhir": p["reference"], "name": p.get("display")} for alias, p in spec["participants"].items()}
    posts = [{"id": i, "author": m["sender"], "time": m["sent"], "body": m["text"],
              "in_reply_to": position.get(m.get("reply_to", ""))}
             for i, m in enumerate(spec["messages"], 1)]
    return {"id": chat_id, "title": spec["topic"], "members": members, "posts": posts}


def chats(**options: Any) -> st.SearchStrategy[dict[str, Any]]:
    """The app's exports: every post has text and no attachment, no explicit recipients."""
    specs = thread_specs(attachments=False, recipient_share=0, with_category=False, **options)
    return st.builds(spec_to_export, specs, st.uuids().map(str))


@settings(max_examples=50, deadline=None)
@given(chats())
def test_every_export_makes_a_valid_bundle(chat: dict[str, Any]) -> None:
    bundle = export_to_bundle(chat)
    assert_valid_thread_bundle(bundle)  # no validator errors, no warnings
    header, *messages = (e["resource"] for e in bundle["entry"])
    assert header["topic"]["text"] == chat["title"]
    assert [m["payload"][0]["contentString"] for m in messages] == [p["body"] for p in chat["posts"]]


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chat=chats(styles=["literal"]))  # a conditional reference must match a resource on the server
def test_an_export_loads_into_medplum_as_it_was(medplum_client: FhirClient, chat: dict[str, Any]) -> None:
    # hypothesis repeats examples (and the server keeps what each one loaded): a fresh id per run
    chat = {**chat, "id": str(uuid.uuid4())}
    bundle = export_to_bundle(chat)
    medplum_client.transaction(orjson.dumps(bundle), entries=len(bundle["entry"]))
    spec = export_to_spec(chat)
    assert_same_thread(spec, fetch_thread(medplum_client, spec["thread"]))
