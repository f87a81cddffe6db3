# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Role advice names only variables the role has, for error codes the collection or the host really gives."""

from __future__ import absolute_import, division, print_function

import os
import re

import yaml

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository import report
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._backup.role_advice import ROLE_ADVICE, role_advice

__metaclass__ = type

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..', '..'))


def role_variables():
    with open(os.path.join(ROOT, 'roles', 'incremental_backup', 'meta', 'argument_specs.yml')) as handle:
        specs = yaml.safe_load(handle)['argument_specs']
    return set(name for entry in specs.values() for name in entry.get('options', {}))


def known_codes():
    """Codes the product raises (``code = '...'``, ``code='...'``) and the host's codes the guide lists."""
    found = set()
    for base, dummy, names in os.walk(os.path.join(ROOT, 'plugins')):
        for name in names:
            if name.endswith('.py'):
                with open(os.path.join(base, name)) as handle:
                    found.update(re.findall(r"code\s*=\s*'([A-Z_]+)'", handle.read()))
    with open(os.path.join(ROOT, 'docs', 'guide.md')) as handle:
        found.update(re.findall(r'^\| `([A-Z_]+)`', handle.read(), re.M))
    return found


def test_every_variable_the_advice_names_is_a_role_variable():
    variables = role_variables()
    for code, text in ROLE_ADVICE.items():
        for name in re.findall(r'incremental_backup_[a-z_]+', text):
            assert name in variables, '%s advises %s, which the role does not have' % (code, name)
        assert re.search(r'incremental_backup_[a-z_]+|entry point|next run|run the role', text), code


def test_every_advised_code_is_one_the_collection_or_the_host_gives():
    unknown = set(ROLE_ADVICE) - known_codes()
    assert not unknown, 'advice for codes nothing gives: %s' % sorted(unknown)


def test_no_advice_speaks_in_module_options():
    for code, text in ROLE_ADVICE.items():
        for option in ('min_rate_mib_s', 'requests_in_flight=', 'skip_disks:', ' tls ', 'ca_path ', 'nbd_network '):
            assert option not in re.sub(r'incremental_backup_[a-z_]+', '@', text), '%s says %r' % (code, option)


def test_codes_that_cover_several_situations_get_no_role_advice():
    # NBD_TLS_FAILED is also a certificate that is not the pinned one: advice to turn TLS off would be wrong there.
    assert role_advice('NBD_TLS_FAILED') is None and role_advice('NBD_EXPORT_REFUSED') is None


def test_the_report_carries_the_advice_only_when_asked(tmp_path):
    failures = [{'vm_uuid': 'vm-1', 'vdi_uuid': None, 'step': 'export', 'msg': 'TLS required', 'error_code': 'NBD_TLS_REQUIRED'},
                {'vm_uuid': 'vm-1', 'vdi_uuid': None, 'step': 'export', 'msg': 'odd', 'error_code': 'SOMETHING_ELSE'},
                {'vm_uuid': 'vm-1', 'vdi_uuid': None, 'step': 'export', 'msg': 'no code'}]
    plan = [{'uuid': 'vm-1', 'name': 'web01', 'disks': []}]
    with_advice = report.build_report(plan, failures=failures, started='2026-12-03T10:00:00Z', advice=role_advice)
    assert [f['error_code'] for f in with_advice['failures']] == ['NBD_TLS_REQUIRED', 'SOMETHING_ELSE', None]
    assert [f['advice'] for f in with_advice['failures']] == [ROLE_ADVICE['NBD_TLS_REQUIRED'], None, None]
    lines = [line for line in report.summary_lines(with_advice) if line.startswith('FAILED')]
    assert lines[0].endswith('TLS required What to do: ' + ROLE_ADVICE['NBD_TLS_REQUIRED'])
    assert lines[1].endswith(': odd') and lines[2].endswith(': no code')
    plain = report.build_report(plan, failures=failures, started='2026-12-03T10:00:00Z')
    assert [f['advice'] for f in plain['failures']] == [None, None, None]
    assert 'What to do' not in '\n'.join(report.summary_lines(plain))
