# -*- coding: utf-8 -*-
# Copyright: xenserver.cbt_backup contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The VM configurations of a VM's backup runs: one JSON document per run, beside the VM's disk repositories.

Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.

Layout (below the VM's directory, ``<repository_root>/<vm uuid>``, which also holds a repository per disk)::

    vm-config/configs.json         the configurations kept, by run: file, sha256, snapshot time, VM name
    vm-config/configs.json.prev    the manifest before the last save (read when configs.json is lost or damaged)
    vm-config/<run>.json           one run's configuration (run as 20261204T020000Z)
    vm-config/.lock                held (flock) while a run writes here

Every write is temp + checked writes + fsync + rename + fsync of the directory. A file is named in the manifest's
``pending`` journal before it is written and before it is deleted, so a crash leaves only files the journal
names, which the next writer removes (an unfinished write) or deletes again (an unfinished prune). Nothing the
manifest and its journal do not name is ever deleted. Without a manifest (both copies lost), readers list the
files that are configurations of this collection by name and content, and the next writer adopts them.
"""

from __future__ import absolute_import, division, print_function

import errno
import hashlib
import json
import os
import re

from .._errors import CbtBackupError
from .._time import normalize_utc, parse_utc
from .store import LOCK, lock_directory, remove_if_exists, unlock_directory, write_file_atomically

__metaclass__ = type

DIRECTORY = 'vm-config'
MANIFEST = 'configs.json'  # not manifest.json: never taken for a disk repository (also by older releases)
MANIFEST_PREV = 'configs.json.prev'
FORMAT = 'xenserver.cbt_backup vm configurations'
VERSION = 1
DOCUMENT_FORMAT = 'xenserver.cbt_backup.vm-config'  # ops.vm_config.FORMAT: the documents this stores
CONFIG_FILE = re.compile(r'^[0-9]{8}T[0-9]{6}Z\.json$')
# with the temporary names write_file_atomically gives the manifest and its kept copy
OWN_FILES = (MANIFEST, MANIFEST_PREV, LOCK, '.%s.partial' % MANIFEST, MANIFEST_PREV + '.link')


class VmConfigError(CbtBackupError):
    """A VM configuration store that cannot be read or written as asked."""

    code = 'VM_CONFIG_FAILED'


def file_name(run):
    """The file of the run ``run`` (RFC 3339 UTC text): ``20261204T020000Z.json``."""
    return parse_utc(run).strftime('%Y%m%dT%H%M%SZ') + '.json'


def directory_of(vm_dir):
    return os.path.join(vm_dir, DIRECTORY)


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _read(path):
    with open(path, 'rb') as handle:
        return handle.read()


def _document_problem(document, run=None):
    if not isinstance(document, dict) or document.get('format') != DOCUMENT_FORMAT:
        return 'it is not a VM configuration of xenserver.cbt_backup'
    if not isinstance(document.get('version'), int) or document['version'] > 1:
        return 'its version %r is not one this collection reads (1)' % (document.get('version'),)
    if not isinstance(document.get('vm'), dict) or not isinstance(document.get('vbds'), list) \
            or not isinstance(document.get('vifs'), list):
        return 'it lacks vm, vbds or vifs'
    if run is not None and document.get('run') != run:
        return 'it is the configuration of the run %s, not %s' % (document.get('run'), run)
    return None


def _manifest_problem(manifest):
    if not isinstance(manifest, dict) or manifest.get('format') != FORMAT or manifest.get('version') != VERSION:
        return 'it is not a manifest of VM configurations of this collection'
    if not isinstance(manifest.get('configs'), list) or not isinstance(manifest.get('pending'), list):
        return 'it lacks configs or pending'
    for entry in manifest['configs']:
        if not isinstance(entry, dict) or not CONFIG_FILE.match(str(entry.get('file'))) or not entry.get('sha256'):
            return 'an entry of configs is malformed: %r' % (entry,)
    if not all(CONFIG_FILE.match(str(name)) for name in manifest['pending']):
        return 'pending names a file that is not a configuration file'
    return None


class VmConfigs:
    """The VM configurations below ``vm_dir``. ``with VmConfigs(vm_dir, write=True) as store:`` locks them."""

    def __init__(self, vm_dir, write=False):
        self.vm_dir = os.path.abspath(vm_dir)
        self.path = directory_of(self.vm_dir)
        self.write = write
        self.manifest = None
        self.problems = []   # what was wrong with what was read (a lost or damaged manifest)
        self._lock_fd = None

    # -- opening -----------------------------------------------------------------------------------------

    def __enter__(self):
        if self.write:
            if not os.path.isdir(self.path):
                os.makedirs(self.path, 0o750)
            # waits: one VM's disks may be pruned by several threads at once
            self._lock_fd = lock_directory(self.path, wait=True)
        try:
            self.manifest = self._load()
            if self.write:
                self._finish_pending()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info):
        fd, self._lock_fd = self._lock_fd, None
        unlock_directory(fd)

    def exists(self):
        return os.path.isdir(self.path)

    def _load(self):
        """The manifest; else the previous one; else one adopting the configuration files that are ours."""
        fresh = {'format': FORMAT, 'version': VERSION, 'configs': [], 'pending': []}
        if not os.path.isdir(self.path):
            return fresh
        for name in (MANIFEST, MANIFEST_PREV):
            try:
                manifest = json.loads(_read(os.path.join(self.path, name)).decode('utf-8'))
            except (IOError, OSError) as exc:
                if exc.errno != errno.ENOENT:
                    raise
                if name == MANIFEST and self._any_config_file():
                    self.problems.append('%s is missing' % name)
                continue
            except (ValueError, UnicodeDecodeError) as exc:
                self.problems.append('%s is not valid JSON (%s)' % (name, exc))
                continue
            problem = _manifest_problem(manifest)
            if problem:
                self.problems.append('%s: %s' % (name, problem))
                continue
            if name == MANIFEST_PREV:
                self._adopt(manifest)  # it may be one save behind: the last configuration written is a file only
            return manifest
        self._adopt(fresh)
        return fresh

    def _adopt(self, manifest):
        """Add to ``manifest`` the configuration files that are ours (by name and content) and it does not list."""
        listed = set(entry['file'] for entry in manifest['configs'])
        found = [self._adoptable(name) for name in self._config_files() if name not in listed]
        manifest['configs'] = sorted(manifest['configs'] + [entry for entry in found if entry],
                                     key=lambda entry: entry['run'])
        manifest['pending'] = [name for name in manifest['pending'] if name not in set(e['file'] for e in found if e)]

    def _config_files(self):
        return sorted(name for name in os.listdir(self.path) if CONFIG_FILE.match(name))

    def _any_config_file(self):
        return bool(self._config_files())

    def _adoptable(self, name):
        """The manifest entry of a configuration file found without a manifest, if it is ours and whole."""
        try:
            data = _read(os.path.join(self.path, name))
            document = json.loads(data.decode('utf-8'))
        except (IOError, OSError, ValueError, UnicodeDecodeError):
            return None
        if _document_problem(document) or file_name(document.get('run') or '1970-01-01T00:00:00Z') != name:
            return None
        return self._entry(name, document, data)

    @staticmethod
    def _entry(name, document, data):
        return {'run': document['run'], 'file': name, 'sha256': _sha256(data),
                'snapshot_time': document.get('snapshot_time'), 'vm_name': document['vm'].get('name_label')}

    # -- writing -----------------------------------------------------------------------------------------

    def _save(self):
        write_file_atomically(os.path.join(self.path, MANIFEST),
                              json.dumps(self.manifest, indent=1, sort_keys=True).encode('utf-8') + b'\n',
                              keep_previous=MANIFEST_PREV)

    def _finish_pending(self):
        """Remove what an interrupted write or prune left: the files the journal names and no entry lists."""
        pending = self.manifest['pending']
        if not pending:
            return
        listed = set(entry['file'] for entry in self.manifest['configs'])
        for name in pending:
            if name not in listed:
                remove_if_exists(os.path.join(self.path, name))
            remove_if_exists(os.path.join(self.path, '.%s.partial' % name))  # its temporary file, if the write stopped early
        self.manifest['pending'] = []
        self._save()

    def save(self, document):
        """Keep ``document`` (a VM configuration with its ``run``) as its run's configuration, replacing an
        earlier one of the same run."""
        problem = _document_problem(document)
        if problem:
            raise VmConfigError('cannot keep this VM configuration: %s' % problem, code='INVALID_OPTION')
        document = dict(document, run=normalize_utc(document['run']))
        name = file_name(document['run'])
        data = json.dumps(document, indent=1, sort_keys=True).encode('utf-8') + b'\n'
        self.manifest['configs'] = [e for e in self.manifest['configs'] if e['file'] != name]
        self.manifest['pending'] = sorted(set(self.manifest['pending']) | set([name]))
        self._save()  # journal first: a crash from here on leaves a file the next writer may remove
        write_file_atomically(os.path.join(self.path, name), data)
        self.manifest['configs'] = sorted(self.manifest['configs'] + [self._entry(name, document, data)],
                                          key=lambda entry: entry['run'])
        self.manifest['pending'] = [n for n in self.manifest['pending'] if n != name]
        self._save()
        return os.path.join(self.path, name)

    def prune(self, keep_runs, dry_run=False):
        """Delete the configurations whose run is not in ``keep_runs`` and older than the newest of them (a
        newer one belongs to a run still going, or one whose exports all failed: the next prune decides).
        Returns the runs deleted (with ``dry_run``, that would be; nothing is written)."""
        keep = set(normalize_utc(run) for run in keep_runs)
        newest = max(keep) if keep else None
        dropped = [entry for entry in self.manifest['configs']
                   if entry['run'] not in keep and (newest is None or entry['run'] < newest)]
        if not dropped or dry_run:
            return [entry['run'] for entry in dropped]
        names = [entry['file'] for entry in dropped]
        self.manifest['configs'] = [entry for entry in self.manifest['configs'] if entry not in dropped]
        self.manifest['pending'] = sorted(set(self.manifest['pending']) | set(names))
        self._save()
        for name in names:
            remove_if_exists(os.path.join(self.path, name))
        self.manifest['pending'] = [n for n in self.manifest['pending'] if n not in names]
        self._save()
        return [entry['run'] for entry in dropped]

    # -- reading -----------------------------------------------------------------------------------------

    def entries(self):
        """The configurations kept, oldest run first."""
        return sorted(self.manifest['configs'], key=lambda entry: entry['run'])

    def load(self, run):
        """The configuration of the run ``run``, checked against its manifest entry."""
        run = normalize_utc(run)
        for entry in self.manifest['configs']:
            if entry['run'] == run:
                return self._checked(entry)
        raise VmConfigError('there is no VM configuration of the run %s in %s (kept: %s)' % (
            run, self.path, ', '.join(e['run'] for e in self.entries()) or 'none'), code='NOT_FOUND')

    def latest_at(self, when=None):
        """The newest configuration of a run at or before ``when`` (RFC 3339 UTC text; None: the newest)."""
        entries = [e for e in self.entries() if when is None or e['run'] <= normalize_utc(when)]
        if not entries:
            raise VmConfigError('there is no VM configuration in %s%s' % (
                self.path, ' of a run at or before %s' % when if when else ''), code='NOT_FOUND')
        return self._checked(entries[-1])

    def _checked(self, entry):
        path = os.path.join(self.path, entry['file'])
        try:
            data = _read(path)
        except (IOError, OSError) as exc:
            raise VmConfigError('the VM configuration %s cannot be read: %s' % (path, exc), code='VM_CONFIG_DAMAGED')
        if _sha256(data) != entry['sha256']:
            raise VmConfigError('the VM configuration %s does not match its checksum in the manifest: it was changed '
                                'or damaged' % path, code='VM_CONFIG_DAMAGED')
        try:
            document = json.loads(data.decode('utf-8'))
        except (ValueError, UnicodeDecodeError) as exc:
            raise VmConfigError('the VM configuration %s is not JSON: %s' % (path, exc), code='VM_CONFIG_DAMAGED')
        problem = _document_problem(document, entry['run'])
        if problem:
            raise VmConfigError('the VM configuration %s: %s' % (path, problem), code='VM_CONFIG_DAMAGED')
        return document

    def verify(self):
        """``{'checked', 'problems', 'unknown_files'}``: every kept configuration read and checked."""
        problems = list(self.problems)
        for entry in self.entries():
            try:
                self._checked(entry)
            except VmConfigError as exc:
                problems.append(exc.message)
        unknown = []
        if os.path.isdir(self.path):
            listed = set(e['file'] for e in self.manifest['configs']) | set(self.manifest['pending'])
            unknown = sorted(name for name in os.listdir(self.path)
                             if name not in listed and name not in OWN_FILES)
        return {'checked': len(self.manifest['configs']), 'problems': problems, 'unknown_files': unknown}
