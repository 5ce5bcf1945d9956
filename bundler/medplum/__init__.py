"""Talking to a Medplum server: the HTTP client and its auth, rate limits, `doctor`, the local server launcher."""
