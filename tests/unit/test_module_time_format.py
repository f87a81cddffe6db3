# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One time format: every time in the files the modules write and in the results they return is RFC 3339 UTC with Z.

A backup, an incremental, a prune (merge), backup_info and backup_verify run through Ansible against a real NBD
server; every string in their results and in every JSON file of the repository that reads as a time must be
written exactly as ``YYYY-MM-DDTHH:MM:SSZ``. The run id is passed in the form older role versions used.
"""

from __future__ import absolute_import, division, print_function

import json
import os

import pytest

from ansible_collections.xenserver.cbt_backup.plugins.module_utils import _time
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import cbt_bitmap as _cbt
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.ansible_runner import run_module
from ansible_collections.xenserver.cbt_backup.tests.unit.helpers.nbd_servers import make_disk_image, rewrite_random_blocks

__metaclass__ = type

pytestmark = pytest.mark.interop

RFC3339_Z = r'^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$'


def times_in(value, where='result'):
    """(where, text) of every string inside ``value`` that reads as a time."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from times_in(item, '%s.%s' % (where, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from times_in(item, '%s[%d]' % (where, index))
    elif isinstance(value, str) and _time.parse_utc_or_none(value) is not None:
        yield where, value


def assert_one_format(value, where):
    found = list(times_in(value, where))
    wrong = [(place, text) for place, text in found if text != _time.normalize_utc(text)]
    assert not wrong, wrong
    return len(found)


def test_every_time_written_or_returned_is_rfc3339_utc_with_z(nbd_server_factory, tmp_path):
    image = make_disk_image(tmp_path / 'src.raw', 2 * 1024 * 1024, seed=31)
    server = nbd_server_factory('nbdkit-plain', image.path)
    repo_dir = str(tmp_path / 'repo')
    results = []
    for number in range(3):
        args = {'nbd': server.nbd_info(), 'repository': repo_dir, 'tls': False,
                'run': '2026112%dT02:00:05Z' % number}  # the XenAPI-like form older roles passed
        if number:
            args['changed_blocks'] = _cbt.encode(rewrite_random_blocks(image.path, 2, seed=number), image.size)
        results.append(run_module('vdi_export', args, tmp_path))
    results.append(run_module('backup_prune', {'repository': repo_dir, 'keep_last': 2}, tmp_path))
    results.append(run_module('backup_info', {'path': repo_dir}, tmp_path))
    results.append(run_module('backup_verify', {'repository': repo_dir}, tmp_path))
    counted = 0
    for index, (result, output) in enumerate(results):
        assert result['failed'] is False, output
        counted += assert_one_format(result, 'result %d' % index)
    for name in sorted(os.listdir(repo_dir)):
        path = os.path.join(repo_dir, name)
        if name.endswith('.qcow2') or name == '.lock':
            continue
        with open(path) as handle:
            counted += assert_one_format(json.load(handle), name)
    assert counted >= 10, 'the scan found the times it is meant to check'
    with open(os.path.join(repo_dir, 'manifest.json')) as handle:
        manifest = json.load(handle)
    assert manifest['version'] == 2
    assert [p['run'] for p in manifest['points']] == ['2026-11-21T02:00:05Z', '2026-11-22T02:00:05Z']
