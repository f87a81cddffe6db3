# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers for the lab's contract tests: start labs through the xenlab CLI, tool checks.

A uniquely named module (not conftest) so that `import labtools` cannot pick up another
directory's conftest when pytest runs several test trees at once.
"""

from __future__ import absolute_import, division, print_function

import importlib
import json
import os
import shutil
import subprocess
import sys

import pytest

__metaclass__ = type

HERE = os.path.dirname(os.path.abspath(__file__))
XENLAB = os.path.join(os.path.dirname(HERE), 'xenlab')
SMALL = ['--disk0-size', '8M', '--disk1-size', '2M', '--other-disk-size', '1M', '--auth-failure-delay', '0']


def _nbdkit_python():
    """nbdkit can load its python plugin (Debian: nbdkit-plugin-python)."""
    if not shutil.which('nbdkit'):
        return False
    proc = subprocess.run(['nbdkit', 'python', '--version'], capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode == 0


def require(tool):
    """Skip when a tool is missing, but fail under CI=true: CI must run every test."""
    if tool == 'nbdkit-python':
        if _nbdkit_python():
            return
        missing = 'nbdkit with its python plugin (nbdkit, nbdkit-plugin-python)'
    elif tool == 'nbd':
        try:
            importlib.import_module('nbd')
            return
        except ImportError:
            missing = 'python3-libnbd (module nbd)'
    elif shutil.which(tool):
        return
    else:
        missing = tool
    if os.environ.get('CI', '').lower() == 'true':
        pytest.fail('required tool missing: %s' % missing)
    pytest.skip('tool missing: %s' % missing)


def xenlab(*args, check=True):
    # The lab runs on the tests' own interpreter: under ansible-test the copy of the collection has no .venv,
    # and python3 on PATH is ansible-test's wrapper, whose processes outlived "xenlab stop".
    env = dict(os.environ, XENLAB_PYTHON=sys.executable)
    proc = subprocess.run([XENLAB] + [str(a) for a in args], capture_output=True, text=True, timeout=120, check=False,
                          env=env)
    if check and proc.returncode != 0:
        raise AssertionError('xenlab %s failed: %s%s' % (args[0], proc.stdout, proc.stderr))
    return proc


class Lab:
    """A running lab and shortcuts to drive it."""

    def __init__(self, directory, info):
        self.dir = directory
        self.info = info

    def session(self):
        import XenAPI  # pylint: disable=import-outside-toplevel
        session = XenAPI.Session(self.info['url'], ignore_ssl=True)
        session.xenapi.login_with_password(self.info['username'], self.info['password'], '2.21', 'xenlab-tests')
        return session

    def write(self, vdi_uuid, offset, length, seed=0):
        return json.loads(xenlab('write', '--dir', self.dir, '--vdi', vdi_uuid, '--offset', offset,
                                 '--length', length, '--seed', seed).stdout)

    def path(self, vdi_uuid):
        return xenlab('path', '--dir', self.dir, '--vdi', vdi_uuid).stdout.strip()

    def content(self, vdi_uuid):
        with open(self.path(vdi_uuid), 'rb') as handle:
            return handle.read()

    def refresh(self):
        with open(os.path.join(self.dir, 'lab.json')) as handle:
            self.info = json.load(handle)
        return self.info


def start_lab(directory, *extra):
    require('nbdkit-python')
    xenlab('start', '--dir', directory, *(SMALL + list(extra)))
    with open(os.path.join(directory, 'lab.json')) as handle:
        return Lab(str(directory), json.load(handle))
