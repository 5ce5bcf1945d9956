"""Talking to a Medplum server: the HTTP client (`client`) and its auth (`auth`), rate limits (`ratelimit`), the
atomicity probe (`probe`), `doctor`, and the local server launcher (`localserver`)."""
