# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One error root: every exception class of module_utils is a CbtBackupError with a code; the adapter returns it."""

from __future__ import absolute_import, division, print_function

import ast
import importlib
import inspect
import os
import re

import pytest

from ansible_collections.xenserver.cbt_backup.plugins import module_utils
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._ansible import xenapi_module as _xenapi_module
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._ansible.nbd_advice import NBD_ADVICE
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._errors import CbtBackupError
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._nbd.errors import NbdTlsError
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._repository.store import RepositoryError
from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.client import XenApiError

__metaclass__ = type


def module_utils_modules():
    for root in module_utils.__path__:
        for directory, dummy, files in os.walk(root):
            package = os.path.relpath(directory, root).replace(os.sep, '.').strip('.')
            for name in sorted(files):
                if name.endswith('.py') and name != '__init__.py':
                    dotted = '.'.join(part for part in (module_utils.__name__, package, name[:-3]) if part)
                    yield importlib.import_module(dotted)


def exception_classes():
    found = {}
    for module in module_utils_modules():
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                found['%s.%s' % (module.__name__.rsplit('.', 1)[-1], name)] = value
    return found


def test_the_walk_finds_the_domain_errors():
    names = set(exception_classes())
    for expected in ('client.XenApiError', 'store.RepositoryError', 'errors.NbdTimeout', 'qcow2.Qcow2Error',
                     'export.ExportError', 'cbt_bitmap.BitmapError', '_errors.CbtBackupError'):
        assert expected in names


@pytest.mark.parametrize('name', sorted(exception_classes()))
def test_every_exception_class_is_a_cbt_backup_error_with_a_code(name):
    cls = exception_classes()[name]
    assert issubclass(cls, CbtBackupError), '%s has its own root' % name
    assert isinstance(cls.code, str) and cls.code.isupper(), name


class RecordingModule:
    def __init__(self):
        self.failed = None

    def fail_json(self, **kwargs):
        self.failed = kwargs
        raise SystemExit(1)


def fail(exc, **extra):
    module = RecordingModule()
    with pytest.raises(SystemExit):
        _xenapi_module.fail(module, exc, **extra)
    return module.failed


def test_the_adapter_returns_code_type_and_the_error_result():
    failed = fail(RepositoryError('the manifest is damaged', code='REPOSITORY_DAMAGED', result={'repository': '/r'}),
                  changed=False)
    assert failed == {'msg': 'the manifest is damaged', 'error_code': 'REPOSITORY_DAMAGED',
                      'error_type': 'RepositoryError', 'repository': '/r', 'changed': False}


def test_only_a_host_error_carries_xenapi_error():
    from_host = fail(XenApiError('VDI.snapshot failed', code='SR_FULL', params=['1', '2'], from_host=True))
    assert from_host['xenapi_error'] == {'code': 'SR_FULL', 'params': ['1', '2']}
    assert from_host['error_code'] == 'SR_FULL'
    ours = fail(XenApiError('cannot reach the XenAPI at https://h', code='CONNECTION_FAILED'))
    assert 'xenapi_error' not in ours and ours['error_code'] == 'CONNECTION_FAILED'


def test_the_adapter_adds_the_advice_for_an_nbd_situation():
    failed = fail(NbdTlsError('NBD server h:10809 refused STARTTLS (NBD_REP_ERR_POLICY)', situation='starttls_policy'))
    assert failed['msg'].startswith('NBD server h:10809 refused STARTTLS (NBD_REP_ERR_POLICY) On XenServer')
    assert 'tls: false' in failed['msg'] and failed['error_code'] == 'NBD_TLS_FAILED'
    assert fail(NbdTlsError('plain', situation='no such situation'))['msg'] == 'plain'


def test_every_situation_the_nbd_client_names_has_advice():
    nbd = os.path.join(list(module_utils.__path__)[0], '_nbd')
    named = set()
    for name in os.listdir(nbd):
        if name.endswith('.py'):
            with open(os.path.join(nbd, name)) as handle:
                named.update(re.findall(r"situation='([a-z_]+)'", handle.read()))
    assert named and named == set(NBD_ADVICE), 'situations without advice: %s, advice without a situation: %s' % (
        sorted(named - set(NBD_ADVICE)), sorted(set(NBD_ADVICE) - named))


def test_a_default_code_comes_from_the_class():
    assert fail(XenApiError('something'))['error_code'] == 'XENAPI_ERROR'
    assert fail(CbtBackupError('something'))['error_code'] == 'CBT_BACKUP_ERROR'


def test_every_fail_json_in_the_collection_names_an_error_code():
    plugins = os.path.dirname(list(module_utils.__path__)[0])
    missing = []
    for directory in ('modules', 'module_utils'):
        for root, dummy, files in os.walk(os.path.join(plugins, directory)):
            for name in sorted(files):
                if not name.endswith('.py'):
                    continue
                path = os.path.join(root, name)
                with open(path) as handle:
                    tree = ast.parse(handle.read(), path)
                for node in ast.walk(tree):
                    if isinstance(node, ast.Call) and getattr(node.func, 'attr', None) == 'fail_json':
                        keywords = [keyword.arg for keyword in node.keywords]
                        if 'error_code' not in keywords and None not in keywords:  # None: **result
                            missing.append('%s:%d' % (os.path.relpath(path, plugins), node.lineno))
    assert missing == []
