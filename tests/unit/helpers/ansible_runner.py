# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a module of this collection through Ansible itself (``ansible localhost -m``) in tests."""

from __future__ import absolute_import, division, print_function

import json
import os
import shutil
import subprocess
import sys

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi import cbt_bitmap as _cbt

__metaclass__ = type


def collections_path():
    """The directory holding ``ansible_collections`` for the copy of the collection under test."""
    path = os.path.abspath(_cbt.__file__)  # imported through the ansible_collections tree
    while os.path.basename(path) != 'ansible_collections':
        parent = os.path.dirname(path)
        if parent == path:
            raise RuntimeError('tests are not running from an ansible_collections tree')
        path = parent
    return os.path.dirname(path)


def run_module(name, args, tmp_path, check=False, diff=False, verbose=False):
    """Run ``xenserver.cbt_backup.<name>``; return ``(result, output)``.

    ``result`` is the module's result with ``failed`` set from the callback's status; ``output`` is
    everything Ansible printed or logged (for secret checks). XENSERVER_* variables are not passed on.
    """
    # The interpreter's own ansible first: under ansible-test units, PATH starts with ansible-test's injected
    # bin directory and PYTHONPATH with its restricted ansible package, neither of which can run the CLI.
    ansible = os.path.join(os.path.dirname(sys.executable), 'ansible')
    if not os.access(ansible, os.X_OK):
        ansible = shutil.which('ansible')
    log_path = os.path.join(str(tmp_path), 'ansible.log')
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path(), ANSIBLE_LOCALHOST_WARNING='false',
               ANSIBLE_NOCOLOR='1', ANSIBLE_HOME=os.path.join(str(tmp_path), 'ansible-home'), ANSIBLE_LOG_PATH=log_path)
    env.pop('PYTHONPATH', None)
    for key in ('XENSERVER_HOST', 'XENSERVER_USER', 'XENSERVER_PASSWORD', 'XENSERVER_VALIDATE_CERTS'):
        env.pop(key, None)
    command = [ansible, 'localhost', '-m', 'xenserver.cbt_backup.%s' % name, '-a', json.dumps(args),
               '-e', 'ansible_python_interpreter=%s' % sys.executable]
    command += ['--check'] if check else []
    command += ['--diff'] if diff else []
    command += ['-vvv'] if verbose else []
    proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300, check=False)
    stdout = proc.stdout.decode('utf-8', 'replace')
    output = stdout + proc.stderr.decode('utf-8', 'replace')
    if os.path.exists(log_path):
        with open(log_path) as log:
            output += log.read()
    assert 'localhost | ' in stdout, output
    # The ad-hoc callback prints "localhost | CHANGED => {json}"; the JSON runs to the end of the output.
    marker = stdout.index('localhost | ')
    arrow = stdout.index('=>', marker)
    result = json.loads(stdout[arrow + 2:])
    result['failed'] = 'FAILED!' in stdout[marker:arrow]
    return result, output


def lab_connection(lab):
    """The XenAPI connection options of a module run against ``lab``."""
    return {'hostname': lab.info['url'], 'username': lab.info['username'], 'password': lab.info['password'],
            'ca_path': lab.info['ca_cert']}
