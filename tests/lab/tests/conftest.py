# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures: labs started through the xenlab CLI, XenAPI sessions, expected failures."""

from __future__ import absolute_import, division, print_function

import pytest

# pytest (prepend import mode) puts this directory on sys.path, so the helpers import directly.
from labtools import start_lab, xenlab

__metaclass__ = type


@pytest.fixture(scope='module')
def lab(request, tmp_path_factory):
    # indirect parameters: more start options (a module's pytestmark)
    instance = start_lab(tmp_path_factory.mktemp('lab'), *getattr(request, 'param', ()))
    yield instance
    xenlab('stop', '--dir', instance.dir)


@pytest.fixture(scope='module')
def api(lab):
    session = lab.session()
    yield session.xenapi
    try:
        session.xenapi.session.logout()
    except Exception:  # pylint: disable=broad-except
        pass


@pytest.fixture
def failure():
    """``with failure('CODE') as exc:`` asserts a XenAPI.Failure with that code."""
    import XenAPI  # pylint: disable=import-outside-toplevel

    class _Expect:
        def __init__(self, code):
            self.code = code
            self.details = None

        def __enter__(self):
            return self

        def __exit__(self, exc_type, exc, _tb):
            assert exc_type is not None, 'expected XenAPI failure %s, got success' % self.code
            if not issubclass(exc_type, XenAPI.Failure):
                return False
            self.details = exc.details
            assert exc.details[0] == self.code, exc.details
            return True
    return _Expect
