"""The business calendar: which business day an instant belongs to, and back.

A business day is named after the local date it begins on and runs from
`accounting.day_cutoff` on that date to the cut-off on the next date, in
`accounting.timezone`. With the default cut-off 00:00 that is the calendar
day; with 02:00, Tuesday's business day runs from Tue 02:00 to Wed 02:00.

All arithmetic is done here with zoneinfo and handed to SQL as UTC ranges
[starts, ends), so neither the server's nor the database's TimeZone setting
matters, and a day with a DST change simply has 23 or 25 hours.
"""

import datetime as dt
import re
import zoneinfo

UTC = dt.UTC
# The days anyone may ask about: wide enough for any business, narrow enough
# that a day's neighbours and its UTC bounds always exist.
FIRST_DAY = dt.date(2000, 1, 1)
LAST_DAY = dt.date(2199, 12, 31)
CUTOFF_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class BadDate(ValueError):
    """A date the user typed that is not YYYY-MM-DD."""


def zone(name):
    """The zone for an IANA name, or ValueError (used by the config check)."""
    try:
        return zoneinfo.ZoneInfo(name)
    # OSError: a name that is a folder of the zone database ("America") or too long.
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError, OSError) as e:
        raise ValueError(f"unknown time zone {name!r}") from e


def parse_cutoff(text):
    m = CUTOFF_RE.match(text)
    if not m:
        raise ValueError(f"expected a time HH:MM, got {text!r}")
    return dt.time(int(m.group(1)), int(m.group(2)))


def parse_day(text, what="day"):
    """YYYY-MM-DD -> date; anything else raises BadDate with a sentence for the user."""
    if not isinstance(text, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise BadDate(f"{what} must be a date YYYY-MM-DD, got {str(text)[:40]!r}")
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        raise BadDate(f"{what} {text!r} is not a date in the calendar") from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise BadDate(f"{what} must be between {FIRST_DAY} and {LAST_DAY}, got {text}")
    return day


class BusinessCalendar:
    def __init__(self, timezone="UTC", cutoff="00:00"):
        self.timezone_name = timezone
        self.tz = zone(timezone)
        self.cutoff = parse_cutoff(cutoff) if isinstance(cutoff, str) else cutoff

    @classmethod
    def from_config(cls, config):
        return cls(config.accounting.timezone, config.accounting.day_cutoff)

    def starts(self, day):
        """The UTC instant business day `day` begins.

        A cut-off that falls into a DST gap or overlap is read with fold=0
        (the earlier offset); the same rule on both sides of every boundary
        keeps consecutive days gapless.
        """
        return dt.datetime.combine(day, self.cutoff, tzinfo=self.tz).astimezone(UTC)

    def bounds(self, day):
        """(starts, ends) in UTC: the half-open range of business day `day`."""
        return self.starts(day), self.starts(day + dt.timedelta(days=1))

    def day_of(self, instant):
        """The business day an aware datetime belongs to."""
        local = instant.astimezone(self.tz)
        day = local.date()
        if local.time() < self.cutoff:
            day -= dt.timedelta(days=1)
        # Near a DST change the local clock reading can mislead by an hour:
        # settle it against the UTC boundaries themselves.
        while instant < self.starts(day):
            day -= dt.timedelta(days=1)
        while instant >= self.starts(day + dt.timedelta(days=1)):
            day += dt.timedelta(days=1)
        return day

    def today(self, now=None):
        return self.day_of(now or dt.datetime.now(UTC))

    def last_finished_day(self, now=None):
        """The latest business day whose cut-off has passed."""
        return self.today(now) - dt.timedelta(days=1)

    def local(self, instant):
        return instant.astimezone(self.tz) if instant else None

    def describe(self):
        cut = self.cutoff.strftime("%H:%M")
        return f"{self.timezone_name}, days change at {cut}"


def day_range(first, last):
    """Every date from first to last, inclusive."""
    n = (last - first).days
    return [first + dt.timedelta(days=i) for i in range(n + 1)]
