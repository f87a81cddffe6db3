# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one time format: RFC 3339 UTC with Z written; older and XenAPI forms read."""

from __future__ import absolute_import, division, print_function

import datetime

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils import _time

__metaclass__ = type

UTC = datetime.timezone.utc
WHEN = datetime.datetime(2026, 12, 2, 15, 43, 31, tzinfo=UTC)


@pytest.mark.parametrize('text', [
    '2026-12-02T15:43:31Z', '2026-12-02T15:43:31z', '2026-12-02T15:43:31+00:00', '2026-12-02T16:43:31+01:00',
    '2026-12-02T10:43:31-05:00', '2026-12-02T15:43:31', '2026-12-02 15:43:31Z', '2026-12-02T15:43:31.000Z',
    '20261202T15:43:31Z', '20261202T154331Z', '20261202T15:43:31', '  2026-12-02T15:43:31Z  ',
])
def test_every_form_the_collection_ever_read_or_wrote_is_the_same_instant(text):
    assert _time.parse_utc(text).replace(microsecond=0) == WHEN
    assert _time.normalize_utc(text) == '2026-12-02T15:43:31Z'


def test_fractions_are_kept_when_parsing_and_dropped_when_writing():
    parsed = _time.parse_utc('2026-12-02T15:43:31.250+00:00')
    assert parsed.microsecond == 250000
    assert _time.format_utc(parsed) == '2026-12-02T15:43:31Z'


def test_format_converts_offsets_and_treats_naive_as_utc():
    east = datetime.datetime(2026, 1, 31, 13, 0, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    assert _time.format_utc(east) == '2026-01-31T12:00:00Z'
    assert _time.format_utc(datetime.datetime(2026, 1, 31, 12, 0, 0)) == '2026-01-31T12:00:00Z'


def test_xmlrpc_datetimes_and_datetimes_are_read():
    class DateTime:  # what xmlrpc.client.DateTime keeps
        value = '20261202T15:43:31Z'
    assert _time.parse_utc(DateTime()) == WHEN
    assert _time.parse_utc(WHEN.replace(tzinfo=None)) == WHEN


@pytest.mark.parametrize('text', ['', 'yesterday', '2026-13-02T15:43:31Z', '2026-12-02T25:00:00Z',
                                  '20261203T091840Z-full', '2026-12-02'])
def test_what_is_not_a_time_fails_with_a_code(text):
    with pytest.raises(_time.TimeFormatError) as info:
        _time.parse_utc(text)
    assert info.value.code == 'INVALID_TIME' and 'RFC 3339' in str(info.value)
    assert _time.parse_utc_or_none(text) is None
    assert _time.normalize_if_time(text) == text


def test_utc_now_is_aware_and_whole_seconds():
    now = _time.utc_now()
    assert now.tzinfo is UTC and now.microsecond == 0
