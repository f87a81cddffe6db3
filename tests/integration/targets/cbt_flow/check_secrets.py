# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fail if the -vvv output of the flow contains the password, a session reference or an export name."""

from __future__ import absolute_import, division, print_function

import json
import re
import sys

__metaclass__ = type


def main(log_path, config_path, secrets_path):
    with open(log_path) as handle:
        log = handle.read()
    with open(config_path) as handle:
        config = json.load(handle)
    with open(secrets_path) as handle:
        secrets = json.load(handle)
    found = []
    checks = [('password', config['xenlab_password'])]
    checks += [('session reference', ref) for ref in secrets['sessions']]
    for name, value in checks:
        if value and value in log:
            found.append(name)
    # Export names look like /<vdi-uuid>?session_id=OpaqueRef:...; none may appear in any form.
    if re.search(r'session_id=OpaqueRef:[0-9a-f-]{36}', log):
        found.append('export name')
    if secrets['sessions'] and 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER' not in log:
        found.append('no masked parameter at all (is the log complete?)')
    if found:
        print('secrets in the -vvv output: %s' % ', '.join(found))
        return 1
    print('no secret in %d bytes of -vvv output (%d session references checked)' % (len(log), len(secrets['sessions'])))
    return 0


if __name__ == '__main__':
    sys.exit(main(*sys.argv[1:4]))
