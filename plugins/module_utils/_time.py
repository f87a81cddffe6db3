# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's one clock format: RFC 3339 in UTC with ``Z``, to the second (``2026-12-02T15:43:31Z``).

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

Every time the collection writes (manifests, markers, reports, results) goes through ``format_utc``; every
time it reads goes through ``parse_utc``, which also takes what older releases and the XenAPI wrote:
``+00:00`` offsets (manifest v1), fractions of a second, and XenAPI DateTimes (``20261202T15:43:31Z``).
Point ids and file names (``20261202T154331Z-full``) are names, not times: they keep their compact form.
"""

from __future__ import absolute_import, division, print_function

import datetime
import re

from ._errors import CbtBackupError

__metaclass__ = type

UTC = datetime.timezone.utc
_RFC3339 = re.compile(r'^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?'
                      r'(?:([Zz])|([+-])(\d{2}):?(\d{2}))?$')
_COMPACT = re.compile(r'^(\d{4})(\d{2})(\d{2})T(\d{2}):?(\d{2}):?(\d{2})(Z)?$')  # XenAPI DateTime, point ids


class TimeFormatError(CbtBackupError, ValueError):
    """A text is not a date and time this collection can read."""

    code = 'INVALID_TIME'


def utc_now():
    """Now, as an aware UTC datetime to the second."""
    return datetime.datetime.now(UTC).replace(microsecond=0)


def format_utc(when):
    """``when`` (aware, or naive meaning UTC) as ``YYYY-MM-DDTHH:MM:SSZ``."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')


def parse_utc(value):
    """An aware UTC datetime from RFC 3339 text (any offset; none means UTC), a XenAPI DateTime or a datetime."""
    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    text = str(getattr(value, 'value', value)).strip()  # xmlrpc DateTime keeps its text in .value
    match = _RFC3339.match(text)
    try:
        if match:
            year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
            micro = int((fraction or '0')[:6].ljust(6, '0'))
            offset = datetime.timedelta(0)
            if sign:
                offset = datetime.timedelta(hours=int(off_h), minutes=int(off_m)) * (-1 if sign == '-' else 1)
            when = datetime.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro,
                                     tzinfo=datetime.timezone(offset))
            return when.astimezone(UTC)
        match = _COMPACT.match(text)
        if match:
            parts = [int(part) for part in match.groups()[:6]]
            return datetime.datetime(*parts, tzinfo=UTC)
    except ValueError:
        pass  # matched the shape but not the calendar (month 13, hour 25, ...)
    raise TimeFormatError('%r is not a date and time in RFC 3339 form (for example 2026-12-02T15:43:31Z)' % text)


def normalize_utc(value):
    """Any time ``parse_utc`` reads, as the collection writes it (``format_utc``)."""
    return format_utc(parse_utc(value))


def parse_utc_or_none(value):
    """``parse_utc``, but None for an empty or unreadable value (an age that cannot be told)."""
    if value is None or value == '':
        return None
    try:
        return parse_utc(value)
    except TimeFormatError:
        return None


def normalize_if_time(value):
    """``value`` as ``format_utc`` writes it when it is a time ``parse_utc`` reads; anything else unchanged."""
    when = parse_utc_or_none(value)
    return format_utc(when) if when is not None else value
