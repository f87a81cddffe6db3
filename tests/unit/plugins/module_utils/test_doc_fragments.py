# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Each doc fragment documents exactly the argument spec it is paired with: names, types, defaults, aliases."""

from __future__ import absolute_import, division, print_function

import importlib

import pytest
import yaml

from ansible_collections.xenserver.cbt_backup.plugins.module_utils._ansible import xenapi_module as _xenapi_module

__metaclass__ = type

PAIRS = [('_xenapi', _xenapi_module.connection_argument_spec), ('_nbd', _xenapi_module.nbd_argument_spec),
         ('_vm_backup', _xenapi_module.vm_backup_argument_spec)]


@pytest.mark.parametrize('fragment, spec_function', PAIRS)
def test_the_fragment_documents_its_argument_spec(fragment, spec_function):
    module = importlib.import_module('ansible_collections.xenserver.cbt_backup.plugins.doc_fragments.%s' % fragment)
    documented = yaml.safe_load(module.ModuleDocFragment.DOCUMENTATION)['options']
    spec = spec_function()
    assert sorted(documented) == sorted(spec)
    for name, option in spec.items():
        doc = documented[name]
        assert doc.get('type', 'str') == option.get('type', 'str'), name
        assert doc.get('default') == option.get('default'), name
        assert sorted(doc.get('aliases', [])) == sorted(option.get('aliases', [])), name
