# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The execution environment metadata is consistent and ships in the collection artifact.

ansible-builder reads meta/execution-environment.yml from the installed collection: the files it names must
exist, must carry the runtime requirements (with the ranges requirements.txt states), and must not be left out
of the tarball by galaxy.yml's build_ignore.
"""

from __future__ import absolute_import, division, print_function

import fnmatch
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

__metaclass__ = type

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EE_FILE = 'meta/execution-environment.yml'


def load_yaml(relpath):
    with open(os.path.join(ROOT, relpath)) as handle:
        return yaml.safe_load(handle)


def requirements(relpath):
    """``{canonical name: Requirement}`` of a pip requirements file (comments, blank lines and -r skipped)."""
    found = {}
    with open(os.path.join(ROOT, relpath)) as handle:
        for line in handle:
            line = line.split('#', 1)[0].strip()
            if not line or line.startswith('-'):
                continue
            requirement = Requirement(line)
            name = canonicalize_name(requirement.name)
            assert name not in found, '%s lists %s twice' % (relpath, requirement.name)
            found[name] = requirement
    return found


def ee_dependencies():
    return load_yaml(EE_FILE)['dependencies']


def test_execution_environment_file_names_existing_files():
    data = load_yaml(EE_FILE)
    assert data['version'] == 1
    assert set(data['dependencies']) == {'python', 'system'}
    for kind, relpath in sorted(data['dependencies'].items()):
        assert isinstance(relpath, str) and not os.path.isabs(relpath), kind
        assert relpath.startswith('meta/ee-'), '%s: %s is not one of the meta/ee-* files' % (kind, relpath)
        assert os.path.isfile(os.path.join(ROOT, relpath)), '%s names %s, which does not exist' % (EE_FILE, relpath)


def test_ee_requirements_match_requirements_txt():
    ee = requirements(ee_dependencies()['python'])
    runtime = requirements('requirements.txt')
    assert ee, 'the execution environment needs at least XenAPI'
    assert 'xenapi' in ee and 'cryptography' in ee
    source = ee_dependencies()['python']
    for name, requirement in sorted(ee.items()):
        assert name in runtime, '%s is in %s but not in requirements.txt' % (requirement.name, source)
        assert requirement.specifier == runtime[name].specifier, (
            '%s: %s says "%s", requirements.txt says "%s"'
            % (requirement.name, source, requirement.specifier, runtime[name].specifier))
        assert not requirement.extras and not requirement.marker, requirement


def test_ee_requirements_leave_ansible_to_the_image():
    # The EE definition chooses ansible-core and ansible-runner; a collection pinning them fights that choice.
    ee = requirements(ee_dependencies()['python'])
    assert not set(ee) & {'ansible-core', 'ansible', 'ansible-runner'}


def test_ee_bindep_lines_are_bindep_entries():
    with open(os.path.join(ROOT, ee_dependencies()['system'])) as handle:
        for number, line in enumerate(handle, 1):
            line = line.split('#', 1)[0].strip()
            if line:
                name = line.split()[0]
                assert fnmatch.fnmatchcase(name, '[a-z0-9]*'), 'line %d: "%s" is not a package name' % (number, name)


def excluded_by(relpath, patterns):
    """The build_ignore pattern that drops ``relpath`` or one of its parent directories, else None."""
    parts = relpath.split('/')
    for depth in range(1, len(parts) + 1):
        candidate = '/'.join(parts[:depth])
        for pattern in patterns:
            if fnmatch.fnmatch(candidate, pattern) or fnmatch.fnmatch(parts[depth - 1], pattern):
                return pattern
    return None


def shipped_files():
    return [EE_FILE, 'requirements.txt', 'bindep.txt'] + sorted(ee_dependencies().values())


def test_build_ignore_keeps_the_ee_files():
    patterns = load_yaml('galaxy.yml').get('build_ignore') or []
    for relpath in shipped_files():
        assert excluded_by(relpath, patterns) is None, (
            'galaxy.yml build_ignore pattern "%s" drops %s, which ansible-builder reads from the installed '
            'collection' % (excluded_by(relpath, patterns), relpath))


def test_built_artifact_contains_the_ee_files(tmp_path):
    galaxy = shutil.which('ansible-galaxy') or os.path.join(os.path.dirname(sys.executable), 'ansible-galaxy')
    if not os.path.exists(galaxy):
        pytest.skip('ansible-galaxy is not installed next to %s' % sys.executable)
    subprocess.run([galaxy, 'collection', 'build', '--output-path', str(tmp_path), ROOT], check=True,
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    tarballs = [name for name in os.listdir(str(tmp_path)) if name.endswith('.tar.gz')]
    assert len(tarballs) == 1, tarballs
    with tarfile.open(os.path.join(str(tmp_path), tarballs[0])) as tar:
        names = set(tar.getnames())
    for relpath in shipped_files():
        assert relpath in names, '%s is missing from %s' % (relpath, tarballs[0])


def changelog_sections():
    config = load_yaml('changelogs/config.yaml')
    return set(name for name, _title in config['sections']) | {config['trivial_section_name'], 'release_summary'}


@pytest.mark.parametrize('fragment', sorted(os.listdir(os.path.join(ROOT, 'changelogs', 'fragments'))))
def test_changelog_fragment_is_a_mapping_of_known_sections_to_entries(fragment):
    """yamllint and antsibull-changelog read fragments strictly: a ': ' inside a plain entry breaks the file."""
    relpath = 'changelogs/fragments/' + fragment
    content = load_yaml(relpath)
    assert isinstance(content, dict) and content, '%s is not a mapping of sections' % relpath
    assert set(content) <= changelog_sections(), '%s has unknown sections %s' % (relpath, set(content) - changelog_sections())
    for section, entries in content.items():
        if section == 'release_summary':
            assert isinstance(entries, str)
            continue
        assert isinstance(entries, list) and entries, '%s: %s is not a list of entries' % (relpath, section)
        for entry in entries:
            assert isinstance(entry, str), '%s: an entry of %s is not text: %r' % (relpath, section, entry)
    with open(os.path.join(ROOT, relpath)) as handle:
        for number, line in enumerate(handle, 1):
            assert len(line.rstrip('\n')) <= 160, '%s:%d is longer than 160 characters (ansible-lint)' % (relpath, number)
