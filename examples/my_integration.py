"""An example integration to test: a chat app's export of one conversation → a FHIR transaction Bundle.

The export (a dict per conversation, as the app's JSON export has it):

    {"id": "c-42", "title": "Lab results",
     "members": {"u1": {"fhir": "Patient/123", "name": "Homer"}, "u2": {"fhir": "Practitioner/9"}},
     "posts": [{"id": 1, "author": "u2", "time": "2024-04-10T10:00:00Z", "body": "Results are in."},
               {"id": 2, "author": "u1", "time": "2024-04-10T10:05:00Z", "body": "Thanks!", "in_reply_to": 1}]}

becomes a thread spec, and `bundler.build_bundle` makes the Bundle.
"""

from __future__ import annotations

from typing import Any

from bundler import build_bundle


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
