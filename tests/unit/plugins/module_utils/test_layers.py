# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""module_utils is layered with one import direction; this test parses the imports and fails on an upward edge.

Layers, bottom first (docs/architecture.md): a module may import its own layer or the ones below, never above;
imports inside one layer must not form a cycle; only the Ansible adapter imports Ansible.
"""

from __future__ import absolute_import, division, print_function

import ast
import fnmatch
import os

import pytest

from ansible_collections.xenserver.cbt_backup.plugins import module_utils

__metaclass__ = type

LAYERS = (
    ('foundation', ('_errors', '_time', '_extents')),
    ('protocols and formats', ('_xenapi.client', '_xenapi.cbt_bitmap', '_nbd.*', '_image.*')),
    ('XenAPI operations', ('_xenapi.model', '_xenapi.ops.*')),
    ('repository', ('_repository.store', '_repository.retention', '_repository.restore', '_repository.inspection',
                    '_repository.rebuild', '_repository.report', '_repository.vm_configs')),
    ('use cases', ('_backup.*', '_repository.backup')),
    ('Ansible adapter', ('_ansible.*',)),
)
ADAPTER = 'Ansible adapter'
PREFIX = 'ansible_collections.xenserver.cbt_backup.plugins.module_utils.'


def layer_of(name):
    for rank, (layer, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            return rank, layer
    return None, None


def source_files():
    """{dotted name below module_utils: path} of every module of module_utils."""
    found = {}
    root = list(module_utils.__path__)[0]
    for directory, dummy, files in os.walk(root):
        package = os.path.relpath(directory, root).replace(os.sep, '.').strip('.')
        for name in files:
            if name.endswith('.py') and name != '__init__.py':
                found['.'.join(p for p in (package, name[:-3]) if p)] = os.path.join(directory, name)
    return found


def imports_of(name, path, known):
    """(imported module_utils modules, other top-level packages imported) of one module."""
    with open(path) as handle:
        tree = ast.parse(handle.read(), path)
    package = name.rsplit('.', 1)[0] if '.' in name else ''
    inner, outer = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.') if package else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                target = '.'.join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith(PREFIX):
                target = node.module[len(PREFIX):]
            else:
                outer.add((node.module or '').split('.')[0])
                continue
            for alias in node.names:  # "from . import qcow2" imports a module; "from .x import y" imports x
                candidate = '.'.join(p for p in (target, alias.name) if p)
                inner.add(candidate if candidate in known else target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                outer.add(alias.name.split('.')[0])
    return inner, outer


def import_graph():
    files = source_files()
    graph, foreign = {}, {}
    for name, path in files.items():
        graph[name], foreign[name] = imports_of(name, path, files)
    return graph, foreign


def upward_edges(graph):
    edges = []
    for importer, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target)[0] > layer_of(importer)[0]:
                edges.append('%s (%s) imports %s (%s)' % (importer, layer_of(importer)[1], target, layer_of(target)[1]))
    return edges


def cycles(graph):
    found = []

    def visit(node, trail):
        for target in sorted(graph.get(node, ())):
            if target in trail:
                found.append(' -> '.join(trail[trail.index(target):] + [target]))
            elif target not in done:
                visit(target, trail + [target])
        done.add(node)
    done = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    return found


def test_every_module_has_a_layer():
    graph, dummy = import_graph()
    assert len(graph) > 25
    assert [name for name in graph if layer_of(name)[0] is None] == [], 'place new modules in LAYERS'


def test_imports_point_down_only():
    graph, dummy = import_graph()
    assert upward_edges(graph) == []


def test_no_import_cycles():
    graph, dummy = import_graph()
    assert cycles(graph) == []


def test_only_the_adapter_imports_ansible():
    dummy, foreign = import_graph()
    importers = sorted(name for name, packages in foreign.items() if 'ansible' in packages)
    assert importers and all(layer_of(name)[1] == ADAPTER for name in importers), importers


@pytest.mark.parametrize('graph, problem', [
    ({'_errors': {'_xenapi.client'}, '_xenapi.client': {'_errors'}}, 'upward'),
    ({'_repository.store': {'_backup.export'}, '_backup.export': set()}, 'upward'),
    ({'_xenapi.model': {'_xenapi.ops.cbt'}, '_xenapi.ops.cbt': {'_xenapi.model'}}, 'cycle'),
])
def test_the_checks_catch_what_they_are_for(graph, problem):
    if problem == 'upward':
        assert upward_edges(graph)
    else:
        assert cycles(graph)
