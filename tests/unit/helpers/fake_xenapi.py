# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one fake XenAPI of the unit tests: for logic that needs a pool state the lab cannot set up cheaply.

Tests that can use the lab (tests/lab, real HTTPS XML-RPC through the XenAPI package) do; this fake stands in
for ``XenApiClient`` where a test needs exact control over records and failures. It keeps tables of records by
class and answers what every caller of ``XenApiClient`` uses (``find``, ``get_by_uuid``, ``get_by_name_label``,
``get_record``, ``get_all_records``, ``get_<field>``); a test adds the calls it needs as methods named after them
(``VDI.snapshot`` -> ``_VDI_snapshot``, called with the object's ref first, like every call on an object; an
unknown ref is ``HANDLE_INVALID``). ``fail[method]`` lists exceptions raised by successive calls of it.
"""

from __future__ import absolute_import, division, print_function

import copy

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._xenapi.client import XenApiClient, XenApiError

__metaclass__ = type


def host_error(code, *params):
    """An error as the host sends it."""
    return XenApiError('the host said %s' % code, code=code, params=params, from_host=True)


class FakeXenApi:
    find = XenApiClient.find

    def __init__(self, objects):
        self.objects = objects  # class -> ref -> record
        self.calls = []  # (method,) + args, in order
        self.fail = {}  # method -> exceptions raised by its successive calls

    def methods(self):
        """The methods called, in order."""
        return [call[0] for call in self.calls]

    def call(self, method, *args):
        self.calls.append((method,) + args)
        if self.fail.get(method):
            raise self.fail[method].pop(0)
        cls, name = method.split('.', 1)
        table = self.objects.get(cls, {})
        if name == 'get_by_uuid':
            for ref, record in table.items():
                if record['uuid'] == args[0]:
                    return ref
            raise host_error('UUID_INVALID', cls, args[0])
        if name == 'get_by_name_label':
            return [ref for ref, record in table.items() if record['name_label'] == args[0]]
        if name == 'get_all_records':
            return copy.deepcopy(table)
        if name != 'create' and args and args[0] not in table:  # every call on an object takes its ref first
            raise host_error('HANDLE_INVALID', cls, args[0])
        handler = getattr(self, '_' + method.replace('.', '_'), None)
        if handler is not None:
            return handler(*args)
        if name == 'get_record':
            return copy.deepcopy(table[args[0]])
        if name.startswith('get_'):
            return copy.deepcopy(table[args[0]][name[len('get_'):]])
        raise AssertionError('the fake XenAPI has no %s: add _%s to the test\'s fake' % (method, method.replace('.', '_')))
