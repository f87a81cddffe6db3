# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""docs/modules and docs/roles are what scripts/module-docs.py renders from the current sources.

A module or role argument spec changed without regenerating the pages fails here; the message says which pages
and how to regenerate them.
"""

from __future__ import absolute_import, division, print_function

import importlib.util
import os
import subprocess
import sys

__metaclass__ = type

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, 'scripts', 'module-docs.py')


def load_generator():
    spec = importlib.util.spec_from_file_location('module_docs_generator', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_docs_match_the_sources():
    proc = subprocess.run([sys.executable, SCRIPT, '--check'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=300, check=False)
    output = proc.stdout.decode('utf-8', 'replace')
    assert proc.returncode == 0, output
    assert 'up to date' in output


def test_every_module_has_a_page():
    generator = load_generator()
    for name in generator.module_names(ROOT):
        assert os.path.isfile(os.path.join(ROOT, 'docs', 'modules', name + '.md')), name


def test_markup_becomes_markdown():
    renderer = load_generator().Renderer(['vdi_export'])
    cases = [
        ('O(state=absent) and V(nbd)', '`state=absent` and `nbd`'),
        ('RV(repositories[].path)', '`repositories[].path`'),
        ('C(a|b) E(XENSERVER_HOST)', '`a|b` `XENSERVER_HOST`'),
        ('M(xenserver.cbt_backup.vdi_export)', '[`xenserver.cbt_backup.vdi_export`](vdi_export.md)'),
        ('M(community.general.xenserver_guest)', '`community.general.xenserver_guest`'),
        ('O(xenserver.cbt_backup.vdi_export#module:repository)', '[`repository`](vdi_export.md#parameters)'),
        ('RV(xenserver.cbt_backup.vdi_export#module:bytes_read)', '[`bytes_read`](vdi_export.md#return-values)'),
        ('O(community.general.foo#module:bar=1)', '`bar=1` (`community.general.foo`)'),
        ('I(one) B(two)', '*one* **two**'),
        ('L(the guide,https://example.com/g) U(https://example.com)',
         '[the guide](https://example.com/g) <https://example.com>'),
        ('C(a\\)b)', '`a)b`'),
        ('<root>/a*b _x_ keep_last', '&lt;root&gt;/a\\*b \\_x\\_ keep_last'),
        ('C(`x`)', '`` `x` ``'),
    ]
    for source, expected in cases:
        assert renderer.markup(source) == expected, source


def test_options_table_nests_suboptions():
    generator = load_generator()
    renderer = generator.Renderer([])
    rows = generator.option_rows(renderer, {
        'retention': {'type': 'dict', 'default': {'keep_last': 7}, 'description': 'Rules.',
                      'options': {'keep_last': {'type': 'int', 'description': ['Newest N.']}}},
        'mode': {'type': 'str', 'required': True, 'choices': ['a', 'b'], 'description': 'One|two'},
    })
    assert [row[0] for row in rows] == ['`mode`', '`retention`', '&nbsp;&nbsp;&nbsp;&nbsp;`retention.keep_last`']
    assert rows[0][1:5] == ['str', 'yes', '', '`a`, `b`']
    assert rows[1][3] == '`{"keep_last": 7}`'
    assert generator.table(['h'], [['One|two']])[-1] == '| One\\|two |'


def test_check_lists_changed_missing_and_extra_pages(tmp_path):
    generator = load_generator()
    folder = tmp_path / 'docs' / 'modules'
    folder.mkdir(parents=True)
    (folder / 'same.md').write_text(u'same\n')
    (folder / 'changed.md').write_text(u'old\n')
    (folder / 'gone.md').write_text(u'a module that was removed\n')
    pages = {'docs/modules/same.md': 'same\n', 'docs/modules/changed.md': 'new\n', 'docs/modules/new.md': 'x\n'}
    stale = generator.stale_pages(str(tmp_path), pages)
    assert stale == ['docs/modules/changed.md', 'docs/modules/new.md', 'docs/modules/gone.md']
    written = generator.write_pages(str(tmp_path), pages)
    assert len(written) == 3 and not (folder / 'gone.md').exists()
    assert generator.stale_pages(str(tmp_path), pages) == []
