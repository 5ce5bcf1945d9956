"""Legacy timestamps → FHIR instants, and the instant's position on the time line (for ordering).

A value with its own offset keeps it as written; a value without one is read as wall-clock time in the
mapping's IANA zone (`zoneinfo`). A wall-clock time that a DST change skips ("nonexistent") is
rejected, or shifted forward by the gap; one that occurs twice ("ambiguous") is taken as the earlier
occurrence (the first on the time line: the offset of summer time) unless the mapping says `later` or
`reject`. `epoch` and `epoch_ms` values are seconds or milliseconds since 1970-01-01T00:00:00Z.

    parse = SentParser(fmt="iso", timezone="America/New_York")
    parse("2024-03-10 01:59:30")   # ("2024-03-10T01:59:30-05:00", 1710053970000000)
"""

from __future__ import annotations

import datetime as dt
import decimal
from zoneinfo import ZoneInfo

from ..vocabulary import InstantError, format_instant, is_instant_shaped, micros, parse_instant

_US = dt.timedelta(microseconds=1)
_HOUR = dt.timedelta(hours=1) - _US
_NAIVE_EPOCH = dt.datetime(1970, 1, 1)
_UTC_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_MAX = 10**12  # seconds: past year 9999 either way
_EPOCH_UNITS = {"epoch": 1, "epoch_ms": 1000}  # sent.format → units per second
_CLOCK = {f":{m:02d}:{s:02d}": (m * 60 + s) * 1_000_000 for m in range(60) for s in range(60)}
"""':MM:SS' (the end of a local time) → microseconds after the start of its hour."""


class TimeRejected(ValueError):
    """A value that cannot be made an instant; `reason` is the reject code."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


DEFAULT_FORMAT = "iso"
"""The format of a time value when its mapping names none: ISO 8601."""
DEFAULT_AMBIGUOUS = "earlier"
"""What a local time that occurs twice (daylight saving ends) is taken as: its first occurrence."""
DEFAULT_NONEXISTENT = "reject"
"""What becomes of a local time skipped when daylight saving starts: its row is rejected."""


class SentParser:
    """Callable: legacy value → (FHIR instant, microseconds since the epoch); raises TimeRejected."""

    def __init__(self, fmt: str = DEFAULT_FORMAT, timezone: str | None = None, *,
                 ambiguous: str = DEFAULT_AMBIGUOUS, nonexistent: str = DEFAULT_NONEXISTENT) -> None:
        self.fmt = fmt
        self.zone = ZoneInfo(timezone) if timezone else None
        self.timezone = timezone
        self.ambiguous = ambiguous
        self.nonexistent = nonexistent
        self._hours: dict[str, tuple[str, int | None]] = {}  # 'YYYY-MM-DD HH' → (its offset, its start in µs)

    def __call__(self, value: str) -> tuple[str, int]:
        if not value:
            raise TimeRejected("missing-time", "no sent time")
        if self.fmt in _EPOCH_UNITS:
            return self._epoch(value)
        # the common case first: local wall-clock time to the second (19 characters: never an instant, which has a
        # zone, so not one the next test would keep as written)
        if self.zone is not None and len(value) == 19 and self.fmt == "iso" and value[10] in "T ":
            fast = self._fast(value)
            if fast is not None:
                return fast
        if is_instant_shaped(value):  # already an instant: kept exactly as written
            try:
                return value, micros(parse_instant(value))
            except InstantError as exc:
                raise TimeRejected("bad-time", str(exc)) from None
        moment = self._parse(value)
        if moment.tzinfo is not None:
            return self._format(moment, zulu=value.endswith(("Z", "z"))), micros(moment)
        if self.zone is None:
            raise TimeRejected("bad-time", f"{value!r} has no time zone and the mapping gives none (sent.timezone)")
        local = self._localize(moment, value)
        return self._format(local), micros(local)

    def _epoch(self, value: str) -> tuple[str, int]:
        """Seconds or milliseconds since 1970-01-01T00:00:00Z (an integer or a decimal: 1710425700, 1710425700.25);
        written in the mapping's zone, else in UTC."""
        per_second = _EPOCH_UNITS[self.fmt]
        try:
            number = decimal.Decimal(value)
            if not number.is_finite() or abs(number) > _EPOCH_MAX * per_second:  # (before a huge int is made)
                raise decimal.InvalidOperation
            us = int(number * (1_000_000 // per_second))
            moment = _UTC_EPOCH + dt.timedelta(microseconds=us)
        except (ArithmeticError, ValueError):  # decimal.InvalidOperation and Overflow are ArithmeticErrors
            unit = "seconds" if per_second == 1 else "milliseconds"
            raise TimeRejected("bad-time", f"{value!r} is not a number of {unit} since 1970 (sent.format: "
                                           f"{self.fmt}), or is out of range") from None
        if self.zone is not None:
            return self._format(moment.astimezone(self.zone)), us
        return self._format(moment, zulu=True), us

    @staticmethod
    def _format(moment: dt.datetime, *, zulu: bool = False) -> str:
        try:
            return format_instant(moment, zulu=zulu)
        except InstantError as exc:
            raise TimeRejected("bad-time", str(exc)) from None

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
            # where the hour is written as `start` is (YYYY-MM-DD, T or space, HH), ':MM:SS' after it is that many
            # seconds after `start` (fromisoformat reads it so): the instant's microseconds need no parse
            start_us = (start - _NAIVE_EPOCH) // _US - seconds * 1_000_000 \
                if start.isoformat(hour[10])[:13] == hour else None
            found = self._hours[hour] = (f"{sign}{h:02d}:{m:02d}", start_us)
        if found[1] is not None and (second := _CLOCK.get(value[13:])) is not None:
            return f"{value[:10]}T{value[11:]}{found[0]}", found[1] + second
        # written some other way that fromisoformat reads (a week date, a compact time, an offset of its own): not
        # as an instant is written, so not to be copied into one; the careful path writes the instant it means
        return None

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
