"""Legacy timestamps → FHIR instants, and the instant's position on the time line (for ordering).

A value with its own offset keeps it as written; a value without one is read as wall-clock time in the
mapping's IANA zone (`zoneinfo`). A wall-clock time that a DST change skips ("nonexistent") is
rejected, or shifted forward by the gap; one that occurs twice ("ambiguous") is taken as the earlier
occurrence unless the mapping says `later` or `reject`.

    parse = SentParser(fmt="iso", timezone="America/New_York")
    parse("2024-03-10 01:59:30")   # ("2024-03-10T01:59:30-05:00", 1710053970000000)
"""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

from ..fhir import instant_problem

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_FHIR_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})$")
_US = dt.timedelta(microseconds=1)
_HOUR = dt.timedelta(hours=1) - _US
_NAIVE_EPOCH = dt.datetime(1970, 1, 1)


class TimeRejected(ValueError):
    """A value that cannot be made an instant; `reason` is the reject code."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def micros(moment: dt.datetime) -> int:
    """Microseconds since the epoch of an aware datetime: the sort key of a message."""
    return (moment - _EPOCH) // _US


def format_instant(moment: dt.datetime, *, zulu: bool = False) -> str:
    """An aware datetime as a FHIR instant, keeping its own offset ('Z' when `zulu` and the offset is 0)."""
    offset = moment.utcoffset()
    assert offset is not None
    seconds = int(offset.total_seconds())
    if seconds % 60 or offset.microseconds:
        raise TimeRejected("bad-time", f"its time zone offset {offset} has seconds, which a FHIR instant cannot hold")
    if moment.microsecond == 0:
        body = moment.strftime("%Y-%m-%dT%H:%M:%S")
    elif moment.microsecond % 1000 == 0:
        body = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    else:
        body = moment.strftime("%Y-%m-%dT%H:%M:%S.%f")
    if zulu and seconds == 0:
        return body + "Z"
    sign = "-" if seconds < 0 else "+"
    hours, minutes = divmod(abs(seconds) // 60, 60)
    return f"{body}{sign}{hours:02d}:{minutes:02d}"


class SentParser:
    """Callable: legacy value → (FHIR instant, microseconds since the epoch); raises TimeRejected."""

    def __init__(self, fmt: str = "iso", timezone: str | None = None, *, ambiguous: str = "earlier",
                 nonexistent: str = "reject") -> None:
        self.fmt = fmt
        self.zone = ZoneInfo(timezone) if timezone else None
        self.timezone = timezone
        self.ambiguous = ambiguous
        self.nonexistent = nonexistent
        self._hours: dict[str, tuple[str, int]] = {}

    def __call__(self, value: str) -> tuple[str, int]:
        if not value:
            raise TimeRejected("missing-time", "no sent time")
        if _FHIR_INSTANT.match(value):  # already an instant: kept exactly as written
            if why := instant_problem(value):
                raise TimeRejected("bad-time", why)
            return value, micros(dt.datetime.fromisoformat(_trim_fraction(value)))
        if self.zone is not None and len(value) == 19 and self.fmt == "iso" and value[10] in "T ":
            fast = self._fast(value)  # the common case: local wall-clock time to the second
            if fast is not None:
                return fast
        moment = self._parse(value)
        if moment.tzinfo is not None:
            return format_instant(moment, zulu=value.endswith(("Z", "z"))), micros(moment)
        if self.zone is None:
            raise TimeRejected("bad-time", f"{value!r} has no time zone and the mapping gives none (sent.timezone)")
        local = self._localize(moment, value)
        return format_instant(local), micros(local)

    def _fast(self, value: str) -> tuple[str, int] | None:
        """'YYYY-MM-DD HH:MM:SS' through a per-hour cache of the zone's offset (None: not cached/possible)."""
        hour = value[:13]
        found = self._hours.get(hour)
        if found is None:
            try:
                start = dt.datetime.fromisoformat(hour + ":00:00")
            except ValueError:
                return None
            zone = self.zone
            offsets = {t.replace(tzinfo=zone, fold=fold).utcoffset() for t in (start, start + _HOUR) for fold in (0, 1)}
            if len(offsets) != 1:  # a DST change in or at the end of this hour: the slow, careful path
                return None
            offset = offsets.pop()
            assert offset is not None
            seconds = int(offset.total_seconds())
            if seconds % 60:
                return None
            sign = "-" if seconds < 0 else "+"
            h, m = divmod(abs(seconds) // 60, 60)
            if len(self._hours) > 100_000:
                self._hours.clear()
            found = self._hours[hour] = (f"{sign}{h:02d}:{m:02d}", seconds * 1_000_000)
        try:
            naive = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        return f"{value[:10]}T{value[11:]}{found[0]}", (naive - _NAIVE_EPOCH) // _US - found[1]

    def _parse(self, value: str) -> dt.datetime:
        try:
            if self.fmt == "iso":
                if len(value) < 13 or value[10] not in "Tt ":
                    raise ValueError("no time of day")
                return dt.datetime.fromisoformat(value)
            return dt.datetime.strptime(value, self.fmt)
        except ValueError:
            how = "an ISO 8601 date and time" if self.fmt == "iso" else f"in the format {self.fmt!r}"
            raise TimeRejected("bad-time", f"{value!r} is not {how}") from None

    def _localize(self, naive: dt.datetime, value: str) -> dt.datetime:
        zone = self.zone
        early, late = naive.replace(tzinfo=zone, fold=0), naive.replace(tzinfo=zone, fold=1)
        if early.utcoffset() == late.utcoffset():
            return early
        # fold matters: either the time occurs twice (ambiguous) or never (nonexistent)
        round_trip = early.astimezone(dt.UTC).astimezone(zone)
        if round_trip.replace(tzinfo=None) != naive:
            if self.nonexistent == "shift":  # forward by the gap: what a wall clock would have shown
                return round_trip
            raise TimeRejected("nonexistent-time", f"{value!r} does not exist in {self.timezone} "
                                                   "(skipped by a daylight saving change)")
        if self.ambiguous == "reject":
            raise TimeRejected("ambiguous-time", f"{value!r} occurs twice in {self.timezone} "
                                                 "(daylight saving ends); set sent.ambiguous to earlier or later")
        return early if self.ambiguous == "earlier" else late


def _trim_fraction(value: str) -> str:
    """An instant with at most 6 fraction digits (fromisoformat takes no more), for the sort key only."""
    dot = value.find(".")
    if dot < 0:
        return value
    end = dot + 1
    while end < len(value) and value[end].isdigit():
        end += 1
    return value[: min(end, dot + 7)] + value[end:]
